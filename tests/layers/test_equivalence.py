"""Every Q-layer against its torch twin, for every constructor option in ``_cases``.

Forward results, buffers (running stats) and ``state_dict`` are identical; with compression off
(L0) gradients are identical bit for bit on CPU; in eval/no_grad the twin runs unchanged.
"""
from __future__ import annotations

from typing import Any, Tuple

import pytest
import torch
from _cases import CASE_IDS, CASES, Case
from torch import nn

from actnn_mm.engine import CompressionConfig
from actnn_mm.layers import QLAYERS

L0 = CompressionConfig.from_level('L0')
L3 = CompressionConfig.from_level('L3', min_numel=0)

# Layers whose saved state is lossless at every level (masks, window indices, geometry).
LOSSLESS = (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d)


def _run(module: nn.Module, x: torch.Tensor, case: Case, seed: int = 1) -> Tuple[Any, ...]:
    torch.manual_seed(seed)
    out = module(x * 1, **case.call_kwargs)  # x * 1: a non-leaf, so in-place layers can run
    return out if isinstance(out, tuple) else (out, )


def _backward_pair(case: Case, config: CompressionConfig):
    twin, q = case.pair()
    q.actnn_config = config
    x = case.input()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = _run(twin, x1, case), _run(q, x2, case)
    return twin, q, x1, x2, y1, y2


def _is_q_node(t: torch.Tensor) -> bool:
    """A Q Function within the last few autograd nodes (unbatched inputs add a squeeze)."""
    frontier = [t.grad_fn]
    for _ in range(3):
        if any(f is not None and 'Function' in type(f).__name__ for f in frontier):
            return True
        frontier = [n for f in frontier if f is not None for n, _ in f.next_functions]
    return False


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_l0_forward_and_gradients_bitwise_equal(case: Case) -> None:
    twin, q, x1, x2, y1, y2 = _backward_pair(case, L0)
    assert _is_q_node(y2[0]), 'the Q path did not run'
    for a, b in zip(y1, y2):
        assert torch.equal(a, b)
    grad = torch.randn_like(y1[0])
    y1[0].backward(grad)
    y2[0].backward(grad)
    assert torch.equal(x1.grad, x2.grad)
    for (name, p1), (_, p2) in zip(twin.named_parameters(), q.named_parameters()):
        assert torch.equal(p1.grad, p2.grad), name
    for (name, b1), (_, b2) in zip(twin.named_buffers(), q.named_buffers()):
        assert torch.equal(b1, b2), name


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_compressed_forward_equal_and_gradients_finite(case: Case) -> None:
    twin, q, x1, x2, y1, y2 = _backward_pair(case, L3)
    assert _is_q_node(y2[0])
    for a, b in zip(y1, y2):
        assert torch.equal(a, b)  # compression only touches what is saved
    grad = torch.randn_like(y1[0])
    y1[0].backward(grad)
    y2[0].backward(grad)
    assert x2.grad.shape == x1.grad.shape and torch.isfinite(x2.grad).all()
    for (name, b1), (_, b2) in zip(twin.named_buffers(), q.named_buffers()):
        assert torch.equal(b1, b2), name
    if issubclass(case.twin, LOSSLESS):
        assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_eval_and_no_grad_run_the_twin(case: Case) -> None:
    twin, q = case.pair()
    x = case.input().requires_grad_()
    twin.eval()
    q.eval()
    y1, y2 = _run(twin, x, case), _run(q, x, case)
    for a, b in zip(y1, y2):
        assert torch.equal(a, b)
    if y1[0].grad_fn is not None:
        assert type(y2[0].grad_fn) is type(y1[0].grad_fn)  # no Q Function, nothing compressed
    twin.train()
    q.train()
    with torch.no_grad():
        y1, y2 = _run(twin, x, case), _run(q, x, case)
    for a, b in zip(y1, y2):
        assert torch.equal(a, b) and b.grad_fn is None


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_module_api_is_the_twins(case: Case) -> None:
    twin, q = case.pair()
    assert isinstance(q, case.twin)
    assert case.twin in type(q).__bases__  # mmengine's init_cfg matches direct bases only
    assert list(q.state_dict()) == list(twin.state_dict())
    assert [n for n, _ in q.named_buffers()] == [n for n, _ in twin.named_buffers()]
    assert [n for n, _ in q.named_parameters()] == [n for n, _ in twin.named_parameters()]
    assert repr(q) == 'Q' + repr(twin)


