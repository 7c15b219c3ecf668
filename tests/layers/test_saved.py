"""What each Q-layer keeps for backward (counted by ``SavedBytesCounter``), in place or not."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from actnn_mm.engine import CompressedTensor, CompressionConfig, PackedIndex, PackedMask
from actnn_mm.layers import (
    QGELU,
    QAvgPool2d,
    QBatchNorm2d,
    QConv2d,
    QDropout,
    QLeakyReLU,
    QLinear,
    QMaxPool2d,
    QReLU,
    QSiLU,
)
from actnn_mm.saved_bytes import SavedBytesCounter

L3 = CompressionConfig.from_level('L3', min_numel=0)


def _count(module: nn.Module, x: torch.Tensor, config: CompressionConfig = L3):
    module.actnn_config = config
    with SavedBytesCounter(module, keep_objects=True) as counter:
        y = module(x)
    return y, counter


@pytest.mark.parametrize('layer', [QReLU(), QReLU(inplace=True), QLeakyReLU(0.1),
                                   QLeakyReLU(0.1, inplace=True), QDropout(0.5),
                                   QDropout(0.5, inplace=True)], ids=repr)
def test_mask_layers_keep_one_bit_per_element(layer: nn.Module) -> None:
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    inp = x * 1
    y, counter = _count(layer, inp)
    assert [type(o) for o in counter.objects] == [PackedMask]
    assert counter.total == math.ceil(x.numel() / 8)
    if getattr(layer, 'inplace', False):
        assert y is inp and inp._version > 0  # still in place
    y.sum().backward()
    assert x.grad is not None


def test_inplace_relu_inside_a_block_matches_torch() -> None:
    """mmdet's ResNet pattern: conv -> bn -> relu(inplace) -> conv."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        nn.Conv2d(8, 4, 3))
    q = nn.Sequential(QConv2d(3, 8, 3), QBatchNorm2d(8), QReLU(inplace=True), QConv2d(8, 4, 3))
    q.load_state_dict(ref.state_dict())
    for m in q:
        m.actnn_config = CompressionConfig.from_level('L0')
    x = torch.randn(2, 3, 12, 12)
    ref(x).square().sum().backward()
    q(x).square().sum().backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), q.named_parameters()):
        assert torch.equal(a.grad, b.grad), n


@pytest.mark.parametrize('kernel,stride,padding,dilation,ceil,nbits', [
    (3, 2, 1, 1, False, 4), (2, 2, 0, 1, True, 2), (3, 1, 0, 2, True, 4), (5, 1, 2, 1, False, 5)])
def test_maxpool_keeps_only_window_positions(kernel, stride, padding, dilation, ceil,
                                             nbits) -> None:
    x = torch.randn(2, 4, 15, 15, requires_grad=True)
    pool = QMaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)
    y, counter = _count(pool, x)
    assert [type(o) for o in counter.objects] == [PackedIndex]
    assert counter.total == math.ceil(y.numel() * nbits / 8)  # 4 bits for a 3x3 window
    y.sum().backward()


def test_avgpool_keeps_nothing() -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y, counter = _count(QAvgPool2d(3, 2, 1), x)
    assert counter.total == 0
    y.sum().backward()
    ref = x.detach().clone().requires_grad_()
    nn.AvgPool2d(3, 2, 1)(ref).sum().backward()
    assert torch.equal(x.grad, ref.grad)  # avg-pool arithmetic, not max-pool


@pytest.mark.parametrize('layer', [QConv2d(8, 8, 3), QLinear(10, 4), QBatchNorm2d(8), QGELU(),
                                   QSiLU()], ids=lambda m: type(m).__name__)
def test_input_layers_keep_one_compressed_input(layer: nn.Module) -> None:
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    y, counter = _count(layer, x)
    assert [type(o) for o in counter.objects] == [CompressedTensor]
    if isinstance(layer, QBatchNorm2d):  # + per-channel mean and invstd
        assert counter.by_kind['exact'] == 2 * 8 * 4
    else:
        assert set(counter.report.by_kind) == {'CompressedTensor'}
    # SiLU's derivative: >= 4 bits (layers/activation.py)
    assert counter.total < x.numel() * 4 / (4 if isinstance(layer, QSiLU) else 8)
    y.sum().backward()


def test_frozen_weight_keeps_no_input() -> None:
    conv = QConv2d(8, 8, 3)
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    y, counter = _count(conv, x)
    assert counter.total == 0
    y.sum().backward()
    ref = x.detach().clone().requires_grad_()
    nn.functional.conv2d(ref, conv.weight, conv.bias).sum().backward()
    assert torch.equal(x.grad, ref.grad)


def test_input_shared_by_two_layers_is_kept_once() -> None:
    """ResNet's block input feeds conv1 and the downsample conv: one compressed copy."""
    a, b = QConv2d(8, 8, 3), QConv2d(8, 16, 1)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    a.actnn_config = b.actnn_config = L3
    with SavedBytesCounter(keep_objects=True) as counter:
        y = a(x).sum() + b(x).sum()
    assert [type(o) for o in counter.objects] == [CompressedTensor]
    y.backward()
    _, single = _count(QConv2d(8, 8, 3), x)
    assert counter.total == single.total


def test_l1_keeps_norm_input_exact_and_shares_it() -> None:
    l1 = CompressionConfig.from_level('L1', min_numel=0)
    bn, conv = QBatchNorm2d(8), QConv2d(8, 8, 1)
    bn.actnn_config = conv.actnn_config = l1
    x = torch.randn(2, 8, 10, 10, requires_grad=True)  # a leaf: counted, the model is known
    with SavedBytesCounter(nn.ModuleList([bn, conv]), keep_objects=True) as counter:
        y = bn(x).sum() + conv(x).sum()  # the conv reuses the exact copy the norm keeps
    assert counter.objects == []
    assert counter.by_kind == {'exact': x.numel() * 4 + 2 * 8 * 4}
    y.backward()


def test_retain_graph_backward_twice() -> None:
    conv = QConv2d(4, 4, 3)
    conv.actnn_config = L3
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y = QReLU()(conv(x)).sum()
    y.backward(retain_graph=True)
    first = conv.weight.grad.clone()
    y.backward()
    assert torch.allclose(conv.weight.grad, 2 * first, rtol=0.5, atol=1e-3)


@pytest.mark.parametrize('shape', [(2, 7, 32), (2, 3, 5, 32)], ids=['3d', '4d'])
def test_linear_output_can_be_modified_in_place(shape) -> None:
    """F.linear returns a view of its 2-D result for inputs with several leading dims; a custom
    Function's view output may not be modified in place (DETR's decoder, mmcv's FFN add the
    residual in place), so the Q-layers return non-view outputs. Same gradients as the twin."""
    twin = nn.Linear(32, 16)
    q = QLinear(32, 16)
    q.load_state_dict(twin.state_dict())
    q.actnn_config = CompressionConfig.from_level('L0')
    x = torch.randn(shape)
    grads = []
    for m in (twin, q):
        xi = x.clone().requires_grad_()
        y = m(xi)
        assert m is twin or not y._is_view()
        y += 1.0
        y.mul_(2.0)
        y.pow(2).sum().backward()
        grads.append((xi.grad, m.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    q.actnn_config = L3
    y = q(x.clone().requires_grad_())
    y.add_(1.0)  # compressed: still allowed
    y.sum().backward()
    assert torch.isfinite(q.weight.grad).all()
