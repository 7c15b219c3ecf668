"""Q-activations. ReLU and LeakyReLU keep a 1-bit mask (in place too); GELU, SiLU and Hardswish
keep their derivative compressed (their input when kept exact).

The derivative multiplies the gradient elementwise on its way down, like a sigmoid gate: no
reduction averages its rounding error, and in a conv / BN / activation chain each one adds its
own. SiLU and Hardswish keep it with at least :data:`DERIVATIVE_BITS` bits (uniform): RTMDet-tiny
(76 SiLUs in conv-BN-SiLU chains) at L3 had a gradient error 3.7x the minibatch noise with 2-bit
derivatives, 1.5x with 4 bits, for 13% more saved bytes. The same functions written as
``x * sigmoid(x)`` (mmcv's ``Swish``) are kept at the saved-tensor path's gating bits. GELU keeps
the level's bits: it sits in the residual branches of transformers, where every model of the
zoo check stayed within the bound at 2 bits, and it is their widest activation (4x the width),
which a floor would cost 12-20% of their saving (docs/zoo.md)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import saved_bytes
from ..engine import LayerScheme
from ..engine.mask import PackedMask, masked_grad, pack_nonzero, unpack_mask_as
from ._qlayer import (
    AmpFunction,
    compress_active,
    get_scheme,
    inplace_on_leaf,
    load_input,
    module_config,
    run_twin,
    save_input,
    scheme_is_exact,
)

__all__ = ['QReLU', 'QLeakyReLU', 'QGELU', 'QSiLU', 'QHardswish', 'save_derivative',
           'DERIVATIVE_BITS']

#: Fewest bits (uniform) for the derivative SiLU and Hardswish keep (module docstring).
DERIVATIVE_BITS = 4


def derivative_scheme(module: nn.Module) -> LayerScheme:
    """The module's scheme, at :data:`DERIVATIVE_BITS` uniform bits when its level has fewer
    (not in the bit allocator's pool: its budget is the other layers')."""
    cfg = module_config(module)
    if not cfg.enabled or cfg.bits >= DERIVATIVE_BITS:
        return get_scheme(module, 'generic')
    floored = cfg.replace(bits=DERIVATIVE_BITS, per_sample=False, per_layer=False)
    scheme = module.__dict__.get('actnn_scheme')
    if scheme is None or scheme.config != floored:
        name = module.__dict__.get('actnn_name') or type(module).__name__
        scheme = LayerScheme(floored, kind='generic', name=name)
        module.__dict__['actnn_scheme'] = scheme
    return scheme


def _keep_mask(ctx: Any, mask: PackedMask) -> None:
    ctx.mask = mask
    saved_bytes.record(ctx.mask)


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
            return run_twin(super().forward, input)
        return _ReLUFunction.apply(input, self.inplace)


class QLeakyReLU(nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` keeping a 1-bit mask; ``inplace=True`` stays in place."""

    def forward(self, input: Tensor) -> Tensor:
        if not compress_active(self, input) or inplace_on_leaf(self, input):
            return run_twin(super().forward, input)
        return _LeakyReLUFunction.apply(input, float(self.negative_slope), self.inplace)


def save_derivative(ctx: Any, x: Tensor, derivative: Callable[[Tensor], Tensor],
                    scheme: Any) -> None:
    """Save what a smooth activation's backward reads: exact, the input as is; else its
    *derivative* f'(x), compressed.

    Backward multiplies the output gradient by f'(x). Quantizing x instead gives f'(x_q): with
    2 bits, the step of a pre-activation group (a range of ~15) moves f' by up to |f''| times
    that, far beyond f''s own range (~1.2 for SiLU and GELU), and biased; EfficientNet-B0 at L3
    got weight gradients 5x off through its SiLUs alone. f' itself is bounded, and stochastic
    rounding keeps the product unbiased. One elementwise pass (a kernel could fuse it into the
    quantizer). Sets ``ctx.derivative``.
    """
    ctx.derivative = scheme_is_exact(scheme, x) is not True
    save_input(ctx, derivative(x).to(x.dtype) if ctx.derivative else x, scheme)


