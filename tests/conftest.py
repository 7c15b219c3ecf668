"""Project-wide pytest set-up: GPU tests are skipped visibly where no CUDA device exists."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA GPU (none visible)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)


def load_package_config(base: str):
    """Load an installed package's config (``'mmdet::path.py'``) the way users inherit it.

    mmengine resolves ``pkg::`` names only inside ``_base_``, so this writes a one-line child.
    """
    import tempfile

    from mmengine.config import Config

    with tempfile.TemporaryDirectory() as tmp:
        path = f'{tmp}/child.py'
        with open(path, 'w') as f:
            f.write(f'_base_ = [{base!r}]\n')
        return Config.fromfile(path)
