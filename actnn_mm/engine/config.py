"""``CompressionConfig``: what to compress and how, passed explicitly to whatever uses it.

Why an object and not a process-wide global: two models with different levels can then train in
one process. ``get_default_config``/``set_default_config`` exist only as a convenience.

Levels (ActNN paper): L0 exact; L1 4-bit conv/linear/generic, norm layers exact; L2 4-bit
everywhere; L3 2 bits on average with per-sample and per-layer mixed precision; L4 = L3 +
compressed activations swapped to pinned host memory; L5 = L4 + the CUDA caching allocator's
``expandable_segments`` (what replaces the original's patched-PyTorch defragmentation; on CPU,
glibc's allocator set to return freed blocks).
Every knob can be overridden on its own: ``CompressionConfig.from_level('L3', bits=3, swap=True)``.

A config is immutable (a frozen dataclass, compared and hashed by value) so that a layer, a
saved-tensor context and a bit allocator holding the same config can never disagree about it;
``replace`` makes changed copies, ``to_dict``/``from_dict`` carry it through checkpoints.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any, Dict, FrozenSet, Mapping, Optional, Union

from .layout import MAX_GROUP_SIZE

LEVELS = ('L0', 'L1', 'L2', 'L3', 'L4', 'L5')
UNIFORM_BITS = (1, 2, 4, 8, 16, 32)

_L3 = dict(enabled=True, bits=2, per_sample=True, per_layer=True, swap=False, defrag=False,
           compress_norm=True)
LEVEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'L0': dict(enabled=False, bits=32, per_sample=False, per_layer=False, swap=False,
               defrag=False, compress_norm=False),
    'L1': dict(enabled=True, bits=4, per_sample=False, per_layer=False, swap=False,
               defrag=False, compress_norm=False),
    'L2': dict(enabled=True, bits=4, per_sample=False, per_layer=False, swap=False,
               defrag=False, compress_norm=True),
    'L3': _L3,
    'L4': dict(_L3, swap=True),
    'L5': dict(_L3, swap=True, defrag=True),
}
#: Fields whose value comes from the level unless given explicitly.
LEVEL_FIELDS = tuple(_L3)
#: Version of the :meth:`CompressionConfig.to_dict` format (checked by ``from_dict``).
DICT_VERSION = 1


@dataclass(frozen=True)
class CompressionConfig:
    """Compression settings (immutable). Fields left ``None`` take the value of ``level``.

    Explicit vs level defaults: each of :data:`LEVEL_FIELDS` (``enabled``, ``bits``,
    ``per_sample``, ``per_layer``, ``swap``, ``defrag``, ``compress_norm``) is *explicit* when it
    was given a value (not ``None``) to the constructor, ``from_level``, ``replace`` or
    ``from_dict``, and a *level default* otherwise; ``explicit_fields`` lists them. The other
    fields do not depend on the level. ``replace(level=...)`` re-applies the new level's defaults
    to the level-default fields only: explicit fields and the level-independent ones keep their
    values. Equality and hashing compare the settings alone (what compression does), not which
    of them were explicit.

    bits: uniform bits (1, 2, 4, 8; 16/32 = exact) without mixed precision, else the average
        bits (a number in [1, 8]) that per-sample / per-layer allocation keeps.
    per_sample: allocate bits per sample within each layer (every step, on device).
    per_layer: allocate the average bits across layers (every ``realloc_interval`` steps, from
        statistics cached on device; one host transfer per solve).
    swap: L4, offload compressed payloads to pinned host memory (CUDA; a no-op on CPU).
    defrag: L5, enable the CUDA allocator's expandable segments; on CPU, make glibc return
        freed activation memory to the system
        (``engine.allocator_settings.return_freed_cpu_memory``).
    compress_norm: compress the inputs of normalisation layers (False at L1).
    min_numel: tensors with fewer elements are kept exact (not worth the metadata).
    stochastic: stochastic (unbiased) rounding; False rounds to nearest (tests only).
    """

    level: str = 'L3'
    enabled: Optional[bool] = None
    bits: Optional[Union[int, float]] = None
    group_size: int = 256
    stochastic: bool = True
    per_sample: Optional[bool] = None
    per_layer: Optional[bool] = None
    swap: Optional[bool] = None
    defrag: Optional[bool] = None
    compress_norm: Optional[bool] = None
    min_numel: int = 4096
    realloc_interval: int = 100
    min_bits: int = 1
    max_bits: int = 8
    _explicit: FrozenSet[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f'level must be one of {LEVELS}, got {self.level!r}')
        explicit = frozenset(n for n in LEVEL_FIELDS if getattr(self, n) is not None)
        object.__setattr__(self, '_explicit', explicit)
        for name, value in LEVEL_DEFAULTS[self.level].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self.validate()

    @property
    def explicit_fields(self) -> FrozenSet[str]:
        """The :data:`LEVEL_FIELDS` given explicitly (the others are the level's defaults)."""
        return self._explicit

    @property
    def mixed(self) -> bool:
        """Whether bits are allocated (per sample and/or per layer) rather than uniform."""
        return bool(self.per_sample or self.per_layer)

    def validate(self) -> None:
        """Raise ValueError naming the field and its valid values."""
        for name in ('enabled', 'stochastic', 'per_sample', 'per_layer', 'swap', 'defrag',
                     'compress_norm'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be a bool, got {getattr(self, name)!r}')
        for name, lo in (('min_numel', 0), ('realloc_interval', 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f'{name} must be an int >= {lo}, got {v!r}')
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or not 8 <= gs <= MAX_GROUP_SIZE \
                or gs % 8:
            raise ValueError(f'group_size must be a multiple of 8 in [8, {MAX_GROUP_SIZE}], '
                             f'got {gs!r}')
        if not (isinstance(self.min_bits, int) and isinstance(self.max_bits, int)
                and 1 <= self.min_bits <= self.max_bits <= 8):
            raise ValueError(f'min_bits/max_bits must be ints with 1 <= min_bits <= max_bits <= 8, '
                             f'got {self.min_bits!r}/{self.max_bits!r}')
        b = self.bits
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ValueError(f'bits must be a number, got {b!r}')
        if not self.enabled:
            return
        if self.mixed:
            if not self.min_bits <= b <= self.max_bits:
                raise ValueError(f'bits (the average with per_sample/per_layer allocation) must '
                                 f'be in [{self.min_bits}, {self.max_bits}], got {b!r}')
        elif b not in UNIFORM_BITS or (isinstance(b, float) and not b.is_integer()):
            raise ValueError(f'bits must be one of {UNIFORM_BITS} without mixed precision '
                             f'(per_sample=per_layer=False), got {b!r}')

    @classmethod
    def field_names(cls) -> tuple:
        """Every settable field, ``level`` first."""
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def _check_names(cls, names: Any, what: str) -> None:
        unknown = sorted(set(names) - set(cls.field_names()))
        if unknown:
            raise ValueError(f'unknown CompressionConfig {what} {unknown}; valid fields: '
                             f'{sorted(cls.field_names())}')

    @classmethod
    def from_level(cls, level: str = 'L3', **overrides: Any) -> 'CompressionConfig':
        """The level's settings with any field overridden, e.g. ``from_level('L2', bits=8)``."""
        cls._check_names(overrides, 'field(s)')
        overrides.pop('level', None)
        return cls(level=level, **overrides)

    def replace(self, **changes: Any) -> 'CompressionConfig':
        """A copy with ``changes`` applied (given fields become explicit; ``None`` returns a
        level field to its level default). A new ``level`` re-applies that level's defaults to
        the fields that were level defaults; explicit and level-independent fields are kept::

            >>> c = CompressionConfig.from_level('L3', bits=3, group_size=128)
            >>> c.replace(level='L4').bits, c.replace(level='L4').group_size
            (3, 128)
        """
        self._check_names(changes, 'field(s)')
        values = {n: getattr(self, n) for n in self.field_names()}
        for name in LEVEL_FIELDS:
            if name not in self._explicit:
                values[name] = None  # re-derived from the (possibly new) level
        values.update(changes)
        return type(self)(**values)

    def to_dict(self) -> Dict[str, Any]:
        """Every setting, which of them were explicit and the format version: plain Python
        values (a checkpoint's ``meta`` holds it under ``torch.load(weights_only=True)``)."""
        out: Dict[str, Any] = {'version': DICT_VERSION}
        out.update({n: getattr(self, n) for n in self.field_names()})
        out['explicit'] = sorted(self._explicit)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'CompressionConfig':
        """Inverse of :meth:`to_dict`; also takes a hand-written dict such as
        ``dict(level='L3', bits=3)`` (the fields given are then the explicit ones).

        A ``to_dict`` result comes back equal, with the same ``explicit_fields``, even if the
        level's defaults have changed since: its settings are restored as stored.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f'CompressionConfig.from_dict needs a mapping, got '
                             f'{type(data).__name__}')
        data = dict(data)
        version = data.pop('version', DICT_VERSION)
        if not isinstance(version, int) or not 1 <= version <= DICT_VERSION:
            raise ValueError(f'CompressionConfig dict version {version!r} is not supported '
                             f'(this actnn_mm reads versions 1..{DICT_VERSION})')
        explicit = data.pop('explicit', None)
        cls._check_names(data, 'key(s)')
        config = cls(**data)
        if explicit is not None:
            explicit = frozenset(explicit)
            if not explicit <= set(LEVEL_FIELDS):
                raise ValueError(f'CompressionConfig dict: explicit must name fields of '
                                 f'{list(LEVEL_FIELDS)}, got {sorted(explicit)}')
            object.__setattr__(config, '_explicit', explicit)
        return config

    def uniform_bits(self) -> int:
        return int(self.bits)


_DEFAULT_LOCK = threading.Lock()
_DEFAULT: Optional[CompressionConfig] = None


def get_default_config() -> CompressionConfig:
    """The process default (L3 unless ``set_default_config`` changed it)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = CompressionConfig()
        return _DEFAULT


def set_default_config(config: Union[CompressionConfig, str]) -> CompressionConfig:
    """Set the process default from a config or a level name; returns it."""
    global _DEFAULT
    if isinstance(config, str):
        config = CompressionConfig.from_level(config)
    if not isinstance(config, CompressionConfig):
        raise ValueError(f'config must be a CompressionConfig or a level in {LEVELS}, '
                         f'got {config!r}')
    with _DEFAULT_LOCK:
        _DEFAULT = config
    return config
