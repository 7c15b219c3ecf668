"""QSyncBatchNorm: without a process group it is QBatchNorm (tested with the other layers); the
synchronised path (CUDA only: ``torch.batch_norm_stats`` has no CPU kernel) is checked against
torch's own SyncBatchNorm Function in a one-process group."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

from actnn_mm.engine import CompressionConfig
from actnn_mm.layers import QSyncBatchNorm
from actnn_mm.layers._common import get_scheme
from actnn_mm.layers.norm import _SyncBatchNormFunction


def test_distributed_cpu_input_raises_the_twins_error() -> None:
    if dist.is_initialized():
        pytest.skip('a process group already exists')
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group('gloo', init_method=f'file://{os.path.join(tmp, "store")}',
                                rank=0, world_size=1)
        try:
            twin, q = nn.SyncBatchNorm(4), QSyncBatchNorm(4)
            x = torch.randn(2, 4, 3, 3, requires_grad=True)
            with pytest.raises(ValueError) as expected:
                twin(x)
            with pytest.raises(ValueError) as got:
                q(x)
            assert str(got.value) == str(expected.value)
        finally:
            dist.destroy_process_group()


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
