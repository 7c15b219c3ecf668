"""Q-activations. ReLU and LeakyReLU keep a 1-bit mask (in place too); GELU and SiLU keep their
input compressed."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import memory
from ..engine.mask import PackedMask, masked_grad, pack_nonzero, unpack_mask_as
from ._common import (AmpFunction, compress_active, get_scheme, inplace_on_leaf, load_input,
                      save_input)

__all__ = ['QReLU', 'QLeakyReLU', 'QGELU', 'QSiLU']


def _keep_mask(ctx: Any, mask: PackedMask) -> None:
    ctx.mask = mask
    memory.record(ctx.mask)


class _ReLUFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            out = torch.relu_(x)
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        _keep_mask(ctx, pack_nonzero(out))  # != 0, not > 0: NaN passes the gradient, as in torch
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None]:
        return masked_grad(ctx.mask, grad_out), None


class _LeakyReLUFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, slope: float, inplace: bool) -> Tensor:
        _keep_mask(ctx, pack_nonzero(x, positive=True))
        if inplace:
            out = F.leaky_relu_(x, slope)
            ctx.mark_dirty(x)
        else:
            out = F.leaky_relu(x, slope)
        ctx.slope = slope
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None]:
        positive = unpack_mask_as(ctx.mask, grad_out.dtype)  # 1 > 0, 0 <= 0: same branches
        return torch.ops.aten.leaky_relu_backward(grad_out, positive, ctx.slope, False), \
            None, None


class QReLU(nn.ReLU):
    """:class:`torch.nn.ReLU` keeping a 1-bit mask; ``inplace=True`` stays in place."""

    def forward(self, input: Tensor) -> Tensor:
        if not compress_active(self, input) or inplace_on_leaf(self, input):
            return super().forward(input)
        return _ReLUFunction.apply(input, self.inplace)


class QLeakyReLU(nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` keeping a 1-bit mask; ``inplace=True`` stays in place."""

    def forward(self, input: Tensor) -> Tensor:
        if not compress_active(self, input) or inplace_on_leaf(self, input):
            return super().forward(input)
        return _LeakyReLUFunction.apply(input, float(self.negative_slope), self.inplace)


class _GELUFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, approximate: str, scheme: Any) -> Tensor:
        out = F.gelu(x, approximate=approximate)
        save_input(ctx, x, scheme)
        ctx.save_for_backward(ctx.x_exact)
        ctx.x_exact = None
        ctx.approximate = approximate
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None]:
        x = load_input(ctx, ctx.saved_tensors[0])
        ctx.scheme.observe_grad(grad_out)
        return torch.ops.aten.gelu_backward(grad_out, x, approximate=ctx.approximate), \
            None, None


class QGELU(nn.GELU):
    """:class:`torch.nn.GELU` that saves its input compressed."""

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point() or not compress_active(self, input):
            return super().forward(input)
        return _GELUFunction.apply(input, self.approximate, get_scheme(self, 'generic'))


class _SiLUFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool, scheme: Any) -> Tensor:
        if inplace:
            # x is about to be overwritten: never share or keep a reference to it.
            packed = scheme.compress(x)
            exact = packed is x
            ctx.scheme, ctx.x_geom = scheme, None
            ctx.packed = None if exact else packed
            kept = x.clone() if exact else None
            if not exact:
                memory.record(packed)
            out = torch.ops.aten.silu_(x)
            ctx.mark_dirty(x)
            ctx.save_for_backward(kept)
        else:
            out = F.silu(x)
            save_input(ctx, x, scheme)
            ctx.save_for_backward(ctx.x_exact)
            ctx.x_exact = None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None]:
        x = load_input(ctx, ctx.saved_tensors[0])
        ctx.scheme.observe_grad(grad_out)
        return torch.ops.aten.silu_backward(grad_out, x), None, None


class QSiLU(nn.SiLU):
    """:class:`torch.nn.SiLU` that saves its input compressed (``inplace=True`` supported)."""

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point() or not compress_active(self, input) or \
                inplace_on_leaf(self, input):
            return super().forward(input)
        return _SiLUFunction.apply(input, self.inplace, get_scheme(self, 'generic'))
