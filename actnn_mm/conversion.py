"""Convert a model in place to Q-layers (and saved-tensor compression), report, and revert.

Conversion swaps each supported module's ``__class__`` to its Q twin, so the module keeps the very
same Parameter and buffer objects, ``state_dict`` keys and buffer order: an optimizer or DDP built
before stays valid, ``.cuda()`` before or after both work, checkpoints load into either form, and
MoCo's EMA (buffers paired by position) is unaffected. Only plain attributes are added
(``actnn_config``, ``actnn_name``, the scheme, and for mmcv wrappers the original class).

:func:`convert` returns a :class:`Conversion`: the report of what changed and the handle that
owns the model's bit allocator. The allocator steps itself at the end of every training backward
through the model (``BitAllocator.step_at_end_of_backward``), so cross-layer mixed precision
needs no call from the training loop.

Example::

    >>> conversion = convert(model, config=CompressionConfig.from_level('L3'))
    >>> print(conversion)
    >>> model(x).sum().backward()      # steps conversion.allocator
    >>> conversion.revert()
"""
from __future__ import annotations

import fnmatch
import inspect
import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

from torch import nn

from .engine import BitAllocator, CompressionConfig, get_default_config
from .forward_context import install, installed, uninstall
from .keep_exact import keep_exact
from .layers import NORM_LAYERS, QLAYERS, QLAYERS_BY_NAME, TWINS

__all__ = ['convert', 'revert', 'is_converted', 'get_allocator', 'q_modules', 'Conversion',
           'ConversionReport', 'Filter']

Filter = Union[str, Type[nn.Module], Callable[[str, nn.Module], bool],
               Sequence[Union[str, Type[nn.Module], Callable[[str, nn.Module], bool]]]]

#: Subclasses of torch layers known to compute exactly like their base, converted like the base
#: (original class remembered for revert): mmcv's wrappers (empty-tensor handling for torch < 1.5
#: only) and mmengine's SyncBatchNorm, what mmcv builds for ``SyncBN`` (a parrots-only check).
_SAFE_SUBCLASS_MODULES = ('mmcv.cnn.bricks.wrappers', 'mmengine.utils.dl_utils.parrots_wrapper')

#: model -> the BitAllocator its conversion made (kept outside the module: not pickled).
_MODEL_ALLOCATORS: 'weakref.WeakKeyDictionary[nn.Module, BitAllocator]' = \
    weakref.WeakKeyDictionary()

#: Modules that hold no activations worth reporting when left alone.
_SILENT = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Sequential, nn.ModuleList, nn.ModuleDict)

#: Functional calls whose saved tensors the saved-tensor path compresses (reported by name).
_FUNCTIONAL_RE = re.compile(
    r'\b(?:F|functional|torch|nn\.functional)\.(relu|relu_|leaky_relu|gelu|silu|sigmoid|tanh|'
    r'softmax|log_softmax|max_pool[123]d|avg_pool[123]d|adaptive_avg_pool[123]d|'
    r'adaptive_max_pool[123]d|dropout|dropout2d|interpolate|layer_norm|group_norm|batch_norm|'
    r'linear|conv[123]d|conv_transpose[123]d|matmul|bmm|einsum|scaled_dot_product_attention|'
    r'hardswish|hardsigmoid|mish|elu|normalize|grid_sample|roi_align)\s*\(')