def load_derivative_backward(ctx: Any, saved: Tensor, grad_out: Tensor,
                             backward: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Input gradient from what :func:`save_derivative` kept (``saved``: the unpacked tensor)."""
    if ctx.derivative:
        return grad_out * saved
    return backward(grad_out, saved)


def _ones_backward(backward: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """f'(x) from an ATen ``*_backward(grad, x)`` op: the same formula, grad = 1."""
    return lambda x: backward(torch.ones_like(x), x)


class _GELUFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, approximate: str, scheme: Any) -> Tensor:
        out = F.gelu(x, approximate=approximate)
        backward = _gelu_backward(approximate)
        save_derivative(ctx, x, _ones_backward(backward), scheme)
        ctx.save_for_backward(ctx.x_exact)
        ctx.x_exact = None
        ctx.approximate = approximate
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None]:
        saved = load_input(ctx, ctx.saved_tensors[0])
        ctx.scheme.observe_grad(grad_out)
        return load_derivative_backward(ctx, saved, grad_out, _gelu_backward(ctx.approximate)), \
            None, None


def _gelu_backward(approximate: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda g, x: torch.ops.aten.gelu_backward(g, x, approximate=approximate)


class QGELU(nn.GELU):
    """:class:`torch.nn.GELU` that saves its derivative compressed (its input when exact)."""

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point() or not compress_active(self, input):
            return run_twin(super().forward, input)
        return _GELUFunction.apply(input, self.approximate, get_scheme(self, 'generic'))


def _silu_backward(g: Tensor, x: Tensor) -> Tensor:
    return torch.ops.aten.silu_backward(g, x)


def _hardswish_backward(g: Tensor, x: Tensor) -> Tensor:
    return torch.ops.aten.hardswish_backward(g, x)


class _SmoothInplaceFunction(AmpFunction):
    """An activation ``f`` (SiLU, Hardswish; in place or not) keeping its derivative (or, exact,
    its input) for backward. ``kind`` picks the pair of ops."""

    OPS = {
        'silu': (F.silu, torch.ops.aten.silu_, _silu_backward),
        'hardswish': (F.hardswish, torch.ops.aten.hardswish_, _hardswish_backward),
    }

    @staticmethod
    def forward(ctx: Any, x: Tensor, kind: str, inplace: bool, scheme: Any) -> Tensor:
        fn, fn_, backward = _SmoothInplaceFunction.OPS[kind]
        ctx.kind = kind
        if inplace:
            # x is about to be overwritten: never share or keep a reference to it.
            ctx.derivative = scheme_is_exact(scheme, x) is not True
            kept = _ones_backward(backward)(x).to(x.dtype) if ctx.derivative else x
            packed = scheme.compress(kept)
            exact = packed is kept
            ctx.scheme, ctx.x_geom = scheme, None
            ctx.packed = None if exact else packed
            if not exact:
                saved_bytes.record(packed)
            kept = (kept.clone() if kept is x else kept) if exact else None
            out = fn_(x)
            ctx.mark_dirty(x)
            ctx.save_for_backward(kept)
        else:
            out = fn(x)
            save_derivative(ctx, x, _ones_backward(backward), scheme)
            ctx.save_for_backward(ctx.x_exact)
            ctx.x_exact = None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        saved = load_input(ctx, ctx.saved_tensors[0])
        ctx.scheme.observe_grad(grad_out)
        backward = _SmoothInplaceFunction.OPS[ctx.kind][2]
        return load_derivative_backward(ctx, saved, grad_out, backward), None, None, None


class QSiLU(nn.SiLU):
    """:class:`torch.nn.SiLU` that saves its derivative compressed (its input when exact;
    ``inplace=True`` supported)."""

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point() or not compress_active(self, input) or \
                inplace_on_leaf(self, input):
            return run_twin(super().forward, input)
        return _SmoothInplaceFunction.apply(input, 'silu', self.inplace, derivative_scheme(self))


class QHardswish(nn.Hardswish):
    """:class:`torch.nn.Hardswish` (MobileNetV3) that saves its derivative compressed (its input
    when exact; ``inplace=True`` supported)."""

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point() or not compress_active(self, input) or \
                inplace_on_leaf(self, input):
            return run_twin(super().forward, input)
        return _SmoothInplaceFunction.apply(input, 'hardswish', self.inplace,
                                            derivative_scheme(self))
