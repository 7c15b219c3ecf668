"""Compress every activation autograd saves, through ``torch.autograd.graph.saved_tensors_hooks``.

Q-layers cover the modules they replace; functional calls (``F.relu`` in a head's ``forward``),
attention matmuls, softmax, residual adds and whole transformer blocks are reachable only here.
Inside :class:`compress_saved_tensors` every floating tensor autograd saves is compressed with the
same engine and config as the Q-layers, except

* parameters and buffers (and casts/views of them: autocast copies of weights),
* tensors below ``config.min_numel`` elements, non-floating and non-strided tensors,
* tensors a Q-layer already saved: the copy it made is reused, never compressed twice; a tensor
  saved by several ops is compressed once (a per-tensor cache keyed by storage, geometry and
  version, whose entries die with the tensor).

Only tensors that require grad are compressed: what autograd saves without grad is data that
ops may need exact (an input image, RoI boxes for RoIAlign, sampling grids, masks, noise).

A ReLU (``F.relu``, ``torch.relu_``, an unconverted ``nn.ReLU``) saves its output only to test
``output <= 0`` in backward: its own save becomes an exact 1-bit mask (quantizing it would flip
small positives to zero and bias the gradient); later savers of that output compress it as usual.

Usage::

    ctx = compress_saved_tensors(CompressionConfig.from_level('L3'))
    with ctx:                       # keep ``ctx``: per-site statistics persist across iterations
        loss = model(x).sum()
    loss.backward()

:func:`install` makes a module enter the context around its own forward (what
:func:`actnn_mm.convert` does by default).
"""
from __future__ import annotations

import threading
import weakref
from contextlib import ContextDecorator
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from . import memory
from .engine import CompressionConfig, LayerScheme, get_default_config

__all__ = ['compress_saved_tensors', 'install', 'uninstall', 'installed', 'keep_exact', 'share',
           'is_param_like', 'sample_view', 'Saved', 'EXACT']

#: Cache value meaning "a layer keeps this tensor exact": later savers reuse it for free.
EXACT = object()

_VIEW_LIKE = frozenset({
    'TBackward', 'ViewBackward', 'ToCopyBackward', 'TransposeBackward', 'PermuteBackward',
    'ExpandBackward', 'UnsafeViewBackward', 'AliasBackward', 'SliceBackward', 'SelectBackward',
    'UnsqueezeBackward', 'SqueezeBackward', 'CloneBackward', 'AsStridedBackward',
    'ReshapeAliasBackward', 'DetachBackward', 'ConjBackward', 'NegViewBackward'
})


