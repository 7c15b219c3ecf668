"""Q-dropout: keeps the 1-bit keep-mask instead of autograd's full-size float noise tensor.

Random draws and arithmetic replicate ``torch.nn.functional.dropout`` exactly (CPU: bernoulli
noise then ``input * noise``; CUDA: ``native_dropout``), so with the same seed the outputs and
gradients are bitwise those of the torch twin.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import saved_bytes
from ..engine import pack_mask, unpack_mask
from ._qlayer import AmpFunction, compress_active, inplace_on_leaf, run_twin

__all__ = ['QDropout', 'QDropout2d']


class _DropoutFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float, inplace: bool, feature: bool) -> Tensor:
        ctx.p, ctx.fused = p, False
        if not inplace and not feature and x.device.type in ('cuda', 'xpu'):
            out, mask = torch.ops.aten.native_dropout(x, p, True)  # what F.dropout runs there
            ctx.fused = True
        else:
            shape = x.shape[:2] + (1, ) * (x.dim() - 2) if feature else x.shape
            noise = x.new_empty(shape) if feature else torch.empty_like(x)
            noise.bernoulli_(1 - p)
            mask = noise != 0
            noise.div_(1 - p)
            if inplace:
                out = x.mul_(noise)
                ctx.mark_dirty(x)
            else:
                out = x * noise
        ctx.mask = pack_mask(mask)
        saved_bytes.record(ctx.mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        mask = unpack_mask(ctx.mask)
        if ctx.fused:
            return torch.ops.aten.native_dropout_backward(grad_out, mask, 1.0 / (1.0 - ctx.p)), \
                None, None, None
        noise = mask.to(grad_out.dtype).div_(1 - ctx.p)
        return grad_out * noise, None, None, None


class QDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` keeping a 1-bit mask."""

    def forward(self, input: Tensor) -> Tensor:
        if not 0 < self.p < 1 or input.numel() == 0 or not compress_active(self, input) or \
                inplace_on_leaf(self, input):
            return run_twin(super().forward, input)
        return _DropoutFunction.apply(input, float(self.p), self.inplace, False)


class QDropout2d(nn.Dropout2d):
    """:class:`torch.nn.Dropout2d` keeping a 1-bit per-channel mask (batched 4-D input)."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4 or not 0 < self.p < 1 or input.numel() == 0 or \
                not compress_active(self, input) or inplace_on_leaf(self, input):
            return run_twin(super().forward, input)
        return _DropoutFunction.apply(input, float(self.p), self.inplace, True)
