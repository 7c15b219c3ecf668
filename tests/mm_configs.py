"""Test helper: load an installed OpenMMLab package's config by its ``pkg::`` name."""
from __future__ import annotations


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
