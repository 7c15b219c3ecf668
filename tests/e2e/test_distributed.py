"""Distributed training with ActNN.

- ``tools/dist_train.sh`` with 2 CPU processes (gloo, CPU DDP) trains the demo Faster R-CNN with
  ActNN on; a test-only hook (``e2e_qcheck_hook``, loaded by ``custom_imports``) checks inside
  each process, after every iteration, that every backbone BN is a Q-layer that compressed.
- ``QSyncBatchNorm`` across 2 CPU processes (gloo) gives the output, running statistics and
  gradients of plain BN over the concatenated global batch, i.e. what SyncBatchNorm computes; on a
  GPU (marked ``cuda``) also equal to torch's ``nn.SyncBatchNorm`` itself. (A CPU *training run*
  with ``sync_bn='torch'`` is not possible: torch's DDP refuses any SyncBatchNorm module on CPU,
  "SyncBatchNorm layers only work with GPU modules", before ActNN is involved.)
"""
from __future__ import annotations

import json
import os.path as osp
import socket
import subprocess
import tempfile
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from e2e_helpers import REPO
from torch import nn

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
L3_DRAWS = 16


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


def _draw(level: str, i: int) -> str:
    """Result key of draw ``i`` at ``level``: the first is the level's own entry."""
    return level if i == 0 else f'{level}.{i}'


def _sync_bn_worker(rank: int, init: str, backend: str, device_type: str, out_dir: str) -> None:
    from actnn_mm.engine import CompressionConfig
    from actnn_mm.layers import QSyncBatchNorm

    dist.init_process_group(backend, init_method=init, rank=rank, world_size=WORLD)
    try:
        device = 'cpu'
        if device_type == 'cuda':
            device = f'cuda:{rank % torch.cuda.device_count()}'
            torch.cuda.set_device(device)
        x, gy = _inputs(rank, device), _grad_out(rank, device)
        results = {}
        torch.manual_seed(0)
        if device_type == 'cuda':
            results['torch'] = _run_bn(nn.SyncBatchNorm(C).to(device), x, gy)
        for level, runs in (('L0', 1), ('L3', L3_DRAWS)):
            for i in range(runs):  # L3: independent rounding draws of the same step
                bn = QSyncBatchNorm(C).to(device)
                bn.actnn_config = CompressionConfig.from_level(level, min_numel=0)
                results[_draw(level, i)] = _run_bn(bn, x, gy)
        bn = QSyncBatchNorm(C).to(device)  # no grad (MoCo's key encoder): statistics still synced
        with torch.no_grad():
            y = bn(x)
        results['no_grad'] = dict(y=y, mean=bn.running_mean.clone(), var=bn.running_var.clone())
        for r in results.values():  # weight grads are per-rank sums: DDP would add them
            for k in ('gw', 'gb'):
                if k in r:
                    dist.all_reduce(r[k])
        torch.save({k: {n: t.cpu() for n, t in v.items()} for k, v in results.items()},
                   osp.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('device_type', ['cpu', pytest.param('cuda', marks=pytest.mark.cuda)])
def test_qsyncbn_two_processes_equals_global_batch_bn(device_type: str) -> None:
    # gloo on CPU; on a GPU nccl with 2 GPUs, else gloo with both ranks on one GPU
    backend = 'nccl' if device_type == 'cuda' and torch.cuda.device_count() >= WORLD else 'gloo'
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_sync_bn_worker,
                 args=(f'file://{osp.join(tmp, "store")}', backend, device_type, tmp),
                 nprocs=WORLD, join=True)
        ranks: List[dict] = [torch.load(osp.join(tmp, f'rank{r}.pt')) for r in range(WORLD)]
    # Reference: one plain BN over the concatenated global batch (what SyncBatchNorm computes).
    x = torch.cat([_inputs(r, 'cpu') for r in range(WORLD)]).double()
    gy = torch.cat([_grad_out(r, 'cpu') for r in range(WORLD)]).double()
    ref = _run_bn(nn.BatchNorm2d(C).double(), x, gy)
    per_rank = lambda key, r: ref[key][r * N_PER_RANK:(r + 1) * N_PER_RANK].float()  # noqa: E731
    names = ['L0', 'L3', 'no_grad'] + (['torch'] if device_type == 'cuda' else [])
    for r, got in enumerate(ranks):
        for name in names:
            res = got[name]
            for key in ('y', 'gx'):
                if key in res and not (key == 'gx' and name == 'L3'):  # L3 gx: noisy, below
                    torch.testing.assert_close(res[key], per_rank(key, r), rtol=1e-4, atol=1e-4)
            for key in ('mean', 'var'):  # the statistics of the global batch on every rank
                torch.testing.assert_close(res[key], ref[key].float(), rtol=1e-4, atol=1e-5)
            for key in ('gw', 'gb'):
                if key in res and not (key == 'gw' and name == 'L3'):
                    torch.testing.assert_close(res[key], ref[key].float(), rtol=1e-4, atol=1e-4)
        if device_type == 'cuda':  # L0 runs exact: torch's SyncBatchNorm's numbers
            for key in ('y', 'gx', 'gw', 'gb', 'mean', 'var'):
                torch.testing.assert_close(got['L0'][key], got['torch'][key])
        # L3: forward and statistics exact (every draw); gradients unbiased: each draw is off by
        # 2-bit noise, about the gradient's own size here (random output gradients), and the mean
        # of 16 independent draws is ~1/sqrt(16) as far off, which a sync or bias bug would not be.
        for i in range(L3_DRAWS):
            torch.testing.assert_close(got[_draw('L3', i)]['y'], got['L0']['y'])
        for key in ('gx', 'gw'):
            exact = got['L0'][key]
            draws = [got[_draw('L3', i)][key] for i in range(L3_DRAWS)]
            single = sum(float((d - exact).norm() / exact.norm()) for d in draws) / L3_DRAWS
            mean = float((torch.stack(draws).mean(0) - exact).norm() / exact.norm())
            print(f'[e2e] QSyncBN L3 rank {r} {key}: one draw {single:.3f}, mean of '
                  f'{L3_DRAWS} draws {mean:.3f} (relative error vs exact)')
            assert 0 < single < 3 and mean < 0.5 * single, (key, single, mean)