@dataclass
class ConversionReport:
    """What :func:`convert` did: converted modules, modules left (with why), functional calls."""

    level: str
    saved_tensors: bool
    converted: List[Tuple[str, str, str]] = field(default_factory=list)  # name, from, to
    already: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)  # name, type, reason
    functional: List[str] = field(default_factory=list)

    @property
    def num_converted(self) -> int:
        return len(self.converted)

    def converted_types(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for _, src, dst in self.converted:
            key = f'{src} -> {dst}'
            counts[key] = counts.get(key, 0) + 1
        return counts

    def skipped_reasons(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for _, typ, reason in self.skipped:
            key = f'{typ}: {reason}'
            counts[key] = counts.get(key, 0) + 1
        return counts

    def __str__(self) -> str:
        lines = [f'actnn_mm conversion (level {self.level}, saved-tensor compression '
                 f'{"on" if self.saved_tensors else "off"}): {self.num_converted} converted, '
                 f'{len(self.already)} already Q-layers, {len(self.skipped)} left']
        for key, n in sorted(self.converted_types().items()):
            lines.append(f'  converted {n:4d} x {key}')
        for key, n in sorted(self.skipped_reasons().items()):
            lines.append(f'  left      {n:4d} x {key}')
        for note in self.functional:
            lines.append(f'  {note}')
        return '\n'.join(lines)


@dataclass
class Conversion(ConversionReport):
    """What :func:`convert` returns: its report, and the owner of the model's bit allocator.

    ``allocator`` is stepped by every training backward through the converted model (nothing to
    call per iteration); ``state_dict``/``load_state_dict`` carry the config and the allocator's
    solved bits through a checkpoint; ``revert()`` undoes the conversion.
    """

    config: Optional[CompressionConfig] = None
    allocator: Optional[BitAllocator] = None
    model: Optional[nn.Module] = field(default=None, repr=False, compare=False)

    def revert(self) -> int:
        """:func:`revert` the converted model; how many modules were reverted."""
        if self.model is None:
            raise RuntimeError('this Conversion has no model to revert (already reverted?)')
        model, self.model = self.model, None
        return revert(model)

    def state_dict(self) -> dict:
        """The config (``CompressionConfig.to_dict``) and the allocator's state."""
        return {'config': self.config.to_dict(), 'allocator': self.allocator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another config is refused, naming the
        fields that differ (its solved bits would not apply)."""
        saved = CompressionConfig.from_dict(state['config'])
        if saved != self.config:
            raise ValueError(f'checkpoint holds ActNN config {config_diff(saved, self.config)}; '
                             'convert with that config to load its bit allocation')
        self.allocator.load_state_dict(state.get('allocator', {}))


def config_diff(saved: CompressionConfig, current: CompressionConfig) -> str:
    """``'bits=3 (now 2), ...'``: the fields in which ``saved`` differs from ``current``."""
    diffs = [f'{n}={getattr(saved, n)!r} (now {getattr(current, n)!r})'
             for n in CompressionConfig.field_names() if getattr(saved, n) != getattr(current, n)]
    return ', '.join(diffs) or 'the same settings'


def _as_filters(spec: Optional[Filter]) -> Optional[List]:
    if spec is None:
        return None
    if isinstance(spec, (str, type)) or callable(spec) and not isinstance(spec, (list, tuple)):
        return [spec]
    return list(spec)


def _matches(filters: List, name: str, module: nn.Module) -> bool:
    for f in filters:
        if isinstance(f, str):
            if fnmatch.fnmatchcase(name, f):
                return True
        elif isinstance(f, type):
            if isinstance(module, f):
                return True
        elif f(name, module):
            return True
    return False


def _q_class_for(module: nn.Module) -> Tuple[Optional[type], str]:
    """(Q class, '') when ``module`` can be converted, else (None, why not)."""
    cls = type(module)
    if cls in QLAYERS:
        return QLAYERS[cls], ''
    by_name = QLAYERS_BY_NAME.get(f'{cls.__module__}.{cls.__qualname__}')
    if by_name is not None:
        return by_name, ''
    for base in cls.__mro__[1:]:
        if base in QLAYERS:
            if cls.__module__.startswith(_SAFE_SUBCLASS_MODULES):
                return QLAYERS[base], ''
            return None, f'subclass of nn.{base.__name__} with its own code'
    return None, 'no Q-layer for this type'


def _covered(saved_tensors: bool) -> str:
    return 'covered by saved-tensor compression' if saved_tensors else \
        'not compressed (saved-tensor compression off)'


def _functional_calls(model: nn.Module, saved_tensors: bool) -> List[str]:
    """Functional calls in the model's own classes (torch's and ours excluded), by method."""
    notes, seen = [], set()
    for m in model.modules():
        cls = type(m)
        if cls in seen or cls.__module__.startswith(('torch.', 'actnn_mm.')):
            continue
        seen.add(cls)
        for attr, fn in vars(cls).items():
            if not inspect.isfunction(fn):
                continue
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            names = sorted(set(_FUNCTIONAL_RE.findall(src)))
            for op in names:
                notes.append(f'functional {op} in {cls.__name__}.{attr}: '
                             f'{_covered(saved_tensors)}')
    return notes


def convert(model: nn.Module, config: Union[CompressionConfig, str, None] = None, *,
            include: Optional[Filter] = None, exclude: Optional[Filter] = None,
            saved_tensors: bool = True,
            allocator: Optional[BitAllocator] = None) -> Conversion:
    """Swap supported modules of ``model`` to Q-layers in place; return the :class:`Conversion`.

    Args:
        model: converted in place (parameters, buffers and state_dict keys unchanged).
        config: compression config bound to the converted modules, or a level name
            (``'L3'``); default: the process default. Its level decides what converts: norms
            stay exact where the level does not compress them (L1).
        include / exclude: module-name glob(s) (``'backbone.*'``), module type(s), or
            ``fn(name, module) -> bool``; ``include`` limits conversion to matches, ``exclude``
            removes matches.
        saved_tensors: also compress, through saved-tensor hooks around ``model``'s forward,
            every other activation autograd saves (functional calls, attention, ...).
        allocator: the :class:`~actnn_mm.engine.BitAllocator` (same ``config``) the layers'
            schemes register with, to share one across several converted parts; default: the
            model's own (made on first conversion, see :func:`get_allocator`). Either way every
            training backward through ``model`` steps it once: never call ``step()`` yourself.

    Converting twice is a no-op; unsupported modules are reported, never an error. Q-layers
    built directly (e.g. from ``conv_cfg=dict(type='QConv2d')``) that have no config yet adopt
    ``config`` and the model's bit allocator.
    """
    cfg = config if config is not None else get_default_config()
    if isinstance(cfg, str):
        cfg = CompressionConfig.from_level(cfg)
    if not isinstance(cfg, CompressionConfig):
        raise ValueError(f'convert: config must be a CompressionConfig or a level name, got '
                         f'{type(cfg).__name__}')
    level = cfg.level
    if allocator is not None:
        if not isinstance(allocator, BitAllocator) or allocator.config != cfg:
            raise ValueError(f'convert: allocator must be a BitAllocator of the same config '
                             f'({cfg}), got {allocator!r}')
    else:
        allocator = get_allocator(model)
        if allocator is None or allocator.config != cfg:  # first conversion, or a new config
            allocator = BitAllocator(cfg)
    report = Conversion(level=level, saved_tensors=saved_tensors, config=cfg,
                        allocator=allocator, model=model)
    inc, exc = _as_filters(include), _as_filters(exclude)
    for name, module in model.named_modules():
        cls = type(module)
        if cls in TWINS:
            report.already.append(name)
            if 'actnn_config' not in module.__dict__:  # built as a Q-layer (e.g. via MODELS)
                module.__dict__['actnn_config'] = cfg
                module.__dict__['actnn_name'] = name
                module.__dict__['actnn_allocator'] = allocator
                module.__dict__.pop('actnn_scheme', None)
            continue
        q_cls, why = _q_class_for(module)
        if q_cls is None:
            leaf = next(module.children(), None) is None
            own_params = next(module.parameters(recurse=False), None) is not None
            if isinstance(module, _SILENT) or not (leaf or own_params):
                continue
            report.skipped.append((name, cls.__name__, f'{why}: {_covered(saved_tensors)}'))
            continue
        if inc is not None and not _matches(inc, name, module) or \
                exc is not None and _matches(exc, name, module):
            report.skipped.append((name, cls.__name__, 'excluded by include/exclude: ' +
                                   _covered(saved_tensors)))
            continue
        if q_cls in NORM_LAYERS and cfg.enabled and not cfg.compress_norm:
            report.skipped.append((name, cls.__name__, f'level {level} keeps normalization '
                                   'exact'))
            keep_exact(module)  # and saved-tensor compression must not compress it either
            continue
        if cls is not TWINS[q_cls]:
            module.__dict__['_actnn_orig_class'] = cls
        module.__class__ = q_cls
        module.__dict__['actnn_config'] = cfg
        module.__dict__['actnn_name'] = name
        module.__dict__['actnn_allocator'] = allocator
        module.__dict__.pop('actnn_scheme', None)
        report.converted.append((name, cls.__name__, q_cls.__name__))
    _MODEL_ALLOCATORS[model] = allocator
    if saved_tensors:
        install(model, cfg, allocator=allocator)
    report.functional = _functional_calls(model, saved_tensors)
    return report


def revert(model: nn.Module) -> int:
    """Turn every Q-layer of ``model`` back into its torch class (or original mmcv wrapper) and
    remove saved-tensor compression; returns how many modules were reverted."""
    n = 0
    for module in model.modules():
        uninstall(module)
        q_cls = type(module)
        if q_cls not in TWINS:
            continue
        orig = module.__dict__.pop('_actnn_orig_class', None) or TWINS[q_cls]
        module.__class__ = orig
        for attr in ('actnn_config', 'actnn_scheme', 'actnn_name', 'actnn_allocator'):
            module.__dict__.pop(attr, None)
        n += 1
    _MODEL_ALLOCATORS.pop(model, None)
    return n


def get_allocator(model: nn.Module) -> Optional[BitAllocator]:
    """The :class:`~actnn_mm.engine.BitAllocator` :func:`convert` gave ``model`` (stepped by
    every training backward through it), or None."""
    return _MODEL_ALLOCATORS.get(model)


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` has Q-layers or saved-tensor compression installed."""
    return any(type(m) in TWINS or installed(m) is not None for m in model.modules())


def q_modules(model: nn.Module) -> Iterable[Tuple[str, nn.Module]]:
    """(name, module) of the Q-layers in ``model``."""
    return ((n, m) for n, m in model.named_modules() if type(m) in TWINS)
