"""tools/train.py, tools/test.py and tools/make_demo_data.py end to end, as a user runs them."""
from __future__ import annotations

import os
import os.path as osp
import pickle
import subprocess
import sys
from typing import List

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FASTER_RCNN = osp.join(REPO, 'configs/actnn/demo/faster_rcnn_r50_fpn_demo.py')
# a tiny run: 2 iterations at 160 px, validation and a checkpoint at the end
TINY = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
        'train_dataloader.dataset.pipeline.2.scale=(160,160)',
        'val_dataloader.dataset.pipeline.1.scale=(160,160)',
        'test_dataloader.dataset.pipeline.1.scale=(160,160)']


def run_tool(args: List[str], cwd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS',
                                                                             '2'))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory) -> str:
    """A working dir with tiny synthetic COCO in the default place, ``data/coco``."""
    cwd = str(tmp_path_factory.mktemp('demo'))
    res = run_tool([osp.join(REPO, 'tools/make_demo_data.py'), 'coco', '--num-train', '4',
                    '--num-val', '2', '--img-size', '96', '128'], cwd)
    assert res.returncode == 0, res.stderr
    assert 'coco: data/coco written' in res.stdout
    return cwd


@pytest.fixture(scope='module')
def trained(demo_dir: str) -> str:
    """Train the demo Faster R-CNN 2 iterations with tools/train.py; returns the work dir."""
    work_dir = osp.join(demo_dir, 'work')
    res = run_tool([osp.join(REPO, 'tools/train.py'), FASTER_RCNN, '--work-dir', work_dir,
                    '--cfg-options', *TINY], demo_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return work_dir


def test_make_demo_data_is_idempotent(demo_dir: str) -> None:
    res = run_tool([osp.join(REPO, 'tools/make_demo_data.py'), 'coco', '--num-train', '4',
                    '--num-val', '2', '--img-size', '96', '128'], demo_dir)
    assert res.returncode == 0 and 'already complete, skipped' in res.stdout


def test_train_two_iterations_checkpoints_and_evaluates(trained: str) -> None:
    assert osp.isfile(osp.join(trained, 'iter_2.pth'))
    logs = [osp.join(dp, f) for dp, _, fs in os.walk(trained) for f in fs if f.endswith('.log')]
    text = ''.join(open(p).read() for p in logs)
    assert 'Iter(train) [2/2]' in text
    assert 'coco/bbox_mAP' in text  # CocoMetric ran at the end of training
    with open(osp.join(trained, 'faster_rcnn_r50_fpn_demo.py')) as f:
        dumped = f.read()
    assert "imports=['actnn_mm']" in dumped or 'actnn_mm' in dumped


def test_test_tool_loads_checkpoint_and_dumps_predictions(demo_dir: str, trained: str) -> None:
    out = osp.join(demo_dir, 'preds.pkl')
    res = run_tool([osp.join(REPO, 'tools/test.py'), FASTER_RCNN, osp.join(trained, 'iter_2.pth'),
                    '--work-dir', osp.join(demo_dir, 'test_work'), '--out', out,
                    '--cfg-options', *TINY], demo_dir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert 'coco/bbox_mAP' in res.stdout + res.stderr
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 and 'pred_instances' in preds[0]


def test_missing_data_gives_the_command_that_makes_it(tmp_path) -> None:
    res = run_tool([osp.join(REPO, 'tools/train.py'), FASTER_RCNN, '--work-dir',
                    str(tmp_path / 'work')], str(tmp_path))
    assert res.returncode != 0
    assert 'data/coco/annotations/instances_train2017.json' in res.stderr
    assert 'python tools/make_demo_data.py coco --out data' in res.stderr
    assert 'Traceback' not in res.stderr


def test_resume_continues_from_the_checkpoint(demo_dir: str, trained: str) -> None:
    """Auto-resume reads an mmengine checkpoint (under torch's safe unpickler) and goes on."""
    work_dir = osp.join(demo_dir, 'resumed')
    os.makedirs(work_dir)
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(trained, 'iter_2.pth'))
    tiny = [o.replace('max_iters=2', 'max_iters=3') for o in TINY]
    res = run_tool([osp.join(REPO, 'tools/train.py'), FASTER_RCNN, '--work-dir', work_dir,
                    '--resume', '--cfg-options', *tiny, 'train_cfg.val_interval=3'], demo_dir)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert 'resumed epoch: 0, iter: 2' in out and 'Iter(train) [3/3]' in out
    assert osp.isfile(osp.join(work_dir, 'iter_3.pth'))


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='CPU-only behaviour')
def test_amp_on_cpu_is_a_clear_error(demo_dir: str) -> None:
    res = run_tool([osp.join(REPO, 'tools/train.py'), FASTER_RCNN, '--amp', '--work-dir',
                    osp.join(demo_dir, 'amp')], demo_dir)
    assert res.returncode != 0 and '--amp needs a GPU' in res.stderr
    assert 'Traceback' not in res.stderr
