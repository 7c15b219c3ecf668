"""``F.log_softmax`` and ``F.cross_entropy`` that save the *probabilities* for backward.

Torch's log-softmax saves its output, the log-probabilities, and its backward exponentiates
them: ``grad - exp(logp) * grad.sum(dim)``. A log-probability rounded by ``d`` comes back as
``p * e^d``; at 2 bits a group of log-probabilities spanning ``[-12, 0]`` has a step of 4, so the
classifier gradient that every other gradient of a detector descends from was off by factors of
``e^4`` (Faster / Cascade R-CNN at L3: gradient error 6.2x the minibatch noise). Keeping the
log-probabilities exact fixes that but keeps a segmentation head's full-resolution logits
(150 classes per pixel) in full precision.

The Functions here save ``p = softmax(x)`` compressed instead. Both backwards are *linear* in
``p`` (``grad - p * grad.sum(dim)``; for the cross-entropy ``p * s - a`` with ``a`` and ``s`` built
from the targets and class weights), so stochastic rounding stays unbiased and its error stays a
fraction of a step of a tensor in ``[0, 1]``. The forward values are torch's own.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import _reduction

__all__ = ['LOSS_OPS', 'parse_log_softmax_call', 'parse_cross_entropy_call',
           'log_softmax_saving_probs', 'cross_entropy_saving_probs']

#: ``__name__`` of the torch functions routed here (``F.log_softmax``, ``torch.log_softmax`` and
#: ``Tensor.log_softmax`` share the name).
LOSS_OPS = frozenset({'log_softmax', 'cross_entropy'})

#: ``pack(p)`` returns what backward will read back with ``unpack``.
Pack = Callable[[Tensor], Any]
Unpack = Callable[[Any], Tensor]

_CE_PARAMS = ('input', 'target', 'weight', 'size_average', 'ignore_index', 'reduce',
              'reduction', 'label_smoothing')
_CE_DEFAULTS: Dict[str, Any] = dict(weight=None, size_average=None, ignore_index=-100,
                                    reduce=None, reduction='mean', label_smoothing=0.0)


def _no_grad_tensor(t: Any) -> bool:
    return t is None or (isinstance(t, Tensor) and not t.requires_grad)


def parse_log_softmax_call(args: Tuple[Any, ...], kwargs: Dict[str, Any]
                           ) -> Optional[Tuple[Tensor, int, Optional[torch.dtype]]]:
    """(input, dim, dtype) of ``F.log_softmax`` / ``torch.log_softmax`` / ``Tensor.log_softmax``,
    or None when the call is not one taken here (torch then runs it, its saves kept exact)."""
    x = args[0] if args else kwargs.get('input', kwargs.get('self'))
    dim = args[1] if len(args) > 1 else kwargs.get('dim')
    dtype = kwargs.get('dtype', args[3] if len(args) > 3 else None)
    if len(args) == 3 and isinstance(args[2], torch.dtype):  # torch.log_softmax(x, dim, dtype)
        dtype = args[2]
    if not isinstance(x, Tensor) or not x.is_floating_point() or not isinstance(dim, int) or \
            x.dim() == 0 or not -x.dim() <= dim < x.dim():
        return None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return None
    return x, dim % x.dim(), dtype


def parse_cross_entropy_call(args: Tuple[Any, ...], kwargs: Dict[str, Any]
                             ) -> Optional[Dict[str, Any]]:
    """The arguments of ``F.cross_entropy`` by name (``reduction`` resolved from the legacy
    flags), or None when the call is not one taken here: torch then runs it, its saves kept
    exact. Taken: a floating input with classes on dim 1 (dim 0 for a single sample), class-index
    targets or class-probability targets of the input's shape, targets and class weights that do
    not require grad."""
    if len(args) > len(_CE_PARAMS) or any(k not in _CE_PARAMS for k in kwargs):
        return None
    call = dict(_CE_DEFAULTS)
    call.update(zip(_CE_PARAMS, args))
    call.update(kwargs)
    x, target, weight = call.get('input'), call.get('target'), call['weight']
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0 or \
            not isinstance(target, Tensor) or not _no_grad_tensor(weight):
        return None
    if call['size_average'] is not None or call['reduce'] is not None:
        call['reduction'] = _reduction.legacy_get_string(call['size_average'], call['reduce'])
    if call['reduction'] not in ('mean', 'sum', 'none'):
        return None
    eps = call['label_smoothing']
    if not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
        return None
    class_dim = 1 if x.dim() >= 2 else 0
    classes = x.shape[class_dim]
    if weight is not None and (weight.dim() != 1 or weight.numel() != classes):
        return None
    if target.is_floating_point():
        if target.shape != x.shape or target.requires_grad:
            return None
    elif target.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        expected = x.shape[:class_dim] + x.shape[class_dim + 1:]
        if target.shape != expected:
            return None
    else:
        return None
    call['class_dim'] = class_dim
    return call


class _LogSoftmax(torch.autograd.Function):
    """log_softmax(x, dim) saving ``softmax(x)`` through ``pack``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, pack: Pack, unpack: Unpack) -> Tensor:
        out = torch.log_softmax(x, dim)
        ctx.dim, ctx.unpack = dim, unpack
        ctx.saved = pack(out.exp())
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        p = ctx.unpack(ctx.saved).to(grad.dtype)
        ctx.saved = None
        return grad - p * grad.sum(ctx.dim, keepdim=True), None, None, None


