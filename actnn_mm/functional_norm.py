"""Functional layer / group norm (``F.layer_norm``, ``torch.group_norm``: what mm backbones and
necks call outside a norm module) through the Q norms' autograd Functions.

Inside :class:`~actnn_mm.saved_tensors.compress_saved_tensors` autograd's own layer/group norm
would save the raw input, whose quantization error the backward multiplies by the row's (or
group's) rstd: unbounded for rows of tiny spread. Keeping it exact (as before) cost Swin-T, whose
blocks are all layer norms seen on the saved-tensor path, its saving. The Q Functions save what
the backward reads, the input *normalised* and compressed, so the error stays a fraction of a
step of a unit-scale tensor (docs/layers.md).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from torch import Tensor

from .layers._qlayer import scheme_is_exact
from .layers.norm import group_norm_function, group_norm_supported, layer_norm_function

__all__ = ['ROUTED_NORMS', 'parse_norm_call', 'routed_norm']

#: ``__name__`` of the torch functions routed here (``F.layer_norm`` and ``torch.layer_norm``
#: share the name, so do the group norms).
ROUTED_NORMS = frozenset({'layer_norm', 'group_norm'})

_DEFAULT_EPS = 1e-5


def _arg(args: Tuple[Any, ...], kwargs: Dict[str, Any], i: int, name: str,
         default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def parse_norm_call(name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]
                    ) -> Optional[Tuple[Tensor, Any, Optional[Tensor], Optional[Tensor], float]]:
    """(input, normalized_shape or num_groups, weight, bias, eps) of a routed call, or None when
    the Q Function does not take it (torch then runs it as is, raising its own errors)."""
    x = _arg(args, kwargs, 0, 'input')
    weight, bias = _arg(args, kwargs, 2, 'weight'), _arg(args, kwargs, 3, 'bias')
    eps = _arg(args, kwargs, 4, 'eps', _DEFAULT_EPS)
    if not isinstance(x, Tensor) or not x.is_floating_point() or \
            not isinstance(eps, (int, float)) or \
            any(t is not None and not isinstance(t, Tensor) for t in (weight, bias)):
        return None
    if name == 'layer_norm':
        shape = _arg(args, kwargs, 1, 'normalized_shape')
        shape = (shape, ) if isinstance(shape, int) else shape
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            return None
        if not shape or x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
            return None
        return x, shape, weight, bias, float(eps)
    groups = _arg(args, kwargs, 1, 'num_groups')
    if not group_norm_supported(x, groups):
        return None
    return x, groups, weight, bias, float(eps)


def routed_norm(name: str, parsed: Tuple[Tensor, Any, Optional[Tensor], Optional[Tensor], float],
                scheme: Any) -> Optional[Tensor]:
    """The norm run by the Q Function with ``scheme``, or None when the scheme keeps the input
    exact (L0, ``compress_norm=False``): the caller then runs torch's own op, bit for bit."""
    x, shape_or_groups, weight, bias, eps = parsed
    if scheme_is_exact(scheme, x) is True:
        return None
    fn: Callable[..., Tensor] = layer_norm_function if name == 'layer_norm' \
        else group_norm_function
    return fn(x, shape_or_groups, weight, bias, eps, scheme)