def _storage_ptr(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return -1


def _key(t: Tensor) -> Tuple:
    return (_storage_ptr(t), t.device, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype,
            t._version)


class _ShareCache:
    """tensor -> what was kept of it, for as long as sharing it is valid and useful.

    The key holds the storage address, geometry and version counter; an entry is valid while
    its *anchor* (the tensor, or the base it views) lives, so the address cannot have been
    reused, and while its *holder* lives: the compressed object itself, or the autograd node that
    keeps the tensor exact. Once the graph that kept it is freed (after backward) the entry is
    gone: the next iteration compresses afresh even when the input tensor is the same object.
    """

    def __init__(self) -> None:
        self._entries: Dict[Tuple, Tuple[weakref.ref, Optional[weakref.ref], Any]] = {}
        self._lock = threading.Lock()

    def get(self, t: Tensor) -> Any:
        entry = self._entries.get(_key(t))
        if entry is None or entry[0]() is None:
            return None
        if entry[1] is not None:
            holder = entry[1]()
            if holder is None:
                return None
            return holder if entry[2] is None else entry[2]
        return entry[2]

    def put(self, t: Tensor, value: Any = None, holder: Any = None) -> None:
        """Share ``value`` (or, when None, ``holder`` itself) while ``t`` and ``holder`` live."""
        key = _key(t)
        entries, lock = self._entries, self._lock

        def drop(ref: weakref.ref, key: Tuple = key) -> None:
            with lock:
                current = entries.get(key)
                if current is not None and ref in (current[0], current[1]):
                    del entries[key]

        # A view made inside an op (matmul's flattening reshape) dies right after being saved:
        # anchor the entry to its base, which lives as long as the memory can be shared.
        anchor = t._base if t._base is not None else t
        holder_ref = weakref.ref(holder, drop) if holder is not None else None
        with lock:
            entries[key] = (weakref.ref(anchor, drop), holder_ref, value)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Saved:
    """A compressed tensor as kept for backward: the engine object, the scheme that made it (its
    ``decompress`` is the inverse) and, when it was compressed as a reshaped view, the shape."""

    __slots__ = ('packed', 'scheme', 'shape', '__weakref__')

    def __init__(self, packed: Any, scheme: Any, shape: Optional[torch.Size] = None) -> None:
        self.packed, self.scheme, self.shape = packed, scheme, shape

    def unpack(self) -> Tensor:
        out = self.scheme.decompress(self.packed)
        return out if self.shape is None else out.reshape(self.shape)


#: A sample (dim 0) holding fewer features than this is regrouped with the others: tensors that
#: matmul/linear save as flattened token matrices ``(B*L, C)`` would otherwise pad every row of
#: ``C < group_size`` features to a whole group and pay its metadata.
MIN_SAMPLE_FEATURES = 1024


def sample_view(t: Tensor) -> Tensor:
    """``t`` as the engine should see it: samples along dim 0, or one sample when rows are small."""
    if t.dim() >= 2 and t.shape[0] > 1 and t.numel() // t.shape[0] < MIN_SAMPLE_FEATURES:
        return t.reshape(1, -1)
    return t


_CACHE = _ShareCache()
#: ReLU outputs whose own save (the first one) was already turned into a mask.
_RELU_DONE = _ShareCache()


def share(x: Tensor, scheme: Any, exact: Optional[bool] = None, owner: Any = None,
          regroup: bool = False) -> Any:
    """Keep ``x`` for backward once, however many savers of the same graph ask for it.

    Returns ``x`` (keep it exact: ``save_for_backward`` it) or a :class:`Saved` (``.unpack()`` in
    backward). ``scheme.compress(x)`` runs only when no live saver kept ``x``. A saver that must
    stay exact (``exact=True``; ``owner``: its autograd ctx, which bounds the sharing) keeps ``x``
    and later savers reuse it; one that would compress reuses an exact ``x`` kept by another
    saver (that costs no memory) or the compressed copy another saver made.
    """
    if exact:
        if owner is not None:
            _CACHE.put(x, EXACT, holder=owner)
        return x
    hit = _CACHE.get(x)
    if hit is EXACT:
        return x
    if hit is not None:
        return hit
    view = sample_view(x) if regroup else x
    packed = scheme.compress(view)
    if packed is view:
        if owner is not None:
            _CACHE.put(x, EXACT, holder=owner)
        return x
    saved = Saved(packed, scheme, None if view is x else x.shape)
    _CACHE.put(x, holder=saved)
    return saved


def param_storages(modules: Optional[List[nn.Module]]) -> Set[int]:
    """Storage addresses of the parameters and buffers of ``modules``."""
    ptrs: Set[int] = set()
    for m in modules or ():
        for t in list(m.parameters()) + list(m.buffers()):
            ptrs.add(_storage_ptr(t))
    ptrs.discard(-1)
    ptrs.discard(0)
    return ptrs


def is_param_like(t: Tensor, storages: Optional[Set[int]] = None) -> bool:
    """Whether ``t`` is a parameter or buffer, or a view/cast of a parameter (autocast copies).

    Parameters are ``nn.Parameter`` objects or live in ``storages`` (the model's parameter and
    buffer storages: frozen weights and buffers too); other leaves (inputs) are data.
    """
    if isinstance(t, nn.Parameter):
        return True
    if storages and _storage_ptr(t) in storages:
        return True
    if t.is_leaf:
        return False
    fn, depth = t.grad_fn, 0
    while fn is not None and depth < 8:
        name = type(fn).__name__
        if name == 'AccumulateGrad':
            return is_param_like(fn.variable, storages)
        if name.rstrip('0123456789') not in _VIEW_LIKE:
            return False
        nxt = [f for f, _ in fn.next_functions if f is not None]
        if len(nxt) != 1:
            return False
        fn, depth = nxt[0], depth + 1
    return False


class _ReluMask:
    """A ReLU's saved output as a 1-bit mask; unpacks to 0/1 in the output's dtype, which is all
    ``threshold_backward(grad, output, 0)`` reads."""

    __slots__ = ('mask', 'dtype')

    def __init__(self, mask: Any, dtype: torch.dtype) -> None:
        self.mask, self.dtype = mask, dtype

    def unpack(self) -> Tensor:
        from .engine import unpack_mask
        return unpack_mask(self.mask).to(self.dtype)


def _is_relu_own_save(t: Tensor) -> bool:
    fn = t.grad_fn
    if fn is None or type(fn).__name__ != 'ReluBackward0' or _RELU_DONE.get(t) is not None:
        return False
    _RELU_DONE.put(t, True)
    return True


class compress_saved_tensors(ContextDecorator):
    """Context (and decorator) compressing what autograd saves inside it. See module docstring.

    Args:
        config: compression config; default: the process default at each entry.
        modules: modules whose parameters and buffers are never compressed (parameters and their
            views/casts are recognised anyway; this also covers frozen weights and buffers).
        min_numel: override ``config.min_numel`` (tensors smaller than this stay exact).
        allocator: a :class:`~actnn_mm.engine.BitAllocator` (same config) the per-site schemes
            register with, for cross-layer bit allocation.
    """

    def __init__(self, config: Optional[CompressionConfig] = None, *,
                 modules: Optional[List[nn.Module]] = None,
                 min_numel: Optional[int] = None, allocator: Optional[Any] = None) -> None:
        self.config = config
        self.min_numel = min_numel
        self.allocator = allocator
        self._modules = list(modules) if modules is not None else None
        self._schemes: Dict[Tuple[int, Any], LayerScheme] = {}
        self._local = threading.local()

    # -- pickling / deepcopy (contexts ride along in module hooks) -----------------------------
    def __getstate__(self) -> Dict[str, Any]:
        return {'config': self.config, 'min_numel': self.min_numel}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state['config'], min_numel=state['min_numel'])

    # -- context protocol ---------------------------------------------------------------------
    def current_config(self) -> CompressionConfig:
        return self.config if self.config is not None else get_default_config()

    @property
    def active(self) -> bool:
        return getattr(self._local, 'depth', 0) > 0

    def __enter__(self) -> 'compress_saved_tensors':
        self.enter(self._modules)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()

    def enter(self, modules: Optional[List[nn.Module]] = None) -> None:
        local = self._local
        depth = getattr(local, 'depth', 0)
        if depth == 0:
            cfg = self.current_config()
            local.cfg = cfg
            local.min_numel = self.min_numel if self.min_numel is not None else \
                getattr(cfg, 'min_numel', 1)
            local.storages = param_storages(modules)
            local.site = 0
            local.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            local.hooks.__enter__()
        local.depth = depth + 1

    def exit(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            hooks, local.hooks = local.hooks, None
            local.storages = None
            hooks.__exit__(None, None, None)

    # -- hooks --------------------------------------------------------------------------------
    def _eligible(self, t: Tensor) -> bool:
        local = self._local
        # Only differentiable activations: a saved tensor that does not require grad is data
        # (an input image, RoI boxes, sampling grids, masks, noise) that ops may need exact.
        return (t.requires_grad and t.layout == torch.strided and t.is_floating_point()
                and t.device.type != 'meta' and t.numel() >= local.min_numel
                and not is_param_like(t, local.storages))

    def _scheme(self) -> LayerScheme:
        """One scheme per saving site (the n-th tensor saved in this forward), per config."""
        local = self._local
        site = local.site
        local.site += 1
        key = (site, id(local.cfg))
        scheme = self._schemes.get(key)
        if scheme is None or scheme.config is not local.cfg:
            alloc = self.allocator
            if alloc is not None and getattr(alloc, 'config', None) is not local.cfg:
                alloc = None
            scheme = LayerScheme(local.cfg, kind='generic', name=f'saved[{site}]',
                                 allocator=alloc)
            self._schemes[key] = scheme
        return scheme

    def _pack(self, t: Tensor) -> Any:
        if getattr(_EXACT, 'depth', 0) > 0:  # inside a module the level keeps exact (L1 norms)
            if not is_param_like(t, self._local.storages):
                memory.record(t)
            return t
        if t.layout == torch.strided and t.is_floating_point() and _is_relu_own_save(t):
            from .engine import pack_mask
            mask = pack_mask(t != 0)  # != 0: NaN outputs pass the gradient, as in torch
            memory.record(mask)
            return _ReluMask(mask, t.dtype)
        if not self._eligible(t):
            if not is_param_like(t, self._local.storages):
                memory.record(t)
            return t
        hit = _CACHE.get(t)
        if hit is EXACT:
            memory.record(t)
            return t
        if hit is not None:
            memory.record(hit.packed)
            return hit
        scheme = self._scheme()
        view = sample_view(t)
        packed = scheme.compress(view)
        if packed is view:  # not worth compressing: kept as it is
            memory.record(t)
            return t
        saved = Saved(packed, scheme, None if view is t else t.shape)
        _CACHE.put(t, holder=saved)
        memory.record(packed)
        return saved

    @staticmethod
    def _unpack(saved: Any) -> Tensor:
        if isinstance(saved, _ReluMask):
            return saved.unpack()
        if isinstance(saved, Saved):
            return saved.unpack()
        return saved


# ---------------------------------------------------------------------------------------------
# Installing the context around a module's forward

def _eager(fn: Any) -> Any:
    """A forward (pre-)hook run eagerly under ``torch.compile``: entering and leaving the
    context (thread-local state, saved-tensor hooks) happens at run time, between the compiled
    graphs, whose saved tensors then go through the pack hook like eager ones."""
    return torch.compiler.disable(fn, recursive=True)


class _EnterHook:
    """Forward pre-hook: enter the context when this forward will save tensors."""

    def __init__(self, ctx: compress_saved_tensors) -> None:
        self.ctx = ctx
        self.entered = threading.local()

    def __getstate__(self) -> Dict[str, Any]:
        return {'ctx': self.ctx}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state['ctx'])

    def _stack(self) -> List[bool]:
        stack = getattr(self.entered, 'stack', None)
        if stack is None:
            stack = self.entered.stack = []
        return stack

    @_eager
    def __call__(self, module: nn.Module, args: Any) -> None:
        enter = module.training and torch.is_grad_enabled()
        if enter:
            self.ctx.enter([module])
        self._stack().append(enter)


