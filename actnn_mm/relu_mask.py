"""A ReLU's own save of its output, kept as an exact 1-bit mask.

``threshold_backward(grad, output, 0)`` reads only ``output <= 0``; quantizing the output would
flip small positives to zero and bias the gradient. Later savers of the same output (the next
conv) compress it as usual.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .share_cache import ShareCache

__all__ = ['is_relu_own_save', 'ReluMask']

#: ReLU outputs whose own save (the first one) was already turned into a mask.
_RELU_DONE = ShareCache()


class ReluMask:
    """A ReLU's saved output as a 1-bit mask; unpacks to 0/1 in the output's dtype, which is all
    ``threshold_backward(grad, output, 0)`` reads."""

    __slots__ = ('mask', 'dtype')

    def __init__(self, mask: Any, dtype: torch.dtype) -> None:
        self.mask, self.dtype = mask, dtype

    def unpack(self) -> Tensor:
        from .engine.mask import unpack_mask_as
        return unpack_mask_as(self.mask, self.dtype)


def is_relu_own_save(t: Tensor) -> bool:
    fn = t.grad_fn
    if fn is None or type(fn).__name__ != 'ReluBackward0' or _RELU_DONE.get(t) is not None:
        return False
    _RELU_DONE.put(t, True)
    return True
