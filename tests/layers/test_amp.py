"""Q-layers under ``torch.autocast``: same dtypes and results as the twin, compression on the
autocast dtype, exact (L0) gradients bit-identical to the twin's, backward inside autocast too."""
from __future__ import annotations

import copy
from typing import Callable, Tuple

import pytest
import torch
from torch import nn

from actnn_mm.engine import CompressedTensor, CompressionConfig
from actnn_mm.layers import QLAYERS
from actnn_mm.saved_bytes import SavedBytesCounter

L0 = CompressionConfig.from_level('L0')
L3 = CompressionConfig.from_level('L3', min_numel=0)

# (name, factory, input shape, autocast policy of the op: 'lower' = runs in the autocast dtype;
# 'fp32' = autocast's fp32 list on CUDA, untouched on CPU; 'input' = runs in the input dtype)
LAYERS = [
    ('conv2d', lambda: nn.Conv2d(8, 6, 3, padding=1), (2, 8, 10, 10), 'lower'),
    ('conv-transpose2d', lambda: nn.ConvTranspose2d(8, 6, 3, stride=2), (2, 8, 6, 6), 'lower'),
    ('linear', lambda: nn.Linear(10, 6), (2, 8, 10), 'lower'),
    ('batchnorm2d', lambda: nn.BatchNorm2d(8), (2, 8, 10, 10), 'input'),
    ('layernorm', lambda: nn.LayerNorm(10), (2, 8, 10), 'fp32'),
    ('groupnorm', lambda: nn.GroupNorm(2, 8), (2, 8, 10, 10), 'fp32'),
    ('gelu', lambda: nn.GELU(), (2, 8, 10, 10), 'input'),
    ('silu', lambda: nn.SiLU(), (2, 8, 10, 10), 'input'),
    ('relu', lambda: nn.ReLU(), (2, 8, 10, 10), 'input'),
    ('maxpool', lambda: nn.MaxPool2d(3, 2, 1), (2, 8, 10, 10), 'input'),
]
IDS = [entry[0] for entry in LAYERS]


def _pair(make: Callable, config: CompressionConfig, device: str) -> Tuple[nn.Module, nn.Module]:
    twin = make().to(device)
    q = copy.deepcopy(twin)
    q.__class__ = QLAYERS[type(twin)]  # what convert() does
    q.actnn_config = config
    return twin, q


def _check(make: Callable, shape: Tuple, policy: str, device: str, dtype: torch.dtype,
           input_dtype: torch.dtype = torch.float32) -> None:
    twin, q = _pair(make, L0, device)
    x = torch.randn(shape, device=device, dtype=input_dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y1, y2 = twin(x1 * 1), q(x2 * 1)
        assert y2.dtype == y1.dtype
        assert torch.equal(y1, y2)
        grad = torch.randn_like(y1)
        y1.backward(grad)  # backward inside the autocast region as well
        y2.backward(grad)
    assert torch.equal(x1.grad, x2.grad)
    for (n, a), (_, b) in zip(twin.named_parameters(), q.named_parameters()):
        assert b.grad.dtype == a.grad.dtype == torch.float32
        assert torch.equal(a.grad, b.grad), n
    # Compressed: the saved input has the dtype the op ran in under autocast.
    q.actnn_config = L3
    with torch.autocast(device, dtype=dtype):
        with SavedBytesCounter(q, keep_objects=True) as counter:
            y = q(x.clone().requires_grad_())
    expected = {'lower': dtype, 'input': input_dtype,
                'fp32': torch.float32 if device == 'cuda' else input_dtype}[policy]
    compressed = [o for o in counter.objects if isinstance(o, CompressedTensor)]
    assert compressed or isinstance(twin, (nn.ReLU, nn.MaxPool2d))  # masks / indices
    for obj in compressed:
        assert obj.dtype == expected
    y.float().sum().backward()


@pytest.mark.parametrize('low_input', [False, True], ids=['fp32-in', 'low-in'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name,make,shape,policy', LAYERS, ids=IDS)
def test_cpu_autocast(name: str, make: Callable, shape: Tuple, policy: str, dtype: torch.dtype,
                      low_input: bool) -> None:
    _check(make, shape, policy, 'cpu', dtype, dtype if low_input else torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('name,make,shape,policy', LAYERS, ids=IDS)
def test_cuda_autocast(name: str, make: Callable, shape: Tuple, policy: str,
                       dtype: torch.dtype) -> None:
    _check(make, shape, policy, 'cuda', dtype)


class _StateProbe:
    """An AmpFunction whose backward records the autocast state it runs under."""

    seen: list = []


def _probe_function():
    from actnn_mm.layers._qlayer import AmpFunction

    class Probe(AmpFunction):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            _StateProbe.seen.append((torch.is_autocast_enabled('cpu'),
                                     torch.get_autocast_dtype('cpu')))
            return g * 2

    return Probe


@pytest.mark.parametrize('fwd_autocast, bwd_autocast', [(False, False), (False, True),
                                                        (True, False), (True, True)])
def test_backward_runs_under_the_forwards_autocast_state(fwd_autocast: bool,
                                                         bwd_autocast: bool) -> None:
    """What ``torch.amp.custom_bwd`` guarantees, whatever the state around ``backward()``."""
    probe = _probe_function()
    _StateProbe.seen.clear()
    x = torch.randn(4, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=fwd_autocast):
        y = probe.apply(x)
    with torch.autocast('cpu', dtype=torch.float16, enabled=bwd_autocast):
        y.sum().backward()
    enabled, dtype = _StateProbe.seen[-1]
    assert enabled == fwd_autocast
    if fwd_autocast:
        assert dtype == torch.bfloat16
    assert torch.equal(x.grad, torch.full((4, ), 2.0))
