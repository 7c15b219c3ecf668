"""Issue 5, point 2: distributed training with ActNN.

- ``tools/dist_train.sh`` with 2 CPU processes (gloo, CPU DDP) trains the demo Faster R-CNN with
  ActNN on; a test-only hook (``e2e_qcheck_hook``, loaded by ``custom_imports``) checks inside
  each process, after every iteration, that every backbone BN is a Q-layer that compressed.
- ``QSyncBatchNorm`` across 2 processes equals ``nn.SyncBatchNorm`` and plain BN over the
  concatenated global batch. That test needs CUDA: torch's SyncBatchNorm (and its
  ``batch_norm_stats``/``batch_norm_gather_stats_with_counts`` kernels, which QSyncBatchNorm
  uses) exists for GPU tensors only, and QSyncBatchNorm keeps its twin's refusal of CPU input in a
  process group (tests/layers/test_sync_bn.py). Two ranks share one GPU over gloo.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import socket
import subprocess
import tempfile
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from e2e_helpers import REPO

HERE = osp.dirname(osp.abspath(__file__))
QCHECK_CONFIG = osp.join(HERE, 'configs/faster_rcnn_qcheck.py')
SMALL_DET = ['train_cfg.max_iters=2', 'train_cfg.val_begin=1000',
             'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2',
             'train_dataloader.dataset.pipeline.2.scale=(160,160)']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_sh_two_cpu_processes_keep_compressing_q_norms(demo_cwd: str, tool_env: dict,
                                                                   tmp_path) -> None:
    work = str(tmp_path / 'dist')
    env = dict(tool_env, PORT=str(free_port()), OMP_NUM_THREADS='1')
    res = subprocess.run(['bash', osp.join(REPO, 'tools/dist_train.sh'), QCHECK_CONFIG, '2',
                          '--work-dir', work, '--cfg-options', *SMALL_DET],
                         cwd=demo_cwd, env=env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert 'Distributed training: True' in out and "backend='gloo'" in out
    assert 'ActNN L3: backbone: ' in out and 'modules converted' in out
    assert 'Iter(train) [2/2]' in out
    for rank in (0, 1):
        with open(osp.join(work, f'qcheck_rank{rank}.json')) as f:
            seen = json.load(f)
        assert seen['world_size'] == 2 and seen['rank'] == rank
        assert [s['iter'] for s in seen['iters']] == [1, 2], seen
        for s in seen['iters']:
            assert s['wrapper'] == 'MMDistributedDataParallel'
            assert s['q_norms'] == 53 and s['classes'] == ['QBatchNorm2d'], s


# --- QSyncBatchNorm across processes ----------------------------------------------------------
C, N_PER_RANK, WORLD = 8, 3, 2


def _inputs(rank: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(N_PER_RANK, C, 6, 6, generator=g) * (1 + rank) + rank).to(device)


def _grad_out(rank: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + rank)
    return torch.randn(N_PER_RANK, C, 6, 6, generator=g).to(device)


def _run_bn(bn: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = bn(x)
    y.backward(gy)
    return dict(y=y.detach(), gx=x.grad, gw=bn.weight.grad.clone(), gb=bn.bias.grad.clone(),
                mean=bn.running_mean.clone(), var=bn.running_var.clone())


def _sync_bn_worker(rank: int, init: str, backend: str, out_dir: str) -> None:
    from actnn_mm.engine import CompressionConfig
    from actnn_mm.layers import QSyncBatchNorm

    dist.init_process_group(backend, init_method=init, rank=rank, world_size=WORLD)
    try:
        device = f'cuda:{rank % torch.cuda.device_count()}'
        torch.cuda.set_device(device)
        x, gy = _inputs(rank, device), _grad_out(rank, device)
        results = {}
        torch.manual_seed(0)
        results['torch'] = _run_bn(nn.SyncBatchNorm(C).to(device), x, gy)
        for level in ('L0', 'L3'):
            bn = QSyncBatchNorm(C).to(device)
            bn.actnn_config = CompressionConfig.from_level(level, min_numel=0)
            results[level] = _run_bn(bn, x, gy)
        for r in results.values():  # weight grads are per-rank sums: DDP would add them
            for k in ('gw', 'gb'):
                dist.all_reduce(r[k])
        torch.save({k: {n: t.cpu() for n, t in v.items()} for k, v in results.items()},
                   osp.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
def test_qsyncbn_two_processes_equals_syncbn_and_global_batch_bn() -> None:
    backend = 'nccl' if torch.cuda.device_count() >= WORLD else 'gloo'  # gloo: ranks share a GPU
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_sync_bn_worker, args=(f'file://{osp.join(tmp, "store")}', backend, tmp),
                 nprocs=WORLD, join=True)
        ranks: List[dict] = [torch.load(osp.join(tmp, f'rank{r}.pt')) for r in range(WORLD)]
    # Reference: one plain BN over the concatenated global batch.
    x = torch.cat([_inputs(r, 'cpu') for r in range(WORLD)]).double()
    gy = torch.cat([_grad_out(r, 'cpu') for r in range(WORLD)]).double()
    ref = _run_bn(nn.BatchNorm2d(C).double(), x, gy)
    per_rank = lambda key, r: ref[key][r * N_PER_RANK:(r + 1) * N_PER_RANK].float()  # noqa: E731
    for r, got in enumerate(ranks):
        for name in ('torch', 'L0', 'L3'):
            res = got[name]
            for key in ('y', 'gx'):
                if key == 'gx' and name == 'L3':
                    continue  # compressed input: checked against torch below, with tolerance
                torch.testing.assert_close(res[key], per_rank(key, r), rtol=1e-4, atol=1e-4)
            for key in ('mean', 'var'):  # the statistics of the global batch on every rank
                torch.testing.assert_close(res[key], ref[key].float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(res['gb'], ref['gb'].float(), rtol=1e-4, atol=1e-4)
        # L0 runs exact: the same numbers as torch's SyncBatchNorm, gradients included.
        for key in ('y', 'gx', 'gw', 'gb', 'mean', 'var'):
            torch.testing.assert_close(got['L0'][key], got['torch'][key])
        torch.testing.assert_close(got['torch']['gw'], ref['gw'].float(), rtol=1e-4, atol=1e-4)
        # L3: forward and statistics exact; gradients within 2-bit quantization noise.
        torch.testing.assert_close(got['L3']['y'], got['torch']['y'])
        for key in ('gx', 'gw'):
            err = (got['L3'][key] - got['torch'][key]).norm() / got['torch'][key].norm()
            assert err < 0.5, (key, float(err))
