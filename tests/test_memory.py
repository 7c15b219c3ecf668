"""Saved-bytes counting on CPU, and the compression ratios ActNN promises (ResNet-50)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from actnn_mm import convert
from actnn_mm.engine import CompressionConfig
from actnn_mm.forward_context import install
from actnn_mm.saved_bytes import SavedBytesCounter, measure_saved_bytes


def test_counts_each_storage_once_per_module_without_parameters() -> None:
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    x = torch.randn(8, 32)
    report = measure_saved_bytes(model, x)
    in_bytes, hidden_bytes = x.numel() * 4, 8 * 64 * 4
    # Linear keeps its input; ReLU its output, which the second Linear keeps too (same storage).
    assert report.by_module == {'0': in_bytes, '1': hidden_bytes}
    assert report.total == in_bytes + hidden_bytes and report.by_kind == {'exact': report.total}
    assert report.by_prefix(1) == {'0': in_bytes, '1': hidden_bytes}
    assert 'total' in report.table()


def test_views_of_one_storage_count_once() -> None:
    w = nn.Parameter(torch.randn(64, 64))
    base = torch.randn(4, 64, requires_grad=True) * 1
    with SavedBytesCounter() as counter:
        y = (base[:2] @ w).sum() + (base[2:] @ w).sum()  # two views of one storage
    assert counter.total == base.numel() * 4
    y.backward()


def _resnet50() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50()


@pytest.fixture(scope='module')
def resnet50_exact() -> int:
    torch.manual_seed(0)
    return measure_saved_bytes(_resnet50(), torch.randn(2, 3, 224, 224)).total


@pytest.mark.parametrize('level,min_ratio', [('L3', 10.0), ('L2', 6.0)])
def test_resnet50_compression_ratio(resnet50_exact: int, level: str, min_ratio: float) -> None:
    model = _resnet50()
    convert(model, CompressionConfig.from_level(level))
    torch.manual_seed(0)
    report = measure_saved_bytes(model, torch.randn(2, 3, 224, 224))
    ratio = resnet50_exact / report.total
    assert ratio >= min_ratio, f'{level}: {ratio:.2f}x\n{report.table()}'


def test_swin_t_generic_path_ratio() -> None:
    pytest.importorskip('mmpretrain')
    from mmpretrain.models import SwinTransformer
    torch.manual_seed(0)
    model = SwinTransformer(arch='tiny', img_size=224, init_cfg=None)
    x = torch.randn(1, 3, 224, 224)
    exact = measure_saved_bytes(model, x)
    generic = copy.deepcopy(model)
    install(generic, CompressionConfig.from_level('L3'))  # saved-tensor hooks only, no Q-layers
    report = measure_saved_bytes(generic, x)
    ratio = exact.total / report.total
    assert ratio >= 5.0, f'{ratio:.2f}x\n{report.table()}'
