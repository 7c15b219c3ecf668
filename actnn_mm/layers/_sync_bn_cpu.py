"""CPU versions of the five ``torch.batch_norm_*`` ops that synchronised batch norm is built from.

torch implements ``batch_norm_stats``, ``batch_norm_gather_stats_with_counts``,
``batch_norm_elemt``, ``batch_norm_backward_reduce`` and ``batch_norm_backward_elemt`` for GPUs
only, which is why ``nn.SyncBatchNorm`` refuses CPU tensors. These are the same formulas in plain
tensor ops (accumulated in fp32, or fp64 for fp64 input), so that :class:`QSyncBatchNorm` also
synchronises over gloo on CPU. Same signatures and return conventions as the torch ops.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ['batch_norm_stats', 'batch_norm_gather_stats_with_counts', 'batch_norm_elemt',
           'batch_norm_backward_reduce', 'batch_norm_backward_elemt']


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype batch norm statistics of ``x`` are accumulated and exchanged in."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reduce_dims(x: Tensor) -> List[int]:
    return [d for d in range(x.dim()) if d != 1]


def per_channel(t: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor shaped to broadcast against ``x`` (N, C, ...)."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def batch_norm_stats(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Local per-channel mean and 1/sqrt(biased var + eps)."""
    xf = x.to(stats_dtype(x))
    var, mean = torch.var_mean(xf, dim=_reduce_dims(x), correction=0)
    return mean, torch.rsqrt(var + eps)


def batch_norm_gather_stats_with_counts(x: Tensor, mean_all: Tensor, invstd_all: Tensor,
                                        running_mean: Optional[Tensor],
                                        running_var: Optional[Tensor], momentum: float,
                                        eps: float, counts: Tensor) -> Tuple[Tensor, Tensor]:
    """Combine the ranks' (mean, invstd, count) into the global batch's statistics (parallel
    variance formula) and update the running statistics in place (unbiased variance)."""
    acc = mean_all.dtype
    n = counts.to(acc).view(-1, 1)
    total = n.sum()
    var_all = invstd_all.reciprocal().square() - eps
    mean = (n * mean_all).sum(0) / total
    var = (n * (var_all + (mean_all - mean).square())).sum(0) / total
    invstd = torch.rsqrt(var + eps)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (total / (total - 1)) if total > 1 else var
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return mean, invstd


def batch_norm_elemt(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                     invstd: Tensor, eps: float) -> Tensor:
    """(x - mean) * invstd * weight + bias, in ``x``'s dtype and memory format."""
    acc = mean.dtype
    scale = invstd if weight is None else invstd * weight.to(acc)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    out = x.to(acc) * per_channel(scale, x) + per_channel(shift, x)
    return out.to(x.dtype)


def batch_norm_backward_reduce(grad_out: Tensor, x: Tensor, mean: Tensor, invstd: Tensor,
                               weight: Optional[Tensor], input_g: bool, weight_g: bool,
                               bias_g: bool
                               ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                          Optional[Tensor]]:
    """Local sums of dy and dy * (x - mean) per channel, and the local weight/bias gradients."""
    acc = mean.dtype
    dims = _reduce_dims(x)
    dy = grad_out.to(acc)
    sum_dy = dy.sum(dims)
    sum_dy_xmu = (dy * (x.to(acc) - per_channel(mean, x))).sum(dims)
    grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if weight_g and weight is not None \
        else None
    grad_bias = sum_dy.to(weight.dtype) if bias_g and weight is not None else None
    if not input_g:
        return None, None, grad_weight, grad_bias
    return sum_dy, sum_dy_xmu, grad_weight, grad_bias


def batch_norm_backward_elemt(grad_out: Tensor, x: Tensor, mean: Tensor, invstd: Tensor,
                              weight: Optional[Tensor], sum_dy: Tensor, sum_dy_xmu: Tensor,
                              count: Tensor) -> Tensor:
    """Input gradient from the globally reduced sums (``count``: every rank's element count)."""
    acc = mean.dtype
    total = count.to(acc).sum()
    mean_dy = sum_dy / total
    mean_dy_xmu = sum_dy_xmu / total
    scale = invstd if weight is None else invstd * weight.to(acc)
    proj = mean_dy_xmu * invstd.square()
    gx = (grad_out.to(acc) - per_channel(mean_dy, x)
          - (x.to(acc) - per_channel(mean, x)) * per_channel(proj, x)) * per_channel(scale, x)
    return gx.to(grad_out.dtype)