def test_every_twin_has_a_case() -> None:
    assert set(QLAYERS) == {c.twin for c in CASES}


BAD_INPUTS = [
    (nn.Conv1d(4, 4, 3), (2, 4, 5, 5)),
    (nn.Conv2d(4, 4, 3), (2, 4, 5, 5, 5)),
    (nn.Conv2d(4, 4, 3), (4, 5)),
    (nn.Conv3d(4, 4, 3), (2, 4, 5, 5)),
    (nn.Conv2d(4, 4, 3), (2, 3, 5, 5)),  # wrong channels
    (nn.ConvTranspose2d(4, 4, 3), (2, 4, 5, 5, 5)),
    (nn.Linear(4, 3), (2, 5)),
    (nn.BatchNorm1d(4), (2, 4, 5, 5)),
    (nn.BatchNorm2d(4), (2, 4, 5)),
    (nn.BatchNorm3d(4), (2, 4, 5, 5)),
    (nn.BatchNorm2d(4), (1, 4, 1, 1)),  # one value per channel in training
    (nn.SyncBatchNorm(4), (4, )),
    (nn.LayerNorm(4), (2, 5)),
    (nn.GroupNorm(2, 4), (2, 6, 5)),
    (nn.GroupNorm(2, 4), (4, )),
    (nn.MaxPool2d(2), (2, 4, 5, 5, 5)),
    (nn.AvgPool2d(2), (5, )),
    (nn.ReLU(inplace=True), (2, 4)),  # in place on a leaf that requires grad
    (nn.LeakyReLU(0.1, inplace=True), (2, 4)),
    (nn.SiLU(inplace=True), (2, 4)),
    (nn.Hardswish(inplace=True), (2, 4)),
    (nn.Dropout(0.5, inplace=True), (2, 4)),
]


@pytest.mark.parametrize('twin,shape', BAD_INPUTS,
                         ids=[f'{type(t).__name__}{list(s)}' for t, s in BAD_INPUTS])
def test_bad_input_raises_the_twins_error(twin: nn.Module, shape: Tuple[int, ...]) -> None:
    q = QLAYERS[type(twin)](*_ctor_args(twin))
    q.load_state_dict(twin.state_dict())
    x = torch.randn(shape, requires_grad=True)
    with pytest.raises(Exception) as expected:
        twin(x)
    with pytest.raises(type(expected.value)) as got:
        q(x)
    assert str(got.value) == str(expected.value)


def _ctor_args(m: nn.Module) -> Tuple:
    if isinstance(m, (nn.ReLU, nn.SiLU, nn.Hardswish)):
        return (m.inplace, )
    if isinstance(m, nn.LeakyReLU):
        return (m.negative_slope, m.inplace)
    if isinstance(m, nn.Dropout):
        return (m.p, m.inplace)
    if isinstance(m, nn.modules.conv._ConvNd):
        return (m.in_channels, m.out_channels, m.kernel_size)
    if isinstance(m, nn.Linear):
        return (m.in_features, m.out_features)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return (m.num_features, )
    if isinstance(m, nn.LayerNorm):
        return (m.normalized_shape, )
    if isinstance(m, nn.GroupNorm):
        return (m.num_groups, m.num_channels)
    return (m.kernel_size, )


CHANNELS_LAST = [nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                 nn.AvgPool2d(2), nn.GroupNorm(2, 8), nn.GELU(), nn.Dropout(0.3)]


@pytest.mark.parametrize('twin', CHANNELS_LAST, ids=lambda m: type(m).__name__)
def test_channels_last_inputs(twin: nn.Module) -> None:
    """Same values and strides (compressed copies come back in the input's memory format)."""
    import copy
    q = copy.deepcopy(twin)
    q.__class__ = QLAYERS[type(twin)]
    q.actnn_config = L0
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(0)
    y1 = twin(x1 * 1)
    torch.manual_seed(0)
    y2 = q(x2 * 1)
    assert torch.equal(y1, y2) and y1.stride() == y2.stride()
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    assert torch.equal(x1.grad, x2.grad) and x1.grad.stride() == x2.grad.stride()
    q.actnn_config = L3
    y3 = q(x.clone().requires_grad_() * 1)
    y3.backward(grad)
