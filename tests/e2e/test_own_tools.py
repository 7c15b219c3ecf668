"""Switching it on with mmdet's *own* ``tools/train.py`` (shipped in the installed
package under ``mmdet/.mim/tools``), ``custom_imports`` and a ``custom_hooks`` entry turn ActNN on;
the check hook confirms, inside the run, that every backbone BN is a Q-layer that compressed."""
from __future__ import annotations

import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest

HERE = osp.dirname(osp.abspath(__file__))
CONFIG = osp.join(HERE, 'configs/faster_rcnn_custom_hooks.py')
SMALL_DET = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
             'default_hooks.checkpoint.interval=1000', 'default_hooks.checkpoint.save_last=False',
             'train_dataloader.dataset.pipeline.2.scale=(160,160)',
             'val_dataloader.dataset.pipeline.1.scale=(160,160)']


def package_tool(package: str, tool: str) -> str:
    spec = importlib.util.find_spec(package)
    path = osp.join(list(spec.submodule_search_locations)[0], '.mim', 'tools', tool)
    if not osp.isfile(path):
        pytest.fail(f'{package} is installed without its tools ({path} is missing)')
    return path


def test_mmdet_own_train_py_with_custom_hooks(demo_cwd: str, tool_env: dict, tmp_path) -> None:
    work = str(tmp_path / 'work')
    res = subprocess.run([sys.executable, package_tool('mmdet', 'train.py'), CONFIG,
                          '--work-dir', work, '--cfg-options', *SMALL_DET],
                         cwd=demo_cwd, env=tool_env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    for part in ('backbone', 'neck', 'rpn_head', 'roi_head'):
        assert f'ActNN L3: {part}: ' in out, out[-3000:]
    assert 'actnn_kept_MB' in out and 'actnn_avg_bits' in out
    assert 'Iter(train) [2/2]' in out and 'bbox_mAP' in out
    with open(osp.join(work, 'qcheck_rank0.json')) as f:
        seen = json.load(f)
    assert [s['iter'] for s in seen['iters']] == [1, 2], seen
    for s in seen['iters']:
        assert s['q_norms'] == 53 and s['classes'] == ['QBatchNorm2d'], s
