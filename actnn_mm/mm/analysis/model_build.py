"""Load a training config and build its model as training would, without data or downloads."""
from __future__ import annotations

import os
import tempfile
from typing import Any, List, Optional

from mmengine.config import Config
from torch import nn

__all__ = ['load_config', 'strip_pretrained', 'build_model', 'task_of', 'TASKS']

#: What the synthetic batch has to look like (``synthetic.make_batch``).
TASKS = ('detection', 'segmentation', 'classification', 'selfsup')


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read ``path`` (a file, or an installed package's ``'mmdet::path.py'``) with its
    ``custom_imports`` imported, apply ``cfg_options``, and drop what would download weights."""
    if '::' in path and not os.path.isfile(path):
        with tempfile.TemporaryDirectory() as tmp:  # mmengine resolves pkg:: only in _base_
            child = os.path.join(tmp, 'child.py')
            with open(child, 'w') as f:
                f.write(f'_base_ = [{path!r}]\n')
            cfg = Config.fromfile(child)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'analyze_memory: no config file {path!r} (give a path or '
                                    "an installed package's config as 'mmdet::path/to.py')")
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    strip_pretrained(cfg.model)
    return cfg


def strip_pretrained(node: Any) -> List[str]:
    """Remove every pretrained-weight reference from a model config, in place.

    ``init_cfg`` entries of type ``Pretrained`` and ``pretrained='...'`` keys go (the analysis
    needs shapes, not trained weights, and must not download); returns the keys removed.
    """
    removed: List[str] = []

    def is_pretrained(init: Any) -> bool:
        if isinstance(init, dict):
            return str(init.get('type', '')).endswith('Pretrained') or 'checkpoint' in init
        if isinstance(init, (list, tuple)):
            return any(is_pretrained(i) for i in init)
        return False

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for key in list(obj.keys()):
                value = obj[key]
                if key == 'pretrained' and isinstance(value, str):
                    obj[key] = None
                    removed.append(f'{where}{key}')
                elif key == 'init_cfg' and is_pretrained(value):
                    obj[key] = None
                    removed.append(f'{where}{key}')
                else:
                    walk(value, f'{where}{key}.')
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f'{where}{i}.')

    walk(node, 'model.')
    return removed


def build_model(cfg: Config) -> nn.Module:
    """``MODELS.build(cfg.model)`` in the config's default scope, then ``init_weights()``; a
    top-level ``data_preprocessor`` (mmpretrain's configs) fills the model's, as mmengine's
    Runner does."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', None) or 'mmengine')
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return model


def task_of(model: nn.Module) -> str:
    """Which kind of synthetic batch the model trains on (one of :data:`TASKS`)."""
    mro = {f'{c.__module__}.{c.__name__}' for c in type(model).__mro__}

    def has(prefix: str, name: str) -> bool:
        return any(m.startswith(prefix) and m.endswith('.' + name) for m in mro)

    if has('mmdet.', 'BaseDetector'):
        return 'detection'
    if has('mmseg.', 'BaseSegmentor'):
        return 'segmentation'
    if has('mmpretrain.', 'BaseSelfSupervisor'):
        return 'selfsup'
    if has('mmpretrain.', 'BaseClassifier'):
        return 'classification'
    raise ValueError(f'analyze_memory: cannot make training inputs for {type(model).__name__}: '
                     'supported are mmdet detectors, mmseg segmentors, mmpretrain classifiers '
                     'and self-supervised algorithms')
