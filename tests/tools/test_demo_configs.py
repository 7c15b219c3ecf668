"""The CPU demo configs: what they promise (no downloads, BN not SyncBN, ActNN plugin imported,
short iteration-based schedules), and, marked slow, that each really trains on CPU."""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Any, Iterator

import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs/actnn/demo')
CONFIGS = {
    'faster_rcnn_r50_fpn_demo': 'coco',
    'retinanet_r50_fpn_demo': 'coco',
    'fcn_r50_d8_demo': 'cityscapes',
    'fpn_r50_demo': 'cityscapes',
    'mocov2_r50_demo': 'imagenet',
}
# Models beyond the paper's five (same demo data); checked and trained in tests/e2e.
OTHER_MODELS = {'mask_rcnn_r50_fpn_demo', 'mask_rcnn_swin-t_fpn_demo', 'deit_tiny_demo'}


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def test_every_demo_config_is_listed() -> None:
    found = {osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(DEMO, '*.py'))}
    assert found == set(CONFIGS) | OTHER_MODELS


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_demo_config_is_cpu_and_offline_friendly(name: str) -> None:
    cfg = Config.fromfile(osp.join(DEMO, f'{name}.py'))
    assert cfg.custom_imports == dict(imports=['actnn_mm'], allow_failed_imports=False)
    model = cfg.model
    assert model.get('pretrained') is None
    assert model.backbone.get('init_cfg') is None or 'Pretrained' not in str(
        model.backbone.init_cfg)
    norm_types = {d['type'] for d in _walk(model) if isinstance(d, dict) and 'type' in d
                  and 'BN' in str(d['type'])}
    assert 'SyncBN' not in norm_types
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters <= 40
    loader = cfg.train_dataloader
    assert loader.num_workers == 0 and not loader.persistent_workers
    assert f'data/{CONFIGS[name]}' in loader.dataset.data_root
    assert cfg.default_hooks.checkpoint.interval == cfg.train_cfg.max_iters
    if CONFIGS[name] == 'coco':
        assert model.backbone.frozen_stages == -1 and model.backbone.norm_eval is False
        assert cfg.val_evaluator.type == 'CocoMetric' and cfg.val_evaluator.metric == 'bbox'
        assert len(loader.dataset.metainfo['classes']) == 4
    if name == 'mocov2_r50_demo':
        assert model.queue_len % loader.batch_size == 0


# --- slow: real CPU training through the tools ---------------------------------------------
def _run(args: list, cwd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def data_cwd(tmp_path_factory) -> str:
    cwd = str(tmp_path_factory.mktemp('democfg'))
    for kind, size in (('coco', ['96', '128']), ('cityscapes', ['128', '256']),
                       ('imagenet', ['64', '64'])):
        res = _run([sys.executable, osp.join(REPO, 'tools/make_demo_data.py'), kind,
                    '--num-train', '8', '--num-val', '2', '--img-size', *size], cwd)
        assert res.returncode == 0, res.stderr
    return cwd


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_demo_config_trains_on_cpu(name: str, data_cwd: str) -> None:
    work = osp.join(data_cwd, 'work', name)
    res = _run([sys.executable, osp.join(REPO, 'tools/train.py'), osp.join(DEMO, f'{name}.py'),
                '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=2',
                'default_hooks.logger.interval=1'], data_cwd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    assert 'Iter(train) [2/2]' in res.stdout + res.stderr


@pytest.mark.slow
def test_dist_train_runs_two_cpu_processes_on_gloo(data_cwd: str) -> None:
    work = osp.join(data_cwd, 'work', 'dist')
    env_port = str(29500 + os.getpid() % 1000)
    res = subprocess.run(
        ['bash', osp.join(REPO, 'tools/dist_train.sh'), osp.join(DEMO, 'fpn_r50_demo.py'), '2',
         '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=2'],
        cwd=data_cwd, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, PORT=env_port))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert 'Distributed training: True' in out and "backend='gloo'" in out
    assert osp.isfile(osp.join(work, 'iter_2.pth'))


@pytest.mark.slow
def test_demo_script_reports_map_and_saved_bytes(tmp_path) -> None:
    res = _run([sys.executable, osp.join(REPO, 'tools/demo.py'), '--iters', '2',
                '--work-dir', str(tmp_path / 'work'), '--data-root', str(tmp_path / 'coco')],
               str(tmp_path))
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-5000:]
    assert 'COCO bbox mAP: ' in out
    ratio = re.search(r'ActNN L3 keeps ([0-9.]+)x fewer bytes', out)
    assert ratio is not None, out[-3000:]
    assert float(ratio.group(1)) >= 8.0, out[-3000:]  # exact measured without ActNN
    assert osp.isfile(tmp_path / 'coco' / 'annotations' / 'instances_val2017.json')
