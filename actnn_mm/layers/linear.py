"""QLinear: any number of leading dimensions; the input is saved compressed."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from ._qlayer import (
    AmpFunction,
    cast_for_autocast,
    compress_active,
    get_scheme,
    load_input,
    run_twin,
    save_input,
)

__all__ = ['QLinear', 'linear_function']


class _LinearFunction(AmpFunction):
    """``F.linear`` keeping its input compressed; backward as autograd's ``addmm`` formulas."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                scheme: Any) -> Tensor:
        out = torch.nn.functional.linear(x, weight, bias)
        # (N, C) inputs with small C (flattened tokens): regrouped rather than padded per row.
        save_input(ctx, x, scheme, needed=ctx.needs_input_grad[1], regroup=True)
        ctx.save_for_backward(ctx.x_exact, weight)
        ctx.x_exact = None
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x_exact, weight = ctx.saved_tensors
        ctx.scheme.observe_grad(grad_out)
        g2d = grad_out.reshape(-1, grad_out.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g2d.mm(weight).view(*grad_out.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            x = load_input(ctx, x_exact)
            gw = g2d.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2d.sum(0)
        return gx, gw, gb, None


def linear_function(x: Tensor, weight: Tensor, bias: Optional[Tensor], scheme: Any) -> Tensor:
    """Functional QLinear."""
    x, weight, bias = cast_for_autocast('lower', x, weight, bias)
    return _LinearFunction.apply(x, weight, bias, scheme)


class QLinear(nn.Linear):
    """:class:`torch.nn.Linear` that saves its input compressed (any leading dims)."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 0 or input.shape[-1] != self.in_features or \
                not compress_active(self, input, self.weight, self.bias):
            return run_twin(super().forward, input)
        return linear_function(input, self.weight, self.bias, get_scheme(self, 'linear'))
