"""The ``actnn`` options a config may give (hook arguments or an ``actnn = dict(...)`` section).

Validated eagerly so that a typo fails when the runner is built, not hours into training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..engine import CompressionConfig
from ..engine.config import LEVELS

#: Options that steer the integration; every other key must be a CompressionConfig field.
INTEGRATION_KEYS = ('level', 'parts', 'include', 'exclude', 'saved_tensors', 'log_interval')


@dataclass
class ActNNOptions:
    compression: CompressionConfig
    parts: Tuple[str, ...]
    include: Any = None
    exclude: Any = None
    saved_tensors: bool = True
    log_interval: Optional[int] = None


def valid_keys() -> Tuple[str, ...]:
    config_fields = tuple(n for n in CompressionConfig.field_names() if n != 'level')
    return INTEGRATION_KEYS + config_fields


def parse_options(options: Dict[str, Any], where: str = 'actnn') -> ActNNOptions:
    """Check keys and values of an ``actnn`` section; raise ``ValueError`` naming what is wrong."""
    options = dict(options)
    unknown = sorted(set(options) - set(valid_keys()))
    if unknown:
        raise ValueError(f'{where}: unknown option(s) {unknown}; valid options are '
                         f'{sorted(valid_keys())}')
    level = options.pop('level', 'L3')
    if level not in LEVELS:
        raise ValueError(f'{where}: unknown level {level!r}; valid levels are {list(LEVELS)}')
    parts = options.pop('parts', ('backbone', ))
    if isinstance(parts, str):
        parts = (parts, )
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f'{where}: parts must be a non-empty list of attribute paths such as '
                         f"['backbone', 'neck'], got {parts!r}")
    saved_tensors = options.pop('saved_tensors', True)
    if not isinstance(saved_tensors, bool):
        raise ValueError(f'{where}: saved_tensors must be True or False, got {saved_tensors!r}')
    log_interval = options.pop('log_interval', None)
    if log_interval is not None and (not isinstance(log_interval, int) or log_interval < 1):
        raise ValueError(f'{where}: log_interval must be a positive int, got {log_interval!r}')
    include, exclude = options.pop('include', None), options.pop('exclude', None)
    try:
        compression = CompressionConfig.from_level(level, **options)
    except ValueError as err:
        raise ValueError(f'{where}: {err}') from None
    return ActNNOptions(compression, tuple(parts), include, exclude, saved_tensors, log_interval)
