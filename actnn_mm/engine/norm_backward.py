"""Batch norm's backward read from its compressed normalised input, in one op.

Dequantizing x_hat and running ``native_batch_norm_backward`` on it writes x_hat out once and
reads it twice; ``actnn_mm::bn_backward`` dequantizes each group into a buffer and consumes it
there, so the backward streams the gradient and the 2-bit codes only.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _ops
from .compressed import CompressedTensor


def bn_backward_supported(c: object, grad: torch.Tensor) -> bool:
    """Whether :func:`bn_backward` takes ``c`` (quantized, not stored as is, with samples on
    dim 0 and channels on dim 1) for this gradient: same shape and dtype, compiled kernels."""
    return (isinstance(c, CompressedTensor) and not c.is_raw and len(c.shape) >= 2
            and grad.shape == c.shape and grad.dtype == c.dtype and grad.device == c.device
            and _ops.has_kernels(grad.device))


def bn_backward(grad: torch.Tensor, c: CompressedTensor, scale: Optional[torch.Tensor],
                input_grad: bool) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(grad_input or None, grad_weight, grad_bias) of a training batch norm whose normalised
    input x_hat = (x - mean) * invstd is ``c`` (channels on dim 1): ``native_batch_norm_backward``
    with mean 0, invstd 1 and weight ``scale`` (= weight * invstd, or invstd) on the decompressed
    x_hat, without decompressing it. Gradients are float32 [C] and ``grad``'s dtype."""
    if c.swap is not None:
        c.swap.fetch(c)  # L4: bring the payload back from host memory
    lay = c.layout
    inner, channels = lay.dim_runs(1)
    if scale is not None:
        scale = scale.detach().to(torch.float32).contiguous()
    if isinstance(c.bits, torch.Tensor):
        bits, sample_bits, offsets = 0, c.bits, c.offsets
    else:
        bits, sample_bits, offsets = int(c.bits), None, None
    gx, gw, gb = _ops.bn_backward(lay.flatten(grad), c.payload, c.meta, lay.num_samples,
                                  lay.numel_per_sample, c.group_size, bits, sample_bits, offsets,
                                  scale, inner, channels, input_grad)
    return (lay.restore(gx) if input_grad else None), gw, gb
