"""Engine test set-up: make ``helpers`` importable and the kernels loaded once."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope='session', autouse=True)
def _kernels_loaded() -> None:
    """The compiled extension must be present (the reference is compared against it)."""
    import torch

    from actnn_mm.engine import _ops
    assert _ops.has_kernels(torch.device('cpu')), f'extension not loaded: {_ops._STATE["error"]!r}'
