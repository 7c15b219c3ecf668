"""Tell parameters and buffers (and their views and casts) from activations.

Saved-tensor compression and the saved-bytes counter both need it: a weight that autograd saves
(or the bf16 copy autocast made of it) lives as long as the model and is never an activation to
compress or to count.
"""
from __future__ import annotations

from typing import List, Optional, Set

from torch import Tensor, nn

__all__ = ['storage_ptr', 'param_storages', 'is_param_like']

_VIEW_LIKE = frozenset({
    'TBackward', 'ViewBackward', 'ToCopyBackward', 'TransposeBackward', 'PermuteBackward',
    'ExpandBackward', 'UnsafeViewBackward', 'AliasBackward', 'SliceBackward', 'SelectBackward',
    'UnsqueezeBackward', 'SqueezeBackward', 'CloneBackward', 'AsStridedBackward',
    'ReshapeAliasBackward', 'DetachBackward', 'ConjBackward', 'NegViewBackward'
})


def storage_ptr(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return -1


def param_storages(modules: Optional[List[nn.Module]]) -> Set[int]:
    """Storage addresses of the parameters and buffers of ``modules``."""
    ptrs: Set[int] = set()
    for m in modules or ():
        for t in list(m.parameters()) + list(m.buffers()):
            ptrs.add(storage_ptr(t))
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
    if storages and storage_ptr(t) in storages:
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
