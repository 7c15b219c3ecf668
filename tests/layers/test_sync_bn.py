"""QSyncBatchNorm: without a process group it is QBatchNorm (tested with the other layers). The
synchronised path uses torch's ``batch_norm_*`` kernels on GPUs (checked against torch's own
SyncBatchNorm Function in a one-process group) and the same formulas from
``actnn_mm.layers._sync_bn_cpu`` on CPU, where torch has none (checked here against plain batch
norm in a one-process gloo group; two processes: tests/e2e/test_distributed.py)."""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from actnn_mm.engine import CompressionConfig
from actnn_mm.layers import QSyncBatchNorm
from actnn_mm.layers._qlayer import get_scheme
from actnn_mm.layers.norm import _SyncBatchNormFunction


@pytest.fixture
def gloo_group() -> Iterator[None]:
    if dist.is_initialized():
        pytest.skip('a process group already exists')
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group('gloo', init_method=f'file://{os.path.join(tmp, "store")}',
                                rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _bn_pair(dtype: torch.dtype, level: str) -> tuple:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).to(dtype)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    q = QSyncBatchNorm(5).to(dtype)
    q.load_state_dict(bn.state_dict())
    q.actnn_config = CompressionConfig.from_level(level, min_numel=0)
    return bn, q


@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_cpu_sync_function_equals_batch_norm(gloo_group: None, dtype: torch.dtype,
                                             tol: float) -> None:
    """The CPU formulas through the synchronised Function (world size given as 1) equal
    ``aten.native_batch_norm`` forward, backward and running statistics (momentum 0.1)."""
    bn, q = _bn_pair(dtype, 'L0')
    x = (torch.randn(3, 5, 4, 4, dtype=dtype) * 3 + 1).to(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    xa = x.clone().requires_grad_()
    ya = bn(xa)
    ya.backward(gy)
    w = q.weight.detach().clone().requires_grad_()
    b = q.bias.detach().clone().requires_grad_()
    rm, rv = q.running_mean.clone(), q.running_var.clone()
    xb = x.clone().requires_grad_()
    yb = _SyncBatchNormFunction.apply(xb, w, b, rm, rv, 1e-5, 0.1, dist.group.WORLD, 1,
                                      get_scheme(q, 'norm'))
    yb.backward(gy)
    assert yb.dtype == dtype and yb.is_contiguous(memory_format=torch.channels_last)
    pairs = dict(y=(ya, yb), gx=(xa.grad, xb.grad), gw=(bn.weight.grad, w.grad),
                 gb=(bn.bias.grad, b.grad), mean=(bn.running_mean, rm),
                 var=(bn.running_var, rv))
    for name, (want, got) in pairs.items():
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=name)


def test_one_process_group_on_cpu_is_plain_batch_norm(gloo_group: None) -> None:
    """torch's SyncBatchNorm raises for CPU input in any process group; its Q twin synchronises
    CPU tensors, so in a group of one it is plain (Q) batch norm, with and without grad."""
    with pytest.raises(ValueError, match='SyncBatchNorm expected input tensor to be on GPU'):
        nn.SyncBatchNorm(5)(torch.randn(2, 5, 3, 3, requires_grad=True))
    bn, q = _bn_pair(torch.float32, 'L0')
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(q(x.requires_grad_()), bn(x), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(q(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(q.running_var, bn.running_var)
    assert int(q.num_batches_tracked) == int(bn.num_batches_tracked) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('level', ['L0', 'L3'])
def test_sync_function_matches_torch(level: str) -> None:
    from torch.nn.modules._functions import SyncBatchNorm as TorchSync
    if dist.is_initialized():
        pytest.skip('a process group already exists')
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group('nccl', init_method=f'file://{os.path.join(tmp, "store")}',
                                rank=0, world_size=1)
        try:
            group = dist.group.WORLD
            bn = QSyncBatchNorm(8).cuda()
            bn.actnn_config = CompressionConfig.from_level(level)
            scheme = get_scheme(bn, 'norm')
            x = torch.randn(4, 8, 16, 16, device='cuda')
            outs, grads = [], []
            for fn, extra in ((TorchSync, ()), (_SyncBatchNormFunction, (scheme, ))):
                xi = x.clone().requires_grad_()
                w = bn.weight.detach().clone().requires_grad_()
                b = bn.bias.detach().clone().requires_grad_()
                rm, rv = torch.zeros(8, device='cuda'), torch.ones(8, device='cuda')
                y = fn.apply(xi, w, b, rm, rv, 1e-5, 0.1, group, 1, *extra)
                y.backward(torch.linspace(-1, 1, y.numel(), device='cuda').view_as(y))
                outs.append((y, rm, rv))
                grads.append((xi.grad, w.grad, b.grad))
            for a, b in zip(outs[0], outs[1]):
                torch.testing.assert_close(a, b)
            tol = dict(rtol=0, atol=0) if level == 'L0' else dict(rtol=0.3, atol=0.05)
            for a, b in zip(grads[0], grads[1]):
                torch.testing.assert_close(a, b, **tol)
        finally:
            dist.destroy_process_group()
