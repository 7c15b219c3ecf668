"""Q-pooling. MaxPool2d keeps, per output, the position of the max inside its window (a small
integer; any kernel, stride, padding, dilation, ceil_mode) instead of the input and int64 flat
indices; AvgPool2d keeps only the input's geometry."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import saved_bytes
from ..engine import pack_index, unpack_index
from ._qlayer import AmpFunction, compress_active, run_twin

__all__ = ['QMaxPool2d', 'QAvgPool2d', 'window_index', 'flat_index']


_BASES: Dict[Tuple, Tensor] = {}


def _window_base(out_h: int, out_w: int, in_w: int, stride: Tuple[int, int],
                 padding: Tuple[int, int], device: torch.device) -> Tensor:
    """Flat index of each output's window origin, int64 [out_h, out_w] (may be negative with
    padding); made once per geometry, not in every forward and backward."""
    key = (out_h, out_w, in_w, tuple(stride), tuple(padding), device)
    base = _BASES.get(key)
    if base is None:
        h0 = torch.arange(out_h, device=device) * stride[0] - padding[0]
        w0 = torch.arange(out_w, device=device) * stride[1] - padding[1]
        base = _BASES[key] = h0.view(-1, 1) * in_w + w0.view(1, -1)
    return base


def window_index(flat: Tensor, in_w: int, kernel: Tuple[int, int], stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int]) -> Tensor:
    """Flat input indices (``max_pool2d_with_indices``) -> position in the window, row-major.

    The offset from the window origin is r = kh * dil_h * in_w + kw * dil_w with
    0 <= kw * dil_w < in_w whenever the window's width fits the input's (else two divisions
    per coordinate), so kh and kw follow from one division and one remainder."""
    if (kernel[1] - 1) * dilation[1] >= in_w:  # window wider than the input: per coordinate
        out_h, out_w = flat.shape[-2], flat.shape[-1]
        h0 = torch.arange(out_h, device=flat.device).view(-1, 1) * stride[0] - padding[0]
        w0 = torch.arange(out_w, device=flat.device).view(1, -1) * stride[1] - padding[1]
        kh = torch.div(flat.div(in_w, rounding_mode='floor') - h0, dilation[0],
                       rounding_mode='floor')
        kw = flat.remainder(in_w) - w0
    else:
        r = flat - _window_base(flat.shape[-2], flat.shape[-1], in_w, stride, padding,
                                flat.device)
        if kernel[0] * dilation[0] * in_w < _FLOAT_EXACT:
            return _float_window(r, in_w, kernel[1], dilation)
        kh = torch.div(r, in_w, rounding_mode='floor')
        kw = r.remainder(in_w)
        if dilation[0] > 1:
            kh = torch.div(kh, dilation[0], rounding_mode='floor')
    if dilation[1] > 1:
        kw = torch.div(kw, dilation[1], rounding_mode='floor')
    return kh * kernel[1] + kw


#: Offsets below this are divided in float32: exact, and vectorised where int64 division is not
#: (with 0 <= r = q * d + k < 2^23 and 0 <= k < d, the rounded r / d never reaches q + 1).
_FLOAT_EXACT = 1 << 23


def _float_window(r: Tensor, in_w: int, kernel_w: int, dilation: Tuple[int, int]) -> Tensor:
    """:func:`window_index` from offsets r (0 <= r < 2^23) in float32 (int32 result)."""
    rf = r.to(torch.float32)
    kh = torch.div(rf, in_w, rounding_mode='trunc')  # = floor for r >= 0, and 9x faster
    if dilation == (1, 1):  # kh * kernel_w + (r - kh * in_w)
        return rf.sub(kh, alpha=in_w - kernel_w).to(torch.int32)
    kw = rf.sub(kh, alpha=in_w)
    if dilation[0] > 1:
        kh = torch.div(kh, dilation[0], rounding_mode='trunc')
    if dilation[1] > 1:
        kw = torch.div(kw, dilation[1], rounding_mode='trunc')
    return kh.mul(kernel_w).add_(kw).to(torch.int32)


def flat_index(window: Tensor, in_w: int, kernel: Tuple[int, int], stride: Tuple[int, int],
               padding: Tuple[int, int], dilation: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_index`."""
    base = _window_base(window.shape[-2], window.shape[-1], in_w, stride, padding,
                        window.device)
    if kernel[0] * dilation[0] * in_w >= _FLOAT_EXACT:
        window = window.long()
        kh = torch.div(window, kernel[1], rounding_mode='floor')
        kw = window.remainder(kernel[1])
        return (kh * (dilation[0] * in_w) + base).add_(kw * dilation[1] if dilation[1] > 1
                                                       else kw)
    # Positions and offsets below 2^23: exact in float32, which vectorises (int64 division not).
    # With kh = window // kernel_w and kw = window - kh * kernel_w, the offset
    # kh * dil_h * in_w + kw * dil_w is dil_w * window + kh * (dil_h * in_w - dil_w * kernel_w).
    wf = window.to(torch.float32)
    kh = torch.div(wf, kernel[1], rounding_mode='trunc')  # positions >= 0: trunc = floor
    if dilation[1] > 1:
        wf = wf * dilation[1]
    off = wf.add(kh, alpha=dilation[0] * in_w - dilation[1] * kernel[1])
    return off.to(torch.int64).add_(base)


