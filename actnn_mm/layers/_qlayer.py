"""Plumbing shared by the Q-layers: when to compress, per-module schemes, AMP-aware Functions.

A Q-layer runs its compressing :class:`torch.autograd.Function` only when autograd will keep
something for backward (training mode, grad enabled, some input or parameter requiring grad);
otherwise it calls its torch twin's ``forward`` unchanged, so ``eval()``/``no_grad`` cost nothing.

Under ``torch.compile`` the Q-layers' forwards run eagerly (:func:`eager_forward`): dynamo
breaks the graph around each one, compiles the code between them, and the Q-layer compresses
exactly as without compile. Tracing one (they hold Python state: schemes, bit allocation,
random offsets) would otherwise have to fall back to the uncompressed twin: a silent no-op.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Dict, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .. import saved_bytes, share_cache
from ..engine import CompressionConfig, LayerScheme, get_default_config

__all__ = ['AmpFunction', 'owned_output', 'compress_active', 'eager_forward', 'inplace_on_leaf',
           'outside_saved_tensor_mode', 'run_twin', 'SUSPEND_IN_QLAYERS',
           'get_scheme', 'save_input', 'load_input', 'pack_activation', 'unpack_activation',
           'autocast_dtype', 'cast_for_autocast', 'suggest_memory_format', 'q_getstate']

#: Attributes a Q-layer may carry besides its twin's: plain attributes, never parameters or
#: buffers, so ``state_dict``, ``named_buffers`` order and optimizer state are untouched.
QATTRS = ('actnn_config', 'actnn_scheme', 'actnn_name', 'actnn_allocator', '_actnn_orig_class')
#: Of those, the run-time state: not pickled nor deep-copied (the engine's scheme and allocator
#: hold device statistics and weak references); a copy builds fresh ones on its first forward.
RUNTIME_ATTRS = ('actnn_scheme', 'actnn_allocator')


def q_getstate(self: nn.Module) -> Dict[str, Any]:
    """``__getstate__`` of the Q-layers: the twin's state without :data:`RUNTIME_ATTRS`."""
    state = dict(nn.Module.__getstate__(self))
    for attr in RUNTIME_ATTRS:
        state.pop(attr, None)
    return state


def eager_forward(fn: Any) -> Any:
    """``fn`` run eagerly inside ``torch.compile`` (a graph break around it), as is outside."""
    return torch.compiler.disable(fn, recursive=True)


#: Marks a TorchFunctionMode that Q-layer forwards step out of (set by
#: :class:`actnn_mm.compress_saved_tensors` on its mode). Such a mode steers what *autograd*
#: saves; a Q path saves through its own Function, so it has nothing to steer there, while every
#: tensor method and property the Q path touches would otherwise be a Python call into it.
SUSPEND_IN_QLAYERS = 'actnn_suspend_in_qlayers'

_suspended = threading.local()


def _pop_suspendable_mode() -> Any:
    """Pop the innermost torch-function mode if it is one to step out of, else None."""
    n = torch._C._len_torch_function_stack()
    if n == 0 or not getattr(torch._C._get_function_stack_at(n - 1), SUSPEND_IN_QLAYERS, False):
        return None
    return torch._C._pop_torch_function_stack()


def outside_saved_tensor_mode(fn: Any) -> Any:
    """A Q-layer ``forward`` run without the saved-tensor mode (see :data:`SUSPEND_IN_QLAYERS`);
    its twin fallbacks go through :func:`run_twin`, which restores the mode for them."""
    @functools.wraps(fn)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        mode = _pop_suspendable_mode()
        if mode is None:
            return fn(self, *args, **kwargs)
        previous = getattr(_suspended, 'mode', None)
        _suspended.mode = mode
        try:
            return fn(self, *args, **kwargs)
        finally:
            _suspended.mode = previous
            torch._C._push_on_torch_function_stack(mode)

    return forward


