"""CUDA training steps through the benchmark's own measurement (run by tools/gpu_check.sh):
a ResNet-50 step at L3 and, where mmcv has CUDA ops, a Faster R-CNN step."""
from __future__ import annotations

import math

import pytest
import torch

from actnn_tools.benchmark.measure import apply_method, run_config
from actnn_tools.benchmark.methods import parse_method
from actnn_tools.benchmark.workloads import build_workload

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]

CUDA = torch.device('cuda')


def test_resnet50_l3_training_step_has_finite_gradients() -> None:
    wl = build_workload('resnet50', 16, [224], CUDA)
    alloc = apply_method(parse_method('L3'), wl)
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):  # the second step runs with the bits the allocator solved
        opt.zero_grad(set_to_none=True)
        _, loss = wl.forward()
        loss.backward()
        grads = [p.grad for p in wl.model.parameters()]
        assert math.isfinite(loss.item())
        assert all(g is not None and g.is_cuda and torch.isfinite(g).all() for g in grads)
        opt.step()
    assert alloc.steps == 2 and alloc.solves >= 1  # stepped by the backwards alone


def test_resnet50_activation_memory_exact_vs_l3() -> None:
    """The allocator-measured activation memory: L3 far below exact, and the saved-bytes
    counter agreeing with the allocator for exact training."""
    exact = run_config('resnet50', 'exact', 32, [224], CUDA, iters=1, warmup=1)
    l3 = run_config('resnet50', 'L3', 32, [224], CUDA, iters=1, warmup=1)
    assert exact.status == 'ok' and l3.status == 'ok', (exact.error, l3.error)
    assert exact.saved_mb_per_sample > 8 * l3.saved_mb_per_sample > 0
    assert 0.8 < exact.counted_mb_per_sample / exact.saved_mb_per_sample < 1.25
    assert exact.peak_mb > l3.peak_mb > 0


def _mmcv_cuda_ops() -> None:
    pytest.importorskip('mmdet')
    ops = pytest.importorskip('mmcv.ops')
    try:
        feats = torch.rand(1, 4, 8, 8, device=CUDA)
        rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32, device=CUDA)
        ops.roi_align(feats, rois, (2, 2))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f'mmcv has no usable CUDA ops here: {e}')


def test_faster_rcnn_l3_step() -> None:
    _mmcv_cuda_ops()
    exact = run_config('faster_rcnn', 'exact', 2, [320, 480], CUDA, iters=1, warmup=1)
    l3 = run_config('faster_rcnn', 'L3', 2, [320, 480], CUDA, iters=1, warmup=1)
    assert exact.status == 'ok' and l3.status == 'ok', (exact.error, l3.error)
    assert exact.saved_mb_per_sample > 4 * l3.saved_mb_per_sample > 0
