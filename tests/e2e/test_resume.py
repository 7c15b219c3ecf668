"""``tools/train.py --resume`` continues an ActNN run exactly as if it had not
stopped: the losses of the iterations after the checkpoint equal the uninterrupted run's, at
full precision (mmengine's ``scalars.json``) and as printed.

What makes it exact: mmengine restores weights, optimizer, schedulers and logs, and replays the
skipped batches (the data pipeline's numpy draws); ``ActNNHook`` adds the bit allocator's state
and torch's RNG state (RPN/RoI sampling, ActNN's stochastic rounding), which mmengine does not
save. Demo Faster R-CNN at 160 px: 4 iterations in one go vs 2 + resume + 2.
"""
from __future__ import annotations

import os.path as osp
import re
import subprocess
import sys
from typing import Dict, List

import torch
from e2e_helpers import DEMO, REPO, scalars

CONFIG = osp.join(DEMO, 'faster_rcnn_r50_fpn_demo.py')
NO_RNG_RESTORE = osp.join(osp.dirname(osp.abspath(__file__)), 'configs',
                          'faster_rcnn_no_rng_restore.py')  # the same, restore disabled
OPTS = ['train_dataloader.dataset.pipeline.2.scale=(160,160)', 'train_cfg.max_iters=4',
        'train_cfg.val_begin=1000', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2', 'default_hooks.checkpoint.max_keep_ckpts=-1']
VARYING = ('time', 'data_time', 'eta', 'memory', 'step')  # wall-clock figures


def train(args: List[str], cwd: str, env: dict, config: str = CONFIG) -> str:
    res = subprocess.run([sys.executable, osp.join(REPO, 'tools/train.py'), config, *args,
                          '--cfg-options', *OPTS], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    return out


def by_iter(work_dir: str) -> Dict[int, dict]:
    return {r['iter']: {k: v for k, v in r.items() if k not in VARYING}
            for r in scalars(work_dir) if 'loss' in r}


def printed(out: str, it: int) -> str:
    """The loss fields of the printed log line of iteration ``it``."""
    line = next(ln for ln in out.splitlines() if f'Iter(train) [{it}/4]' in ln)
    return re.sub(r'(eta|time|data_time|memory): \S+\s+', '', line.split('Iter(train)')[1])


def test_resume_continues_exactly_like_an_uninterrupted_run(demo_cwd: str, tool_env: dict,
                                                            tmp_path) -> None:
    whole, part = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
    out_whole = train(['--work-dir', whole], demo_cwd, tool_env)
    ckpt = osp.join(whole, 'iter_2.pth')
    meta = torch.load(ckpt, map_location='cpu', weights_only=False)['meta']['actnn']
    assert meta['rng']['torch'].dtype == torch.uint8 and meta['allocator']['steps'] == 2
    assert meta['allocator']['layer_bits'], 'no per-layer bits in the checkpoint'

    out_part = train(['--work-dir', part, '--resume', ckpt], demo_cwd, tool_env)
    assert 'resumed epoch: 0, iter: 2' in out_part
    assert 'ActNN: restored torch RNG state of iteration 2' in out_part
    a, b = by_iter(whole), by_iter(part)
    assert sorted(b) == [3, 4], sorted(b)
    for it in (3, 4):
        assert b[it] == a[it], (it, a[it], b[it])  # every logged value, full precision
        assert printed(out_part, it) == printed(out_whole, it)
    assert 'actnn_kept_MB' in a[3] and 'loss_rpn_cls' in a[3]

    # The trap: without the RNG restore (a test module disables it), the same resume draws other
    # RPN/RoI samples and rounding numbers from iteration 3 on.
    blind = str(tmp_path / 'resumed_without_rng')
    out_blind = train(['--work-dir', blind, '--resume', ckpt], demo_cwd, tool_env,
                      NO_RNG_RESTORE)
    c = by_iter(blind)
    print(f'[e2e] resume, iteration 3: uninterrupted {printed(out_whole, 3)}')
    print(f'[e2e] resume, iteration 3: without RNG restore {printed(out_blind, 3)}')
    assert c[3]['loss'] != a[3]['loss'], 'a resume without the RNG restore was exact too'
