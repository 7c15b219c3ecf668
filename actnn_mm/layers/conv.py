"""Q-convolutions: the input is saved compressed; backward is ``aten.convolution_backward``."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from ._qlayer import (
    AmpFunction,
    cast_for_autocast,
    compress_active,
    get_scheme,
    load_input,
    run_twin,
    save_input,
)

__all__ = ['QConv1d', 'QConv2d', 'QConv3d', 'QConvTranspose1d', 'QConvTranspose2d',
           'QConvTranspose3d', 'conv_function']


class _ConvFunction(AmpFunction):
    """``aten.convolution`` that keeps its input compressed for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                padding: List[int], dilation: List[int], transposed: bool,
                output_padding: List[int], groups: int, scheme: Any) -> Tensor:
        out = torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, transposed,
                                         output_padding, groups)
        save_input(ctx, x, scheme, needed=ctx.needs_input_grad[1])
        ctx.save_for_backward(ctx.x_exact, weight)
        ctx.x_exact = None
        ctx.conf = (None if bias is None else list(bias.shape), stride, padding, dilation,
                    transposed, output_padding, groups)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x_exact, weight = ctx.saved_tensors
        x = load_input(ctx, x_exact)
        ctx.scheme.observe_grad(grad_out)
        bias_sizes, stride, padding, dilation, transposed, output_padding, groups = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias_sizes is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
            output_padding, groups, mask)
        return gx, gw, gb, None, None, None, None, None, None, None


def conv_function(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                  output_padding: Sequence[int], groups: int, scheme: Any) -> Tensor:
    """Functional Q-convolution (batched input, explicit integer padding)."""
    x, weight, bias = cast_for_autocast('lower', x, weight, bias)
    return _ConvFunction.apply(x, weight, bias, list(stride), list(padding), list(dilation),
                               transposed, list(output_padding), groups, scheme)


def _same_padding(module: _ConvNd, x: Tensor) -> Tuple[List[int], Optional[List[int]]]:
    """ATen's ``padding='same'``: symmetric part, plus an F.pad list for the odd remainder."""
    dims = len(module.kernel_size)
    left, right = [], []
    for i in range(dims):
        total = module.dilation[i] * (module.kernel_size[i] - 1)
        left.append(total // 2)
        right.append(total - total // 2)
    if left == right:
        return left, None
    pad_nd = [0] * (2 * dims)
    for i in range(dims):
        delta = right[i] - left[i]
        idx = 2 * (dims - 1 - i)
        if delta > 0:
            pad_nd[idx + 1] = delta
        else:
            pad_nd[idx] = delta
            left[i] = right[i]
    return left, pad_nd


class _QConvMixin:
    """Shared forward of QConv1d/2d/3d: same checks and padding handling as the torch twin."""

    _spatial: int

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        rank = self._spatial + 2
        if input.dim() not in (rank - 1, rank) or \
                not compress_active(self, input, weight, bias):
            # the twin (and its error messages)
            return run_twin(super()._conv_forward, input, weight, bias)
        batched = input.dim() == rank
        x = input if batched else input.unsqueeze(0)
        if self.padding_mode != 'zeros':
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: List[int] = [0] * self._spatial
        elif isinstance(self.padding, str):
            if self.padding == 'valid':
                padding = [0] * self._spatial
            else:
                padding, extra = _same_padding(self, x)
                if extra is not None:
                    x = F.pad(x, extra)
        else:
            padding = list(self.padding)
        scheme = get_scheme(self, 'conv', kernel_area=math.prod(self.kernel_size),
                            groups=self.groups)
        out = conv_function(x, weight, bias, self.stride, padding, self.dilation, False,
                            [0] * self._spatial, self.groups, scheme)
        return out if batched else out.squeeze(0)


class QConv1d(_QConvMixin, nn.Conv1d):
    """:class:`torch.nn.Conv1d` that saves its input compressed."""
    _spatial = 1


class QConv2d(_QConvMixin, nn.Conv2d):
    """:class:`torch.nn.Conv2d` that saves its input compressed."""
    _spatial = 2


class QConv3d(_QConvMixin, nn.Conv3d):
    """:class:`torch.nn.Conv3d` that saves its input compressed."""
    _spatial = 3


class _QConvTransposeMixin:
    _spatial: int

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        rank = self._spatial + 2
        if self.padding_mode != 'zeros' or input.dim() not in (rank - 1, rank) or \
                not compress_active(self, input, self.weight, self.bias):
            return run_twin(super().forward, input, output_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, self._spatial, self.dilation)
        batched = input.dim() == rank
        x = input if batched else input.unsqueeze(0)
        scheme = get_scheme(self, 'conv', kernel_area=math.prod(self.kernel_size),
                            groups=self.groups)
        out = conv_function(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            True, output_padding, self.groups, scheme)
        return out if batched else out.squeeze(0)


class QConvTranspose1d(_QConvTransposeMixin, nn.ConvTranspose1d):
    """:class:`torch.nn.ConvTranspose1d` that saves its input compressed."""
    _spatial = 1


class QConvTranspose2d(_QConvTransposeMixin, nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` that saves its input compressed."""
    _spatial = 2


class QConvTranspose3d(_QConvTransposeMixin, nn.ConvTranspose3d):
    """:class:`torch.nn.ConvTranspose3d` that saves its input compressed."""
    _spatial = 3