def run_twin(fn: Any, *args: Any) -> Any:
    """Call the torch twin's forward ``fn`` under the mode the Q forward stepped out of: autograd
    saves for the twin, and the mode steers that."""
    mode = getattr(_suspended, 'mode', None)
    if mode is None:
        return fn(*args)
    _suspended.mode = None
    torch._C._push_on_torch_function_stack(mode)
    try:
        return fn(*args)
    finally:
        popped = torch._C._pop_torch_function_stack()
        assert popped is mode, 'torch-function mode stack changed inside a twin forward'
        _suspended.mode = mode


def compress_active(module: nn.Module, *tensors: Optional[Tensor]) -> bool:
    """True when autograd will save tensors of this call, i.e. when compressing them pays.

    Raises when a compressing call is being traced by ``torch.compile``/``torch.export``
    (possible only by calling a Q-layer's internals from traced code: its ``forward`` itself
    runs eagerly): running the twin there would train without compression, silently.
    """
    if not module.training or not torch.is_grad_enabled():
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    active = any(t is not None and t.requires_grad for t in tensors)
    if active and torch.compiler.is_compiling():
        name = module.__dict__.get('actnn_name') or ''
        raise RuntimeError(
            f'actnn_mm: {type(module).__name__} {name!r} is being traced by torch.compile / '
            'torch.export in a training forward; its compression cannot be traced. Call the '
            'module itself (its forward runs eagerly between compiled graphs), or convert the '
            'model back with actnn_mm.revert(model) to compile it whole without ActNN.')
    return active


def inplace_on_leaf(module: nn.Module, x: Tensor) -> bool:
    """An in-place layer fed a leaf that requires grad: the twin raises torch's own error."""
    return bool(getattr(module, 'inplace', False)) and x.is_leaf and x.requires_grad


def module_config(module: nn.Module) -> CompressionConfig:
    """The module's own config (set by :func:`actnn_mm.convert`), else the process default."""
    cfg = module.__dict__.get('actnn_config')
    return cfg if cfg is not None else get_default_config()


def get_scheme(module: nn.Module, kind: str, kernel_area: int = 1, groups: int = 1) -> LayerScheme:
    """The module's :class:`LayerScheme`, rebuilt when its config changes; registered with
    the module's ``actnn_allocator`` (set by :func:`actnn_mm.convert`) for cross-layer bits."""
    cfg = module_config(module)
    scheme = module.__dict__.get('actnn_scheme')
    if getattr(scheme, 'config', None) is cfg:  # the common case: no field comparison
        return scheme
    if scheme is None or getattr(scheme, 'config', None) != cfg:
        name = module.__dict__.get('actnn_name') or type(module).__name__
        allocator = module.__dict__.get('actnn_allocator')
        if allocator is not None and getattr(allocator, 'config', None) != cfg:
            allocator = None
        scheme = LayerScheme(cfg, kind=kind, kernel_area=kernel_area, groups=groups, name=name,
                             allocator=allocator)
        module.__dict__['actnn_scheme'] = scheme
    return scheme


def pack_activation(x: Tensor, scheme: LayerScheme, owner: Any = None,
                    regroup: bool = False, affine: Any = None) -> Any:
    """Compress ``x`` for backward, or reuse the copy another layer already made of it.

    ``affine`` (an :class:`~actnn_mm.engine.compressed.Affine`): compress ``(x - shift) *
    scale`` instead, inside the kernel (a norm layer's normalised input); never shared.

    Returns ``x`` itself when it is to be kept exact (then save it with ``save_for_backward``),
    else a :class:`~actnn_mm.share_cache.Saved` (keep it on ``ctx``; it is reported to the
    saved-bytes counter).
    """
    packed = share_cache.share(x, scheme, exact=scheme_is_exact(scheme, x), owner=owner,
                               regroup=regroup, affine=affine)
    if packed is not x:
        saved_bytes.record(packed.packed)
    return packed