def _pack_window(window: Tensor, window_size: int) -> object:
    """ceil(log2(window)) bits per output (4 for 3x3); int32 beyond the packer's 16 bits.
    Positions are in [0, window_size) by construction: packed without a range check."""
    nbits = max(1, (window_size - 1).bit_length())
    if nbits <= 16:
        return pack_index(window, nbits, check=False)
    return window.to(torch.int32)


def _unpack_window(packed: object) -> Tensor:
    return packed if isinstance(packed, Tensor) else unpack_index(packed, torch.int64)


class _MaxPool2dFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                padding: Tuple[int, int], dilation: Tuple[int, int], ceil_mode: bool,
                return_indices: bool) -> Any:
        out, flat = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation,
                                                            ceil_mode)
        conf = (x.shape[-1], kernel, stride, padding, dilation)
        ctx.window = _pack_window(window_index(flat, *conf), kernel[0] * kernel[1])
        saved_bytes.record(ctx.window)
        ctx.conf = conf
        ctx.ceil_mode = ceil_mode
        ctx.x_geom = (x.shape, x.stride(), x.dtype, x.device)
        if return_indices:
            ctx.mark_non_differentiable(flat)
            return out, flat
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *unused: Any) -> Tuple[Optional[Tensor], ...]:
        in_w, kernel, stride, padding, dilation = ctx.conf
        flat = flat_index(_unpack_window(ctx.window), *ctx.conf)
        shape, strides, dtype, device = ctx.x_geom
        like = torch.empty_strided(shape, strides, dtype=dtype, device=device)  # geometry only
        gx = torch.ops.aten.max_pool2d_with_indices_backward(grad_out, like, kernel, stride,
                                                             padding, dilation, ctx.ceil_mode,
                                                             flat)
        return gx, None, None, None, None, None, None


class QMaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` keeping window positions (4 bits per output for 3x3) instead
    of its input plus int64 indices."""

    def forward(self, input: Tensor) -> Any:
        if input.dim() not in (3, 4) or not input.is_floating_point() or \
                not compress_active(self, input):
            return run_twin(super().forward, input)
        stride = self.stride if self.stride is not None and self.stride != [] else \
            self.kernel_size
        return _MaxPool2dFunction.apply(input, _pair(self.kernel_size), _pair(stride),
                                        _pair(self.padding), _pair(self.dilation),
                                        self.ceil_mode, self.return_indices)


class _AvgPool2dFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                padding: Tuple[int, int], ceil_mode: bool, count_include_pad: bool,
                divisor_override: Optional[int]) -> Tensor:
        ctx.conf = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.x_geom = (x.shape, x.stride(), x.dtype, x.device)
        return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                            divisor_override)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        shape, strides, dtype, device = ctx.x_geom
        like = torch.empty_strided(shape, strides, dtype=dtype, device=device)  # geometry only
        gx = torch.ops.aten.avg_pool2d_backward(grad_out, like, *ctx.conf)
        return gx, None, None, None, None, None, None


class QAvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` keeping nothing but the input's shape (torch keeps the input)."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in (3, 4) or not compress_active(self, input):
            return run_twin(super().forward, input)
        stride = self.stride if self.stride is not None and self.stride != [] else \
            self.kernel_size
        return _AvgPool2dFunction.apply(input, _pair(self.kernel_size), _pair(stride),
                                        _pair(self.padding), self.ceil_mode,
                                        self.count_include_pad, self.divisor_override)