class _ExitHook:
    """Forward hook (``always_call``): leave the context entered by the matching pre-hook."""

    def __init__(self, enter_hook: _EnterHook) -> None:
        self.enter_hook = enter_hook

    @_eager
    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self.enter_hook._stack()
        if stack and stack.pop():
            self.enter_hook.ctx.exit()


_EXACT = threading.local()


class _ExactEnter:
    """Forward pre-hook of a module whose saved tensors must stay exact."""

    @_eager
    def __call__(self, module: nn.Module, args: Any) -> None:
        _EXACT.depth = getattr(_EXACT, 'depth', 0) + 1


class _ExactExit:
    """Forward hook (``always_call``) closing :class:`_ExactEnter`."""

    @_eager
    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        _EXACT.depth = max(0, getattr(_EXACT, 'depth', 0) - 1)


def keep_exact(module: nn.Module) -> None:
    """Let saved-tensor compression leave alone what ``module``'s forward saves (e.g. the norm
    layers a level keeps exact: L1). Idempotent; :func:`uninstall` removes it."""
    if any(isinstance(h, _ExactEnter) for h in module._forward_pre_hooks.values()):
        return
    module.register_forward_pre_hook(_ExactEnter())
    module.register_forward_hook(_ExactExit(), always_call=True)


def install(module: nn.Module, config: Optional[CompressionConfig] = None,
            allocator: Optional[Any] = None) -> compress_saved_tensors:
    """Run ``module``'s forward inside :class:`compress_saved_tensors` (training + grad only).

    Idempotent: a module that has it keeps its context (returned). Nothing is added to the
    module's parameters, buffers or ``state_dict``; :func:`uninstall` removes it. The hooks are
    plain picklable objects, so ``copy.deepcopy`` (MoCo's key encoder) and ``torch.save`` work.
    """
    ctx = installed(module)
    if ctx is not None:
        return ctx
    ctx = compress_saved_tensors(config, allocator=allocator)
    enter = _EnterHook(ctx)
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(_ExitHook(enter), always_call=True)
    return ctx


def uninstall(module: nn.Module) -> bool:
    """Undo :func:`install` and :func:`keep_exact`; returns whether something was installed."""
    found = False
    ours = (_EnterHook, _ExitHook, _ExactEnter, _ExactExit)
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for hid in [k for k, h in hooks.items() if isinstance(h, ours)]:
            del hooks[hid]
            getattr(module, '_forward_hooks_always_called', {}).pop(hid, None)
            found = True
    return found


def installed(module: nn.Module) -> Optional[compress_saved_tensors]:
    """The context installed on ``module``, if any."""
    for h in module._forward_pre_hooks.values():
        if isinstance(h, _EnterHook):
            return h.ctx
    return None
