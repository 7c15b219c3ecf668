"""Compress every activation autograd saves, through ``torch.autograd.graph.saved_tensors_hooks``.

Q-layers cover the modules they replace; functional calls (``F.relu`` in a head's ``forward``),
attention matmuls, softmax, residual adds and whole transformer blocks are reachable only here.
Inside :class:`compress_saved_tensors` every floating tensor autograd saves is compressed with the
same engine and config as the Q-layers, except

* parameters and buffers (and casts/views of them: autocast copies of weights),
* tensors below ``config.min_numel`` elements, non-floating and non-strided tensors,
* tensors a Q-layer already saved: the copy it made is reused, never compressed twice; a tensor
  saved by several ops is compressed once (a per-tensor cache keyed by storage, geometry and
  version, whose entries die with the tensor),
* what ops whose backward divides by a saved value, or takes its log or root, save (divisions,
  ``sqrt``, ``log``, fractional powers, norms, functional normalisation; :data:`EXACT_OPS`):
  quantization error is a fraction of the group's range, which 1/x turns into an unbounded one
  for values near zero (SegNeXt's NMF head, ``coef * num / (den + 1e-6)``, got NaN gradients).
  Functional layer and group norms of an activation are not kept exact but run through the Q
  norms' Functions (:mod:`actnn_mm.functional_norm`), which save the input normalised and
  compressed (a norm scheme per call site, following ``config.compress_norm``). Probability
  losses (``binary_cross_entropy``: its backward divides by ``p * (1 - p)``; YOLACT's mask loss)
  keep their input exact, and so do the other savers of that tensor (a sigmoid's compressed copy
  of ``p`` is given up for the exact one, which costs no more memory).
  ``F.scaled_dot_product_attention`` of activations runs as matmul / softmax / matmul
  (:mod:`actnn_mm.functional_attention`): the fused kernels recompute ``exp(q k^T - lse)`` from
  what they save, which turns rounding into an unbounded factor (for keys so long that the
  probabilities would outweigh it, the fused op runs, its saves exact). ``F.log_softmax`` and
  ``F.cross_entropy`` of activations save the probabilities, compressed at the level's bits,
  instead of the log-probabilities that torch's backward exponentiates
  (:mod:`actnn_mm.functional_loss`; Faster R-CNN's classifier loss).

What gates the gradient elementwise on its way to the input (a sigmoid's or tanh's output, the
operands of a product of two activations: :data:`GATING_OPS`) is compressed with at least
:data:`GATING_BITS` bits, uniform: no reduction averages its rounding error, which enters every
gradient below it (BiSeNetV2's guided aggregation, ``detail * sigmoid(semantic)``, at 2 bits:
gradient error 2.8x the minibatch noise, as the whole semantic branch's gradient passes the
gates; at 8 bits 1.4x, for 1.4% more saved bytes).

Only tensors that require grad are compressed, and the float operands of products
(:data:`PRODUCT_OPS`), which only multiply the other operand's gradient (MoCo's 65536-key
queue, a focal loss's one-hot targets): what other ops save without grad is data that they may
need exact (RoI boxes for RoIAlign, sampling grids, masks, noise).

A ReLU (``F.relu``, ``torch.relu_``, an unconverted ``nn.ReLU``) saves its output only to test
``output <= 0`` in backward: its own save becomes an exact 1-bit mask (quantizing it would flip
small positives to zero and bias the gradient); later savers of that output compress it as usual.

Usage::

    ctx = compress_saved_tensors(CompressionConfig.from_level('L3'))
    with ctx:                       # keep ``ctx``: per-site statistics persist across iterations
        loss = model(x).sum()
    loss.backward()

:func:`actnn_mm.forward_context.install` makes a module enter the context around its own
forward (what :func:`actnn_mm.convert` does by default). The pieces it relies on live beside it:
``param_like`` (what is a parameter), ``share_cache`` (keep a tensor once), ``relu_mask`` (the
ReLU special case), ``keep_exact`` (modules left exact).
"""
from __future__ import annotations