def unpack_activation(packed: Any, exact: Optional[Tensor], scheme: LayerScheme) -> Tensor:
    """Inverse of :func:`pack_activation`: ``exact`` is what ``save_for_backward`` returned."""
    if packed is None:
        return exact
    if isinstance(packed, share_cache.Saved):
        return packed.unpack()
    return scheme.decompress(packed)


def scheme_is_exact(scheme: LayerScheme, x: Tensor) -> Optional[bool]:
    """Whether ``scheme`` keeps ``x`` exact, when the scheme says so without compressing.

    ``None`` means unknown (the scheme decides in ``compress``); used to avoid reusing another
    layer's compressed copy of ``x`` for a layer that must stay exact (L0, or norms at L1).
    """
    if getattr(scheme, 'enabled', True) is False:
        return True
    cfg = getattr(scheme, 'config', None)
    if cfg is None:
        return None
    if getattr(cfg, 'enabled', True) is False or getattr(cfg, 'level', None) == 'L0':
        return True
    if getattr(scheme, 'kind', None) == 'norm' and not getattr(cfg, 'compress_norm', True):
        return True
    return None


def save_input(ctx: Any, x: Tensor, scheme: LayerScheme, needed: bool = True,
               regroup: bool = False, affine: Any = None) -> None:
    """Keep the input ``x`` of a Q Function for backward, compressed unless exact.

    Sets ``ctx.x_exact`` (to pass to ``save_for_backward``, which keeps autograd's version
    checks and lets the saved-tensor hooks see it), ``ctx.packed`` and ``ctx.scheme``. With
    ``needed=False`` (e.g. a frozen weight: its gradient is the only user of ``x``) only the
    geometry is kept. ``regroup``: see :func:`actnn_mm.share_cache.sample_view`.
    ``affine``: see :func:`pack_activation` (the result is x itself when x is kept exact).
    """
    ctx.scheme = scheme
    ctx.x_geom = None
    if not needed:
        ctx.x_exact, ctx.packed = None, None
        ctx.x_geom = (x.shape, x.stride(), x.dtype, x.device)
        return
    packed = pack_activation(x, scheme, owner=ctx, regroup=regroup, affine=affine)
    exact = packed is x
    ctx.x_exact = x if exact else None
    ctx.packed = None if exact else packed


def load_input(ctx: Any, x_exact: Optional[Tensor]) -> Tensor:
    """Inverse of :func:`save_input` (``retain_graph`` backward may call it again).

    Without a kept input an uninitialised tensor of the same geometry stands in: the backward
    ops only read its shape and layout then.
    """
    if ctx.x_geom is not None:
        shape, stride, dtype, device = ctx.x_geom
        return torch.empty_strided(shape, stride, dtype=dtype, device=device)
    return unpack_activation(ctx.packed, x_exact, ctx.scheme)


# ---------------------------------------------------------------------------------------------
# Autocast


def autocast_dtype(device_type: str, policy: str) -> Optional[torch.dtype]:
    """The dtype autocast would run an op of ``policy`` in, or None (run as is).

    ``policy``: 'lower' (conv, linear: autocast's lower-precision list on every device) or
    'fp32' (layer/group norm: autocast's fp32 list on CUDA; CPU autocast leaves them alone).
    """
    if not torch.amp.is_autocast_available(device_type) or \
            not torch.is_autocast_enabled(device_type):
        return None
    if policy == 'lower':
        return torch.get_autocast_dtype(device_type)
    if policy == 'fp32' and device_type != 'cpu':
        return torch.float32
    return None


def cast_for_autocast(policy: str, *tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """Cast floating tensors the way autocast would for an op of ``policy`` (see above).

    Casting outside the Function (autograd records the casts) means the Function sees, compresses
    and saves the tensors in the autocast dtype, and weight gradients flow back in fp32.
    """
    ref = next(t for t in tensors if t is not None)
    dtype = autocast_dtype(ref.device.type, policy)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype
                 else t for t in tensors)