def log_softmax_saving_probs(x: Tensor, dim: int, dtype: Optional[torch.dtype],
                             pack: Pack, unpack: Unpack) -> Tensor:
    """``torch.log_softmax(x, dim, dtype)`` whose backward reads the probabilities."""
    if dtype is not None:
        x = x.to(dtype)
    return _LogSoftmax.apply(x, dim, pack, unpack)


def _class_view(t: Tensor, class_dim: int, ndim: int) -> Tensor:
    """A per-class vector shaped to broadcast along ``class_dim`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[class_dim] = -1
    return t.reshape(shape)


class _CrossEntropy(torch.autograd.Function):
    """``F.cross_entropy`` (torch's forward) saving ``softmax(x)`` through ``pack``, the targets
    and the class weights."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, target: Tensor, weight: Optional[Tensor], call: Dict[str, Any],
                pack: Pack, unpack: Unpack) -> Tensor:
        loss = F.cross_entropy(x, target, weight, ignore_index=call['ignore_index'],
                               reduction=call['reduction'],
                               label_smoothing=call['label_smoothing'])
        ctx.call, ctx.unpack, ctx.x_dtype = call, unpack, x.dtype
        ctx.saved = pack(torch.softmax(x, call['class_dim']))
        ctx.save_for_backward(target, weight)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        target, weight = ctx.saved_tensors
        call = ctx.call
        p = ctx.unpack(ctx.saved)
        ctx.saved = None
        dtype = torch.promote_types(p.dtype, torch.float32)
        p, grad = p.to(dtype), grad.to(dtype)
        cd, eps = call['class_dim'], float(call['label_smoothing'])
        w = weight.to(dtype) if weight is not None else None
        if target.is_floating_point():
            dx = _soft_target_grad(p, target.to(dtype), w, grad, call['reduction'], eps, cd)
        else:
            dx = _index_target_grad(p, target, w, grad, call['reduction'], eps, cd,
                                    call['ignore_index'])
        return dx.to(ctx.x_dtype), None, None, None, None, None


def _soft_target_grad(p: Tensor, t: Tensor, w: Optional[Tensor], grad: Tensor, reduction: str,
                      eps: float, cd: int) -> Tensor:
    """d loss / d x for class-probability targets: with ``a = -g * t * w``, ``a - p * sum(a)``."""
    classes = p.shape[cd]
    if eps > 0.0:
        t = t * (1.0 - eps) + eps / classes
    if reduction == 'mean':
        g = grad / (p.numel() // classes) if p.numel() else grad
    else:
        g = grad.unsqueeze(cd) if reduction == 'none' else grad
    a = t if w is None else t * _class_view(w, cd, p.dim())
    a = -g * a
    return a - p * a.sum(cd, keepdim=True)


def _index_target_grad(p: Tensor, target: Tensor, w: Optional[Tensor], grad: Tensor,
                       reduction: str, eps: float, cd: int, ignore_index: int) -> Tensor:
    """d loss / d x for class-index targets, label smoothing ``eps``: per sample
    ``l = -(1 - eps) w_y logp_y - eps / C * sum_c w_c logp_c`` (zero where ignored), so
    ``dl/dx_c = p_c ((1 - eps) w_y + eps / C * sum w) - (1 - eps) w_y [c = y] - eps / C w_c``."""
    classes, ndim = p.shape[cd], p.dim()
    target = target.long()
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
    w_y = (w[safe] if w is not None else torch.ones_like(safe, dtype=p.dtype)) * valid
    if reduction == 'mean':
        coef = grad / w_y.sum()
        coef = torch.where(valid, coef, torch.zeros((), dtype=p.dtype, device=p.device))
    else:  # 'sum': a scalar grad; 'none': one per sample, of the target's shape
        coef = valid.to(p.dtype) * grad
    w_sum = w.sum() if w is not None else torch.tensor(float(classes), dtype=p.dtype,
                                                       device=p.device)
    dx = p * (coef * ((1.0 - eps) * w_y + (eps / classes) * w_sum)).unsqueeze(cd)
    if eps > 0.0:
        w_c = _class_view(w, cd, ndim) if w is not None else 1.0
        dx = dx - (eps / classes) * coef.unsqueeze(cd) * w_c
    return dx.scatter_add(cd, safe.unsqueeze(cd), (-(1.0 - eps) * coef * w_y).unsqueeze(cd))


def cross_entropy_saving_probs(call: Dict[str, Any], pack: Pack, unpack: Unpack) -> Tensor:
    """``F.cross_entropy`` of a parsed call (:func:`parse_cross_entropy_call`) whose backward
    reads the probabilities."""
    return _CrossEntropy.apply(call['input'], call['target'], call['weight'], call, pack, unpack)
