"""Norm layers save their *normalised* input with the normalisation run inside the compression
kernel: a training forward dispatches the norm op and one ``actnn_mm.compress``, no elementwise
ops, and the result is bit-identical to normalising with elementwise ops first."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import Tensor, nn

from actnn_mm.engine import CompressionConfig
from actnn_mm.layers import QBatchNorm2d, QGroupNorm, QLayerNorm, norm
from actnn_tools.benchmark.overhead import OpCounter

CASES: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...], str]] = {
    'layer_norm': (lambda: QLayerNorm(96), (4, 49, 96), 'aten.native_layer_norm'),
    'layer_norm_2d_shape': (lambda: QLayerNorm([12, 16]), (8, 6, 12, 16),
                            'aten.native_layer_norm'),
    'group_norm': (lambda: QGroupNorm(4, 32), (3, 32, 10, 10), 'aten.native_group_norm'),
    'batch_norm': (lambda: QBatchNorm2d(16), (4, 16, 12, 12), 'aten.native_batch_norm'),
}


def _module(name: str, level: str = 'L3') -> Tuple[nn.Module, Tensor, str]:
    make, shape, op = CASES[name]
    torch.manual_seed(0)
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(0.5, 1.5)
    m.actnn_config = CompressionConfig.from_level(level)
    x = torch.randn(shape) * torch.linspace(0.1, 4.0, shape[-1]) + 2.0
    return m, x, op


def _grads(m: nn.Module, x: Tensor, seed: int) -> Tuple[Tensor, ...]:
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)
    out = m(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    return torch.autograd.grad(out, [x] + list(m.parameters()), g)


@pytest.mark.parametrize('name', list(CASES))
def test_forward_is_the_norm_op_and_one_compress(name):
    m, x, op = _module(name)
    x.requires_grad_()
    m(x)  # first call builds the scheme and its statistics tensor
    with OpCounter() as c:
        m(x)
    assert c.by_name.get('actnn_mm.compress') == 1, c.by_name
    assert c.by_name.get(op) == 1, c.by_name
    assert not {'aten.sub', 'aten.mul', 'aten._to_copy'} & set(c.by_name), c.by_name
    assert c.host_reads == 0


@pytest.mark.parametrize('name', ['layer_norm', 'layer_norm_2d_shape', 'group_norm'])
def test_kernel_normalisation_equals_elementwise_normalisation(name, monkeypatch):
    m, x, _ = _module(name)
    fused = _grads(m, x, seed=3)
    real = norm.save_block_normalized_input

    def elementwise(ctx, x, mean, rstd, block, scheme, broadcast):
        norm.save_normalized_input(ctx, x, *broadcast(), scheme)

    monkeypatch.setattr(norm, 'save_block_normalized_input', elementwise)
    unfused = _grads(m, x, seed=3)
    monkeypatch.setattr(norm, 'save_block_normalized_input', real)
    for a, b in zip(fused, unfused):
        assert torch.equal(a, b)


@pytest.mark.parametrize('name', ['layer_norm', 'group_norm'])
def test_non_contiguous_input_still_saves_the_normalised_tensor(name):
    m, x, _ = _module(name)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous()
    got = _grads(m, xt, seed=3)
    want = _grads(m, x, seed=3)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