def owned_output(out: Any, inputs: Tuple[Any, ...]) -> Any:
    """``out`` with every tensor that is a view (and not an input returned in place) replaced by
    a non-view alias of the same memory.

    Why: autograd forbids modifying in place a custom Function's output that is a view (the
    view + in-place rewrite would bypass the Function's backward), and ops such as ``F.linear`` on
    a 3-D input return a view of their 2-D result. Models do modify such outputs in place
    (``x += residual``, ``out.mul_(scale)``: DETR's decoder, mmcv's ``FFN``), which the twin
    allows since its output is a fresh autograd result. ``aten._unsafe_view`` is what ATen itself
    uses for this (``matmul``): same memory, same strides, no view relationship.
    """
    def own(t: Any) -> Any:
        if isinstance(t, Tensor) and t._is_view() and not any(t is i for i in inputs):
            return torch.ops.aten._unsafe_view(t, t.size())
        return t

    if isinstance(out, tuple):
        return tuple(own(t) for t in out)
    return own(out)


def _amp_forward(forward: Any, device_type: str) -> Any:
    """``forward`` that records the autocast state it ran under (what ``torch.amp.custom_fwd``
    records, for backward) and whose outputs go through :func:`owned_output`."""
    def wrapped(ctx: Any, *args: Any) -> Any:
        ctx.actnn_amp = (torch.is_autocast_enabled(device_type),
                         torch.get_autocast_dtype(device_type))
        return owned_output(forward(ctx, *args), args)

    wrapped.__name__ = getattr(forward, '__name__', 'forward')
    wrapped.__qualname__ = getattr(forward, '__qualname__', 'forward')
    return wrapped


def _amp_backward(backward: Any, device_type: str) -> Any:
    """``backward`` run under its forward's autocast state, as ``torch.amp.custom_bwd`` runs it;
    no autocast context is entered when that state is already the current one (the common
    case, and a context per backward call is measurable in a training step)."""
    def wrapped(ctx: Any, *grads: Any) -> Any:
        enabled, dtype = ctx.actnn_amp
        if torch.is_autocast_enabled(device_type) == enabled and \
                (not enabled or torch.get_autocast_dtype(device_type) == dtype):
            return backward(ctx, *grads)
        with torch.autocast(device_type=device_type, enabled=enabled, dtype=dtype):
            return backward(ctx, *grads)

    wrapped.__name__ = getattr(backward, '__name__', 'backward')
    wrapped.__qualname__ = getattr(backward, '__qualname__', 'backward')
    return wrapped


class AmpFunction:
    """An autograd Function with ``torch.amp.custom_fwd``/``custom_bwd``'s semantics for the
    input's device (backward under the forward's autocast state).

    The autocast state is per device type; Q-layers run on CPU and
    CUDA alike, so one decorated ``torch.autograd.Function`` is built per device type on first
    use. Subclasses define static ``forward(ctx, x, ...)`` and ``backward(ctx, *grads)`` like a
    Function and call ``Cls.apply(x, ...)``; the first argument's device picks the variant. Its
    outputs are never views (:func:`owned_output`), so they can be modified in place like the
    twin's.
    """

    _variants: Dict[str, Type[torch.autograd.Function]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._variants = {}

    @classmethod
    def variant(cls, device_type: str) -> Type[torch.autograd.Function]:
        fn = cls._variants.get(device_type)
        if fn is None:
            amp_type = device_type if torch.amp.is_autocast_available(device_type) else 'cpu'
            fn = type(cls.__name__, (torch.autograd.Function, ), {
                'forward': staticmethod(_amp_forward(cls.forward, amp_type)),
                'backward': staticmethod(_amp_backward(cls.backward, amp_type)),
                '__module__': cls.__module__,
                '__qualname__': f'{cls.__qualname__}[{device_type}]',
            })
            cls._variants[device_type] = fn
        return fn

    @classmethod
    def apply(cls, x: Tensor, *args: Any) -> Any:
        return cls.variant(x.device.type).apply(x, *args)


def suggest_memory_format(x: Tensor) -> torch.memory_format:
    """Python twin of ATen's ``suggest_memory_format`` for dense tensors."""
    if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