import threading
from contextlib import AbstractContextManager, ContextDecorator, contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import saved_bytes
from .engine import CompressionConfig, LayerScheme, get_default_config
from .functional_attention import (
    ATTENTION_OPS,
    decomposed_attention,
    decomposition_saves_bytes,
    parse_attention_call,
)
from .functional_loss import (
    LOSS_OPS,
    cross_entropy_saving_probs,
    log_softmax_saving_probs,
    parse_cross_entropy_call,
    parse_log_softmax_call,
)
from .functional_norm import ROUTED_NORMS, parse_norm_call, routed_norm
from .keep_exact import exact_reason, exact_scope, in_exact_module
from .param_like import is_param_like, param_storages
from .relu_mask import ReluMask, is_relu_own_save
from .share_cache import CACHE, EXACT, Saved, mark_exact, sample_view

__all__ = ['compress_saved_tensors', 'EXACT_OPS', 'GATING_OPS', 'GATING_BITS']


#: Torch functions (by ``__name__``) whose saved tensors stay exact: their backward divides by
#: a saved value (or its root/norm), takes its log, or normalises with it, so a rounding error
#: that is small next to the group's range becomes unbounded next to a value near zero.
#: (Layer / group norms of an activation go to the Q norms' Functions instead, when compressing.)
EXACT_OPS = frozenset({
    'div', 'div_', 'divide', 'divide_', 'true_divide', 'true_divide_', '__truediv__',
    '__rtruediv__', '__itruediv__', '__div__', '__rdiv__', '__idiv__', 'reciprocal',
    'reciprocal_', 'sqrt', 'sqrt_', 'log', 'log_', 'log1p', 'log1p_', 'log2', 'log10',
    'xlogy', 'atan2', 'asin', 'acos', 'erfinv', 'norm', 'vector_norm', 'matrix_norm', 'std',
    'var', 'std_mean', 'var_mean', 'normalize', 'cosine_similarity', 'pairwise_distance', 'cdist',
    'layer_norm', 'group_norm', 'instance_norm', 'rms_norm', 'local_response_norm',
    'rsqrt', 'rsqrt_', 'logit', 'logit_', 'atanh', 'acosh', 'tan', 'sinc', 'hypot', 'digamma',
    'lgamma', 'polygamma', 'prod', 'cumprod', 'dist', 'pdist', 'renorm',
    'binary_cross_entropy', 'poisson_nll_loss', 'gaussian_nll_loss', 'cosine_embedding_loss',
    'triplet_margin_loss', 'inverse', 'pinverse', 'det', 'logdet', 'slogdet',
    'scaled_dot_product_attention', 'log_softmax', 'cross_entropy', 'logsumexp',
})
#: Ops whose saved tensor multiplies the gradient elementwise on its way to the input: sigmoid /
#: tanh (their output), products (each operand, when both are activations; a parameter operand
#: only feeds its own gradient, a reduction).
#: ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``: DETR's transformer) is one
#: call to the mode, its products of activations (q k^T, attention @ v) and softmax inside it:
#: all it saves counts as gating (DETR, 96 px, batch 2, L3: error / noise 0.87 -> 0.12, saved
#: bytes 12.4 -> 16.3 MiB of 87).
MUL_OPS = frozenset({'mul', 'mul_', 'multiply', 'multiply_', '__mul__', '__rmul__', '__imul__'})
GATING_OPS = frozenset({'sigmoid', 'sigmoid_', 'tanh', 'tanh_', 'multi_head_attention_forward'}
                       | MUL_OPS)
