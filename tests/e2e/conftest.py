"""Fixtures of the end-to-end tests: one working directory with small synthetic data sets in the
places the demo configs read (``data/coco``, ``data/cityscapes``, ``data/imagenet``)."""
from __future__ import annotations

import os
import os.path as osp
import sys

import pytest

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(osp.dirname(HERE))
for path in (osp.join(REPO, 'tools'), HERE):  # tools/actnn_tools/runner.py, e2e_helpers.py
    if path not in sys.path:
        sys.path.insert(0, path)

# Small but complete: a few images per split; the configs resize them to the demo sizes.
DATA = {
    'coco': dict(num_train=8, num_val=4, img_size=(120, 160)),
    'cityscapes': dict(num_train=4, num_val=2, img_size=(128, 256)),
    'imagenet': dict(num_train=16, num_val=4, img_size=(64, 64)),
}


@pytest.fixture(scope='session')
def demo_cwd(tmp_path_factory) -> str:
    """A directory holding ``data/<dataset>`` for every demo config (made once per session)."""
    from actnn_tools.demo_data import make_demo_data

    cwd = str(tmp_path_factory.mktemp('e2e'))
    for kind, spec in DATA.items():
        make_demo_data(kind, out=osp.join(cwd, 'data'), **spec)
    return cwd


@pytest.fixture
def in_demo_cwd(demo_cwd: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test inside ``demo_cwd`` (the configs' relative ``data/`` paths resolve there)."""
    monkeypatch.chdir(demo_cwd)
    return demo_cwd


@pytest.fixture(scope='session')
def tool_env() -> dict:
    """Environment for tools run as subprocesses: this checkout first, 2 threads."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]),
                OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'),
                PYTHON=sys.executable)
