"""Q-layers under ``torch.compile``: compression stays on, never a silent no-op.

Before, ``compress_active`` returned False while dynamo traced a Q-layer, so a compiled model
trained with its twins: every activation kept exact. Now each Q-layer (and each part's
saved-tensor context) runs eagerly between the compiled graphs: what is kept for backward is
what eager keeps, and at L0 the gradients are eager's.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actnn_mm import convert
from actnn_mm.engine import CompressionConfig
from actnn_mm.saved_bytes import SavedBytesCounter

BACKEND = 'aot_eager'  # dynamo + AOTAutograd without a C++ compile: what matters here, fast


class _Net(nn.Module):
    """Conv/BN/ReLU/pool, a residual add and a Linear head: everything that saves for backward
    is a Q-layer; the code between them (add, mean) is what gets compiled."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        y = self.bn2(self.conv2(x))
        x = self.relu2(x + y)
        return self.fc(x.mean((2, 3)))


class _Attention(nn.Module):
    """Functional attention: only the saved-tensor path can compress it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1)
        return F.gelu(att @ v)


def _saved_and_grads(model: nn.Module, x: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    with SavedBytesCounter(model) as counter:
        loss = model(x).square().sum()
    loss.backward()
    grads = {n.replace('_orig_mod.', ''): p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    return counter.total, grads, loss.detach()


@pytest.mark.parametrize('level', ['L0', 'L3'])
def test_compiled_model_keeps_what_eager_keeps(level: str) -> None:
    torch.manual_seed(0)
    eager = _Net()
    compiled_src = copy.deepcopy(eager)
    cfg = CompressionConfig.from_level(level, min_numel=0)
    convert(eager, cfg)
    convert(compiled_src, cfg)
    compiled = torch.compile(compiled_src, backend=BACKEND)
    x = torch.randn(4, 3, 16, 16)
    exact_model = _Net()
    exact_model.load_state_dict(eager.state_dict())
    exact_bytes, _, _ = _saved_and_grads(exact_model, x)
    eager_bytes, eager_grads, eager_loss = _saved_and_grads(eager, x)
    compiled_bytes, compiled_grads, compiled_loss = _saved_and_grads(compiled, x)
    assert compiled_bytes == eager_bytes
    if level == 'L3':
        assert compiled_bytes < exact_bytes / 4, (compiled_bytes, exact_bytes)
    else:
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-6)
        for name, g in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], g, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name: f'{n}: {m}')
    for name, g in compiled_grads.items():
        assert torch.isfinite(g).all(), name


def test_functional_code_compiled_between_q_layers_keeps_its_intermediates_exact() -> None:
    """The known limit: a compiled graph computes its intermediates without grad, so the
    saved-tensor path (which compresses only tensors that require grad) keeps them exact;
    its inputs (the Q-layers' outputs) and the Q-layers themselves are compressed."""
    torch.manual_seed(0)
    x = torch.randn(4, 64, 32)
    exact = torch.compile(_Attention(), backend=BACKEND)
    model = _Attention()
    model.load_state_dict(exact._orig_mod.state_dict())
    convert(model, CompressionConfig.from_level('L3', min_numel=0))
    compiled = torch.compile(model, backend=BACKEND)
    exact_bytes, _, _ = _saved_and_grads(exact, x)
    eager_bytes, _, _ = _saved_and_grads(model, x)
    with SavedBytesCounter(compiled) as counter:
        loss = compiled(x).square().sum()
    loss.backward()
    compiled_bytes = counter.total
    assert eager_bytes < exact_bytes / 4, (eager_bytes, exact_bytes)
    assert compiled_bytes < exact_bytes, (compiled_bytes, exact_bytes)
    assert counter.by_module['_orig_mod.qkv'] < exact_bytes / 64  # the QLinear: compressed
    assert counter.by_kind['exact'] > eager_bytes  # the graph's own intermediates: exact
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_q_layer_internals_traced_by_compile_raise_naming_the_layer() -> None:
    conv = nn.Conv2d(3, 4, 3)
    convert(conv, CompressionConfig.from_level('L3'))

    def traced(x: torch.Tensor) -> torch.Tensor:
        return conv._conv_forward(x, conv.weight, conv.bias)  # bypasses the eager forward

    with pytest.raises(Exception, match='QConv2d .*traced by torch.compile'):
        torch.compile(traced, backend='eager', fullgraph=True)(torch.randn(1, 3, 8, 8))