#: Fewest bits (uniform, per tensor) for what :data:`GATING_OPS` save.
GATING_BITS = 8
#: Products: an operand that does not require grad (a float target, a one-hot label map, MoCo's
#: queue of negative keys) is saved only to multiply the other operand's gradient, linearly, so
#: it is compressed too: at the level's bits when that operand is a parameter (the data feeds its
#: gradient, a reduction: an input image for the first conv), else at the gating bits: it acts as
#: an activation gradient's weights, whose rounding no reduction averages (8 mask coefficients at
#: 2 bits: the prototypes' gradient 0.9 of its norm off). Data other ops save (sampling grids,
#: boxes, indices) stays exact.
PRODUCT_OPS = frozenset({
    'matmul', '__matmul__', '__rmatmul__', 'mm', 'bmm', 'einsum', 'linear', 'bilinear',
    'conv1d', 'conv2d', 'conv3d', 'conv_transpose1d', 'conv_transpose2d', 'conv_transpose3d',
    'baddbmm', 'addmm', 'addbmm', 'addmv', 'mv', 'dot', 'inner', 'outer', 'tensordot',
    'binary_cross_entropy_with_logits',  # grad * (sigmoid(x) - t) * w: linear in t and w
}) | MUL_OPS


class _DepthFlag:
    """A thread-local depth counter: ``with flag():`` raises it, ``flag.on`` while inside."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._local, 'depth', 0) > 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self._local.depth = getattr(self._local, 'depth', 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1


_GATING = _DepthFlag()
_PRODUCT = _DepthFlag()  # inside a product: its data operands are compressed
_DATA_GATED = _DepthFlag()  # ... at the gating bits


def _tensor_args(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Tensor]:
    """The tensors among a call's arguments (one level into lists: ``einsum(eq, [a, b])``)."""
    out: List[Tensor] = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, Tensor))
    return out


def _in_gating_op() -> bool:
    return _GATING.on


def gating_scope() -> AbstractContextManager:
    """What is saved inside is kept at :data:`GATING_BITS` or more."""
    return _GATING()


#: Powers whose exponent decides: ``x ** e`` is exact-kept unless e is an integer >= 1.
POW_OPS = frozenset({'pow', 'pow_', '__pow__', '__ipow__', 'float_power'})


