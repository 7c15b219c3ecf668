"""Turn a config's ``actnn = dict(...)`` section into the ``ActNNHook`` that does the work.

With the packages' own ``tools/train.py`` a ``custom_hooks`` entry is what mmengine reads:

    custom_hooks = [dict(type='ActNNHook', level='L3', parts=['backbone', 'neck'])]

The project's ``tools/train.py`` / ``tools/test.py`` also accept the shorter section

    actnn = dict(level='L3', parts=['backbone', 'neck'])

and call :func:`apply_actnn_section`, which checks it (unknown keys and levels fail here, before
any training) and appends the equivalent hook.
"""
from __future__ import annotations

from typing import Any

from .options import parse_options

HOOK_TYPES = ('ActNNHook', 'actnn_mm.ActNNHook')


def has_actnn_hook(cfg: Any) -> bool:
    hooks = cfg.get('custom_hooks', None) or []
    return any(isinstance(h, dict) and h.get('type') in HOOK_TYPES for h in hooks)


def apply_actnn_section(cfg: Any) -> Any:
    """Validate ``cfg.actnn`` and add the ``ActNNHook`` it describes (in place; returns cfg).

    A config with both the section and an ``ActNNHook`` entry is ambiguous: an error.
    """
    section = cfg.get('actnn', None)
    if section is None:
        return cfg
    if not isinstance(section, dict):
        raise ValueError(f'actnn: the config section must be a dict, got {type(section).__name__}')
    if has_actnn_hook(cfg):
        raise ValueError('actnn: the config has both an `actnn` section and an ActNNHook in '
                         '`custom_hooks`; keep one of them')
    parse_options(dict(section), where='actnn')  # fail now, not at the first iteration
    hooks = list(cfg.get('custom_hooks', None) or [])
    hooks.append(dict(type='ActNNHook', **dict(section)))
    cfg.custom_hooks = hooks
    return cfg
