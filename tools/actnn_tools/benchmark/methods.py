"""The training methods compared: exact, bf16 autocast, activation checkpointing, ActNN L0-L5.

Names: ``exact``, ``ckpt`` (8 segments) or ``ckptN``, ``L0``..``L5``; a ``-bf16`` suffix runs the
same under ``torch.autocast(dtype=torch.bfloat16)``. Each method's baseline (for the "x smaller"
and "x speed" ratios) is ``exact`` at the same precision.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

from actnn_mm.engine.config import LEVELS

__all__ = ['Method', 'parse_method', 'DEFAULT_METHODS', 'DEFAULT_SEGMENTS']

DEFAULT_SEGMENTS = 8
DEFAULT_METHODS: List[str] = (['exact', 'exact-bf16', 'ckpt'] + list(LEVELS) +
                              [f'{lv}-bf16' for lv in LEVELS])

_RE = re.compile(r'^(?:(?P<exact>exact)|(?P<ckpt>ckpt)(?P<seg>\d+)?|(?P<level>L[0-5]))'
                 r'(?P<bf16>-bf16)?$')


@dataclass(frozen=True)
class Method:
    """A parsed method name."""

    name: str
    kind: str                     # 'exact', 'ckpt' or 'actnn'
    level: Optional[str] = None   # ActNN level for kind 'actnn'
    segments: int = 0             # checkpoint segments for kind 'ckpt'
    bf16: bool = False            # run under bf16 autocast

    @property
    def baseline(self) -> str:
        """The method this one is compared with."""
        return 'exact-bf16' if self.bf16 else 'exact'

    @property
    def uses_swap(self) -> bool:
        return self.kind == 'actnn' and self.level in ('L4', 'L5')


def parse_method(name: str) -> Method:
    """``'L3-bf16'`` -> Method(kind='actnn', level='L3', bf16=True); ValueError on bad names."""
    m = _RE.match(name.strip())
    if m is None:
        raise ValueError(f'unknown method {name!r}: use exact, ckpt or ckptN, or L0..L5, each '
                         f'optionally with -bf16 (e.g. {", ".join(DEFAULT_METHODS[:4])})')
    bf16 = bool(m.group('bf16'))
    if m.group('exact'):
        return Method(name, 'exact', bf16=bf16)
    if m.group('ckpt'):
        seg = int(m.group('seg')) if m.group('seg') else DEFAULT_SEGMENTS
        if seg < 1:
            raise ValueError(f'{name!r}: checkpoint segments must be >= 1')
        return Method(name, 'ckpt', segments=seg, bf16=bf16)
    return Method(name, 'actnn', level=m.group('level'), bf16=bf16)
