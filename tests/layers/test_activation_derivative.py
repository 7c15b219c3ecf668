"""SiLU / Hardswish keep their derivative with at least DERIVATIVE_BITS bits: it gates the
gradient elementwise at every activation of a conv-BN-act chain, where 2-bit rounding adds up."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from actnn_mm import convert
from actnn_mm.engine import CompressedTensor, CompressionConfig
from actnn_mm.layers import activation
from actnn_mm.saved_bytes import SavedBytesCounter


def _chain(act: type) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act()]
    return nn.Sequential(*layers)


def _grads(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 16, 12, 12)
    model.zero_grad()
    model(x).square().sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _l3_error(act: type) -> float:
    exact_model = _chain(act)
    exact = _grads(exact_model)
    model = copy.deepcopy(exact_model)
    convert(model, CompressionConfig.from_level('L3', per_layer=False, min_numel=64),
            include=act, saved_tensors=False)  # only the activations: their share of the error
    got = _grads(model)
    return ((got - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize('act', [nn.SiLU, nn.Hardswish])
def test_chain_gradient_with_floored_derivative_bits(act: type, monkeypatch) -> None:
    floored = _l3_error(act)
    monkeypatch.setattr(activation, 'DERIVATIVE_BITS', 2)  # the level's own 2 bits
    naive = _l3_error(act)
    assert floored < 0.3 and naive > 3 * floored, (floored, naive)


def test_derivative_is_kept_at_derivative_bits() -> None:
    m = nn.Sequential(nn.Conv2d(8, 8, 3), nn.SiLU())
    convert(m, CompressionConfig.from_level('L3', min_numel=64), saved_tensors=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    with SavedBytesCounter(keep_objects=True) as counter:
        y = m(x)
    bits = sorted(float(o.bits.float().mean()) if torch.is_tensor(o.bits) else float(o.bits)
                  for o in counter.objects if isinstance(o, CompressedTensor))
    assert bits[-1] == activation.DERIVATIVE_BITS
    y.sum().backward()