def _keeps_exact(func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
    name = getattr(func, '__name__', '')
    if name in EXACT_OPS:
        return True
    if name == 'batch_norm':  # batch statistics only; with running stats it is affine in x
        return bool(kwargs.get('training', args[5] if len(args) > 5 else False))
    if name in POW_OPS:
        exponent = args[1] if len(args) > 1 else None
        return not (isinstance(exponent, (int, float)) and float(exponent).is_integer()
                    and exponent >= 1)
    return False


class _ExactOpsMode(torch.overrides.TorchFunctionMode):
    """While active, what :data:`EXACT_OPS` calls save stays exact (see :func:`exact_scope`),
    functional layer / group norms of activations run through the Q norms' Functions, and
    what :data:`GATING_OPS` save is compressed with at least :data:`GATING_BITS` bits."""

    #: Q-layer forwards step out of this mode (they save through their own Functions); their
    #: twin fallbacks run under it (actnn_mm.layers._qlayer.run_twin).
    actnn_suspend_in_qlayers = True

    def __init__(self, owner: 'compress_saved_tensors') -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        # Traced by dynamo, a product scope's thread-local change would apply around the whole
        # compiled graph, whose intermediates (saved without grad) must stay exact.
        product = name in PRODUCT_OPS and not torch.compiler.is_compiling()
        if name in GATING_OPS:
            return self._run_gating(func, args, kwargs, product=product)
        if product:
            storages = self.owner._local.storages
            weighted = any(is_param_like(t, storages) for t in _tensor_args(args, kwargs))
            # With a parameter operand, a data operand feeds its gradient, a reduction: the
            # level's bits; else it weights an activation's gradient: the gating bits.
            with _PRODUCT(), (nullcontext() if weighted else _DATA_GATED()):
                return func(*args, **kwargs)
        if not _keeps_exact(func, args, kwargs):
            return func(*args, **kwargs)
        out = None
        if name in ROUTED_NORMS and not in_exact_module():
            out = self.owner._functional_norm(name, args, kwargs)
        elif name in ATTENTION_OPS and not in_exact_module():
            out = self.owner._attention(args, kwargs)
        elif name in LOSS_OPS and not in_exact_module():
            out = self.owner._loss(name, args, kwargs)
        if out is not None:
            return out
        with exact_scope(f'exact op: {name}'):
            return func(*args, **kwargs)

    def _run_gating(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                    product: bool) -> Any:
        tensors = [a for a in args[:2] if isinstance(a, Tensor)]
        if len(tensors) == 2 and any(is_param_like(t, self.owner._local.storages)
                                     for t in tensors):
            with _PRODUCT() if product else nullcontext():  # the other feeds a reduction
                return func(*args, **kwargs)
        with gating_scope(), _PRODUCT() if product else nullcontext(), _DATA_GATED():
            return func(*args, **kwargs)


def _bits_of(saved: Saved) -> float:
    """Average bits the copy ``saved`` was made with (its scheme's config; no device read)."""
    cfg = getattr(saved.scheme, 'config', None)
    return float(cfg.bits) if cfg is not None else 0.0


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
        self._schemes: Dict[Tuple[int, CompressionConfig], LayerScheme] = {}
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
            local.gating_cfg = cfg.replace(bits=max(int(cfg.bits), GATING_BITS),
                                           per_sample=False, per_layer=False) \
                if cfg.enabled and cfg.bits < GATING_BITS else cfg
            local.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            local.hooks.__enter__()
            local.mode = None
            if not torch.compiler.is_compiling():
                local.mode = _ExactOpsMode(self)
                local.mode.__enter__()
        local.depth = depth + 1

    def exit(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            hooks, local.hooks = local.hooks, None
            mode, local.mode = getattr(local, 'mode', None), None
            local.storages = None
            if mode is not None:
                mode.__exit__(None, None, None)
            hooks.__exit__(None, None, None)

    # -- hooks --------------------------------------------------------------------------------
    def _eligible(self, t: Tensor) -> bool:
        # Only differentiable activations: a saved tensor that does not require grad is data
        # (RoI boxes, sampling grids, masks, noise) that ops may need exact.
        return t.requires_grad and self._compressible(t)

    def _data_operand(self, t: Tensor) -> bool:
        """A float operand of a product (:data:`PRODUCT_OPS`) that does not require grad: it
        only multiplies the other operand's gradient."""
        return _PRODUCT.on and not t.requires_grad and self._compressible(t)

    def _compressible(self, t: Tensor) -> bool:
        """A strided float tensor of at least ``min_numel`` elements, not a parameter."""
        local = self._local
        return (t.layout == torch.strided and t.is_floating_point() and t.device.type != 'meta'
                and t.numel() >= local.min_numel and not is_param_like(t, local.storages))

    def _why_not_eligible(self, t: Tensor) -> str:
        """The saved-bytes reason :meth:`_eligible` refused ``t`` for."""
        if not t.requires_grad:
            return 'no grad (data)'
        if t.layout != torch.strided or not t.is_floating_point():
            return 'not a strided floating tensor'
        if t.numel() < self._local.min_numel:
            return 'below min_numel'
        return 'a parameter or buffer'

    def _scheme(self, kind: str = 'generic', gating: bool = False) -> LayerScheme:
        """One scheme per saving site (the n-th tensor saved in this forward), per config;
        ``gating``: with the config of what :data:`GATING_OPS` save."""
        local = self._local
        site = local.site
        local.site += 1
        cfg = local.gating_cfg if gating else local.cfg
        key = (site, cfg, kind)
        scheme = self._schemes.get(key)
        if scheme is None or scheme.config != cfg:
            alloc = self.allocator
            if alloc is not None and getattr(alloc, 'config', None) != cfg:
                alloc = None
            scheme = LayerScheme(cfg, kind=kind, name=f'saved[{site}]', allocator=alloc)
            self._schemes[key] = scheme
        return scheme

    def _functional_norm(self, name: str, args: Tuple[Any, ...],
                         kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """A functional layer / group norm of an activation run by the Q norm Function (its
        input saved normalised, compressed), or None: torch's op runs, what it saves exact."""
        if not torch.is_grad_enabled():
            return None
        parsed = parse_norm_call(name, args, kwargs)
        if parsed is None or not self._eligible(parsed[0]):
            return None
        return routed_norm(name, parsed, self._scheme(kind='norm'))

    def _attention(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """Scaled dot-product attention of activations as matmul / softmax / matmul, whose saves
        compress (:mod:`actnn_mm.functional_attention`), or None: torch's fused op runs, what it
        saves exact."""
        if not torch.is_grad_enabled() or not self._local.cfg.enabled:
            return None
        call = parse_attention_call(args, kwargs)
        if call is None or not any(self._eligible(call[n]) for n in ('query', 'key', 'value')):
            return None
        local = self._local
        if not decomposition_saves_bytes(call, float(local.cfg.bits),
                                         float(local.gating_cfg.bits)):
            return None  # long keys: the fused kernel's exact saves are the smaller
        return decomposed_attention(call, gating_scope)

    def _loss(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """A log-softmax / cross-entropy of an activation whose backward reads the probabilities,
        saved compressed at the level's bits (:mod:`actnn_mm.functional_loss`), or None:
        torch's op runs, what it saves exact."""
        if not torch.is_grad_enabled() or not self._local.cfg.enabled:
            return None

        def pack(p: Tensor) -> Any:
            return self._compress(p, gating=False)  # one bounded step, averaged by the weights

        if name == 'log_softmax':
            parsed = parse_log_softmax_call(args, kwargs)
            if parsed is None or not self._eligible(parsed[0]):
                return None
            return log_softmax_saving_probs(*parsed, pack, self._unpack)
        call = parse_cross_entropy_call(args, kwargs)
        if call is None or not self._eligible(call['input']):
            return None
        return cross_entropy_saving_probs(call, pack, self._unpack)

    def _compress(self, t: Tensor, gating: bool) -> Any:
        """``t`` compressed by the next site's scheme (a :class:`Saved`), or ``t`` itself when
        the scheme keeps it as it is; its bytes are recorded."""
        scheme = self._scheme(gating=gating)
        view = sample_view(t)
        packed = scheme.compress(view)
        if packed is view:  # not worth compressing: kept as it is
            saved_bytes.record(t, 'the scheme keeps it exact')
            return t
        saved_bytes.record(packed)
        return Saved(packed, scheme, None if view is t else t.shape)

    def _pack(self, t: Tensor) -> Any:
        if in_exact_module():  # a module the level keeps exact (L1 norms), or an EXACT_OPS op
            if not is_param_like(t, self._local.storages):
                saved_bytes.record(t, exact_reason())
                mark_exact(t)  # other savers of t use it exact too
            return t
        if t.layout == torch.strided and t.is_floating_point() and is_relu_own_save(t):
            from .engine.mask import pack_nonzero
            mask = pack_nonzero(t)  # != 0: NaN outputs pass the gradient, as in torch
            saved_bytes.record(mask)
            return ReluMask(mask, t.dtype)
        data = False
        if not self._eligible(t):
            data = self._data_operand(t)
            if not data:
                if not is_param_like(t, self._local.storages):
                    saved_bytes.record(t, self._why_not_eligible(t))
                return t
        gating = (_in_gating_op() or (data and _DATA_GATED.on)) and \
            self._local.gating_cfg is not self._local.cfg
        hit = CACHE.get(t)
        if hit is EXACT:
            saved_bytes.record(t, 'kept exact by a Q-layer or another saver')
            return t
        if hit is not None and (not gating or _bits_of(hit) >= GATING_BITS):
            saved_bytes.record(hit.packed)
            return hit
        saved = self._compress(t, gating)
        if hit is None and isinstance(saved, Saved):  # a finer copy of a coarser one: that
            CACHE.put(t, holder=saved)                # one stays the one shared
        return saved

    @staticmethod
    def _unpack(saved: Any) -> Tensor:
        if isinstance(saved, ReluMask):
            return saved.unpack()
        if isinstance(saved, Saved):
            return saved.unpack()
        return saved
