"""Q-normalisation layers: the input is saved normalised and compressed (kept exact when the
level says so, e.g. L1); mean/rstd statistics (one value per channel, row or group) are kept as
they are."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import share_cache
from ..engine.compressed import Affine
from ..engine.norm_backward import bn_backward, bn_backward_supported
from . import _sync_bn_cpu
from ._qlayer import (
    AmpFunction,
    cast_for_autocast,
    compress_active,
    get_scheme,
    load_input,
    run_twin,
    save_input,
    scheme_is_exact,
    suggest_memory_format,
)
from ._sync_bn_cpu import stats_dtype

__all__ = ['QBatchNorm1d', 'QBatchNorm2d', 'QBatchNorm3d', 'QBatchNormXd', 'QSyncBatchNorm',
           'QLayerNorm', 'QGroupNorm', 'batch_norm_function', 'layer_norm_function',
           'group_norm_function', 'group_norm_supported', 'save_normalized_input']


# ---------------------------------------------------------------------------------------------
# Batch norm

def save_normalized_input(ctx: Any, x: Tensor, mean: Tensor, invstd: Tensor,
                          scheme: Any) -> None:
    """Save a normalisation layer's input for backward: exact as is, else *normalised* and
    compressed.

    ``mean``/``invstd`` broadcast against ``x`` (per channel for batch norm, per row for layer
    norm, per sample and group for group norm). Every norm backward reads its input only through
    x_hat = (x - mean) * invstd. Quantizing x itself puts each quantization group's step (set by
    the widest channel/row in the group) against channels/rows whose spread can be far smaller,
    and invstd (up to 1/sqrt(eps)) multiplies that error: ResNet-50 at L3 on 32x32 inputs,
    batch 2 (1x1 maps, 2 values per BN channel) got weight gradients of 1e19-1e22; DeiT's first
    LayerNorm (rows of cls_token + pos_embed with a spread of ~0.02) gave gradients 1e5x the
    minibatch noise. x_hat has unit spread in every channel/row, so the error stays a fraction of
    a step of a unit-scale tensor. One elementwise pass (a kernel could fuse it into the
    quantizer). Sets ``ctx.normalized``.
    """
    ctx.normalized = scheme_is_exact(scheme, x) is not True
    if ctx.normalized:
        x = ((x - mean) * invstd).to(x.dtype)
    save_input(ctx, x, scheme)


def save_bn_input(ctx: Any, x: Tensor, mean: Tensor, invstd: Tensor, scheme: Any) -> None:
    """:func:`save_normalized_input` with batch norm's per-channel (C,) statistics, the
    normalisation run inside the compression kernel (an ``Affine`` pre-transform per channel,
    any memory format): no elementwise ops, no x_hat tensor. ``ctx.normalized`` is False when x
    is kept exact as it is."""
    if scheme_is_exact(scheme, x) is True:
        save_input(ctx, x, scheme)
    else:
        save_input(ctx, x, scheme, affine=Affine(mean, invstd, dim=1))
    ctx.normalized = ctx.packed is not None


def save_block_normalized_input(ctx: Any, x: Tensor, mean: Tensor, rstd: Tensor, block: int,
                                scheme: Any, broadcast: Any) -> None:
    """:func:`save_normalized_input` for layer / group norm, whose statistics hold one value
    per run of ``block`` consecutive elements (a row; a sample's group of channels): for a
    contiguous x the normalisation runs inside the compression kernel (an ``Affine`` per
    block), no elementwise ops and no x_hat tensor. Other layouts normalise with elementwise
    ops first (``broadcast()`` gives the statistics shaped to broadcast against x).
    ``ctx.normalized`` is False when x is kept exact as it is."""
    if scheme_is_exact(scheme, x) is True:
        save_input(ctx, x, scheme)
        ctx.normalized = False
        return
    if not x.is_contiguous():
        save_normalized_input(ctx, x, *broadcast(), scheme)
        return
    save_input(ctx, x, scheme, affine=Affine(mean.reshape(-1), rstd.reshape(-1), dim=None,
                                             block=block))
    ctx.normalized = ctx.packed is not None


def bn_backward_args(ctx: Any, weight: Optional[Tensor], mean: Tensor,
                     invstd: Tensor) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """(weight, mean, invstd) for the backward ops given what :func:`save_bn_input` kept: for a
    normalised input x_hat, mean 0, invstd 1 and weight * invstd give the same gradients (the
    input gradient is weight * invstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)); the weight
    gradient is sum(dy * x_hat))."""
    if not ctx.normalized:
        return weight, mean, invstd
    scale = invstd if weight is None else weight.to(invstd.dtype) * invstd
    zeros, ones = _unit_stats(invstd)
    return scale, zeros, ones


def compressed_bn_backward(ctx: Any, grad_out: Tensor, scale: Optional[Tensor],
                           weight: Optional[Tensor], mask: List[bool]
                           ) -> Optional[Tuple[Optional[Tensor], Optional[Tensor],
                                               Optional[Tensor]]]:
    """Batch norm's (grad_input, grad_weight, grad_bias) read from the compressed x_hat in one
    op (``actnn_mm::bn_backward``), or None where that op does not apply (x kept exact; a layout
    or dtype it does not take), for the dequantize + ``native_batch_norm_backward`` path, which
    gives the same gradients. ``scale``: the weight that :func:`bn_backward_args` gives."""
    saved = ctx.packed
    if not ctx.normalized or not isinstance(saved, share_cache.Saved) or saved.scheme is None \
            or saved.shape is not None or not bn_backward_supported(saved.packed, grad_out):
        return None
    saved.scheme.note_backward()
    gx, gw, gb = bn_backward(grad_out, saved.packed, scale, mask[0])
    if weight is not None and gw.dtype != weight.dtype:
        gw, gb = gw.to(weight.dtype), gb.to(weight.dtype)
    return gx, (gw if mask[1] else None), (gb if mask[2] else None)


_UNIT_STATS: Dict[Tuple[int, torch.dtype, torch.device], Tuple[Tensor, Tensor]] = {}


def _unit_stats(like: Tensor) -> Tuple[Tensor, Tensor]:
    """Zeros and ones shaped like ``like`` (read-only inputs of the backward ops), made once per
    (size, dtype, device) instead of twice per backward."""
    key = (like.numel(), like.dtype, like.device)
    pair = _UNIT_STATS.get(key)
    if pair is None:
        pair = _UNIT_STATS[key] = (torch.zeros_like(like), torch.ones_like(like))
    return pair


def normalized_backward_stats(ctx: Any, mean: Tensor, invstd: Tensor
                              ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(mean, invstd, input-gradient scale) for layer/group norm backward ops given what
    :func:`save_normalized_input` kept.

    For a normalised input x_hat the ops run with mean 0 and invstd 1 (they then see x_hat
    itself): the weight and bias gradients, sum(dy * x_hat) and sum(dy), are the same, and the
    input gradient, invstd * (w dy - mean(w dy) - x_hat * mean(w dy x_hat)), lacks only the
    per-row/group factor invstd, returned as the scale (None: nothing to rescale).
    """
    if not ctx.normalized:
        return mean, invstd, None
    return torch.zeros_like(mean), torch.ones_like(invstd), invstd


class _BatchNormFunction(AmpFunction):
    """``aten.native_batch_norm`` (training) with the input saved compressed (normalised)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], momentum: float,
                eps: float, scheme: Any) -> Tensor:
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean,
                                                             running_var, True, momentum, eps)
        save_bn_input(ctx, x, mean, invstd, scheme)
        ctx.save_for_backward(ctx.x_exact, weight, mean, invstd)
        ctx.x_exact = None
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x_exact, weight, mean, invstd = ctx.saved_tensors
        ctx.scheme.observe_grad(grad_out)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                ctx.needs_input_grad[2]]
        w, mean, invstd = bn_backward_args(ctx, weight, mean, invstd)
        fused = compressed_bn_backward(ctx, grad_out, w, weight, mask)
        if fused is not None:
            return (*fused, None, None, None, None, None)
        x = load_input(ctx, x_exact)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, w, None, None, mean, invstd, True, ctx.eps, mask)
        return gx, gw, gb, None, None, None, None, None


def batch_norm_function(x: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], weight: Optional[Tensor],
                        bias: Optional[Tensor], momentum: float, eps: float,
                        scheme: Any) -> Tensor:
    """Functional training-mode Q batch norm (updates the running stats in place)."""
    return _BatchNormFunction.apply(x, weight, bias, running_mean, running_var, momentum, eps,
                                    scheme)


class _QBatchNormMixin:
    """Forward of the Q batch norms: the torch twin's bookkeeping, then the Q Function."""

    def _q_supported(self, input: Tensor) -> bool:
        # Cases where F.batch_norm raises (or returns early) go to the twin unchanged.
        if self.eps <= 0 or input.numel() == 0:
            return False
        return input.numel() // input.size(1) > 1

    def _momentum(self) -> float:
        """Twin's exponential_average_factor, incrementing num_batches_tracked like it."""
        eaf = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                eaf = 1.0 / float(self.num_batches_tracked)
        return eaf

    def _q_forward(self, input: Tensor) -> Tensor:
        eaf = self._momentum()
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        return batch_norm_function(input, running_mean, running_var, self.weight, self.bias,
                                   eaf, self.eps, get_scheme(self, 'norm'))

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not compress_active(self, input, self.weight, self.bias) or \
                not self._q_supported(input):
            return run_twin(super().forward, input)
        return self._q_forward(input)


class QBatchNorm1d(_QBatchNormMixin, nn.BatchNorm1d, _BatchNorm):
    """:class:`torch.nn.BatchNorm1d` that saves its input compressed."""


class QBatchNorm2d(_QBatchNormMixin, nn.BatchNorm2d, _BatchNorm):
    """:class:`torch.nn.BatchNorm2d` that saves its input compressed."""


class QBatchNorm3d(_QBatchNormMixin, nn.BatchNorm3d, _BatchNorm):
    """:class:`torch.nn.BatchNorm3d` that saves its input compressed."""


class QBatchNormXd(_QBatchNormMixin, _BatchNorm):
    """Q twin of mmengine's ``_BatchNormXd`` (any input rank), which mmengine's
    ``revert_sync_batchnorm`` builds in place of (Q)SyncBatchNorm when not distributed."""

    def _check_input_dim(self, input: Tensor) -> None:
        return


def _sync_ops(x: Tensor) -> Any:
    """Where the ``batch_norm_*`` ops of synchronised BN live for ``x``'s device: torch has them
    for GPUs only, :mod:`._sync_bn_cpu` has the same formulas for CPU tensors."""
    return _sync_bn_cpu if x.device.type == 'cpu' else torch


class _SyncBatchNormFunction(AmpFunction):
    """torch's SyncBatchNorm Function (public ``torch.batch_norm_*`` ops), input compressed.

    ``scheme=None``: nothing is saved (no backward will run: e.g. MoCo's key encoder under
    ``no_grad``, which on CPU has no torch twin to fall back to)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float,
                momentum: float, process_group: Any, world_size: int, scheme: Any) -> Tensor:
        ops = _sync_ops(x)
        if not (x.is_contiguous(memory_format=torch.channels_last)
                or x.is_contiguous(memory_format=torch.channels_last_3d)):
            x = x.contiguous()
        if weight is not None:
            weight = weight.contiguous()
        num_channels = x.shape[1]
        if x.numel() > 0:
            mean, invstd = ops.batch_norm_stats(x, eps)
            count = torch.full((1, ), x.numel() // x.size(1), dtype=mean.dtype,
                               device=mean.device)
            combined = torch.cat([mean, invstd, count], dim=0)
        else:
            combined = torch.zeros(2 * num_channels + 1, dtype=stats_dtype(x), device=x.device)
        gathered = [torch.empty_like(combined) for _ in range(world_size)]
        dist.all_gather(gathered, combined, process_group, async_op=False)
        mean_all, invstd_all, count_all = torch.split(torch.stack(gathered, 0), num_channels,
                                                      dim=1)
        keep = count_all.squeeze(-1) >= 1  # drop ranks with empty input
        count_all, mean_all, invstd_all = count_all[keep], mean_all[keep], invstd_all[keep]
        counts = count_all.view(-1)
        if running_mean is not None and counts.dtype != running_mean.dtype:
            counts = counts.to(running_mean.dtype)
        mean, invstd = ops.batch_norm_gather_stats_with_counts(
            x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts)
        if scheme is not None:
            save_bn_input(ctx, x, mean, invstd, scheme)
            ctx.save_for_backward(ctx.x_exact, weight, mean, invstd, count_all.to(torch.int32))
            ctx.x_exact = None
        ctx.process_group = process_group
        ctx.x_shape = x.shape
        if x.numel() > 0:
            return ops.batch_norm_elemt(x, weight, bias, mean, invstd, eps)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        if not (grad_out.is_contiguous(memory_format=torch.channels_last)
                or grad_out.is_contiguous(memory_format=torch.channels_last_3d)):
            grad_out = grad_out.contiguous()
        x_exact, weight, mean, invstd, count = ctx.saved_tensors
        ops = _sync_ops(grad_out)
        gx = gw = gb = None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if math.prod(ctx.x_shape) > 0:
            x = load_input(ctx, x_exact)
            ctx.scheme.observe_grad(grad_out)
            bw_weight, mean, invstd = bn_backward_args(ctx, weight, mean, invstd)
            sum_dy, sum_dy_xmu, gw, gb = ops.batch_norm_backward_reduce(
                grad_out, x, mean, invstd, bw_weight, need_x, need_w and weight is not None,
                need_b and weight is not None)
            if need_x:
                c = sum_dy.shape[0]
                combined = torch.cat([sum_dy, sum_dy_xmu], dim=0)
                dist.all_reduce(combined, dist.ReduceOp.SUM, ctx.process_group, async_op=False)
                sum_dy, sum_dy_xmu = torch.split(combined, c)
                w = bw_weight.to(mean.dtype) if bw_weight is not None and \
                    bw_weight.dtype != mean.dtype else bw_weight
                gx = ops.batch_norm_backward_elemt(grad_out, x, mean, invstd, w, sum_dy,
                                                   sum_dy_xmu, count)
            if weight is None or not need_w:
                gw = None
            if weight is None or not need_b:
                gb = None
        elif need_x:  # participate in the collective so peers do not hang
            combined = torch.zeros(2 * ctx.x_shape[1], dtype=stats_dtype(grad_out),
                                   device=grad_out.device)
            dist.all_reduce(combined, dist.ReduceOp.SUM, ctx.process_group, async_op=False)
        return gx, gw, gb, None, None, None, None, None, None, None


class QSyncBatchNorm(_QBatchNormMixin, nn.SyncBatchNorm, _BatchNorm):
    """:class:`torch.nn.SyncBatchNorm` that saves its input compressed (synced or not).

    Unlike its twin it also synchronises CPU tensors (gloo), with :mod:`._sync_bn_cpu`: torch
    has no CPU kernels for synchronised batch norm, and CPU DDP with SyncBN is what CI can run."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        active = compress_active(self, input, self.weight, self.bias)
        world_size, group = 1, None
        if self._needs_sync():
            if input.device.type not in ('cpu', 'cuda', 'hpu', 'xpu',
                                         torch._C._get_privateuse1_backend_name()):
                return run_twin(nn.SyncBatchNorm.forward, self, input)  # twin raises its error
            group = self.process_group or dist.group.WORLD
            world_size = dist.get_world_size(group)
        if world_size <= 1:  # the twin's own fallback: plain batch norm
            if active and self._q_supported(input):
                return self._q_forward(input)
            return run_twin(_BatchNorm.forward, self, input)
        if not active and input.device.type != 'cpu':
            return run_twin(nn.SyncBatchNorm.forward, self, input)
        eaf = self._momentum()
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                            running_var, self.eps, eaf, group, world_size,
                                            get_scheme(self, 'norm') if active else None)

    def _needs_sync(self) -> bool:
        """The twin's ``need_sync``: training statistics, inside an initialised process group.

        On CPU, where torch's SyncBatchNorm refuses the input, the statistics are synchronised
        with :mod:`._sync_bn_cpu` (gloo)."""
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        return bn_training and self.training and dist.is_available() and dist.is_initialized()


# ---------------------------------------------------------------------------------------------
# Layer norm and group norm

class _LayerNormFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                bias: Optional[Tensor], eps: float, scheme: Any) -> Tensor:
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, normalized_shape, weight, bias,
                                                           eps)
        save_block_normalized_input(ctx, x, mean, rstd, math.prod(normalized_shape), scheme,
                                    lambda: (mean, rstd))  # per-row stats broadcast against x
        ctx.save_for_backward(ctx.x_exact, weight, bias, mean, rstd)
        ctx.x_exact = None
        ctx.normalized_shape = normalized_shape
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x_exact, weight, bias, mean, rstd = ctx.saved_tensors
        x = load_input(ctx, x_exact)
        ctx.scheme.observe_grad(grad_out)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[2],
                bias is not None and ctx.needs_input_grad[3]]
        mean, rstd, gx_scale = normalized_backward_stats(ctx, mean, rstd)
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
            grad_out, x, ctx.normalized_shape, mean, rstd, weight, bias, mask)
        if gx is not None and gx_scale is not None:
            gx = gx * gx_scale.to(gx.dtype)
        return gx, None, gw, gb, None, None


def layer_norm_function(x: Tensor, normalized_shape: Tuple[int, ...], weight: Optional[Tensor],
                        bias: Optional[Tensor], eps: float, scheme: Any) -> Tensor:
    """``F.layer_norm`` saving its input normalised and compressed (``scheme``), autocast as
    torch's (fp32 on CUDA). The caller checks that ``normalized_shape`` ends ``x``'s shape."""
    x, weight, bias = cast_for_autocast('fp32', x, weight, bias)
    return _LayerNormFunction.apply(x, list(normalized_shape), weight, bias, eps, scheme)


class QLayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` that saves its input compressed."""

    def forward(self, input: Tensor) -> Tensor:
        ns = tuple(self.normalized_shape)
        if input.dim() < len(ns) or tuple(input.shape[input.dim() - len(ns):]) != ns or \
                not compress_active(self, input, self.weight, self.bias):
            return run_twin(super().forward, input)
        return layer_norm_function(input, ns, self.weight, self.bias, self.eps,
                                   get_scheme(self, 'norm'))


def per_group(t: Tensor, x: Tensor, groups: int) -> Tensor:
    """Group norm's (N, groups) statistics shaped (N, C, 1, ...) to broadcast against ``x``."""
    n, c = x.shape[0], x.shape[1]
    per_c = t.reshape(n, groups, 1).expand(n, groups, c // groups).reshape(n, c)
    return per_c.view([n, c] + [1] * (x.dim() - 2))


class _GroupNormFunction(AmpFunction):

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                num_groups: int, eps: float, scheme: Any) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        hxw = math.prod(x.shape[2:])
        mf = suggest_memory_format(x) if x.device.type == 'cpu' else torch.contiguous_format
        x = x.contiguous(memory_format=mf)
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hxw,
                                                           num_groups, eps)
        save_block_normalized_input(
            ctx, x, mean, rstd, c // num_groups * hxw, scheme,
            lambda: (per_group(mean, x, num_groups), per_group(rstd, x, num_groups)))
        ctx.save_for_backward(ctx.x_exact, weight, mean, rstd)
        ctx.x_exact = None
        ctx.conf = (n, c, hxw, num_groups, mf)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x_exact, weight, mean, rstd = ctx.saved_tensors
        x = load_input(ctx, x_exact)
        ctx.scheme.observe_grad(grad_out)
        n, c, hxw, groups, mf = ctx.conf
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                weight is not None and ctx.needs_input_grad[2]]
        mean, rstd, gx_scale = normalized_backward_stats(ctx, mean, rstd)
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad_out.contiguous(memory_format=mf), x, mean, rstd, weight, n, c, hxw, groups,
            mask)
        if gx is not None and gx_scale is not None:
            gx = gx * per_group(gx_scale, gx, groups).to(gx.dtype)
        return gx, gw, gb, None, None, None


class QGroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` that saves its input compressed."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.num_channels or \
                not group_norm_supported(input, self.num_groups) or \
                not compress_active(self, input, self.weight, self.bias):
            return run_twin(super().forward, input)
        return group_norm_function(input, self.num_groups, self.weight, self.bias, self.eps,
                                   get_scheme(self, 'norm'))


def group_norm_supported(x: Tensor, num_groups: int) -> bool:
    """Whether the Q group norm takes ``x``: inputs ``F.group_norm`` rejects (channels not
    divisible by groups, its ``_verify_batch_size``) go to torch for its error."""
    if x.dim() < 2 or x.numel() == 0 or not isinstance(num_groups, int) or num_groups < 1 or \
            x.shape[1] % num_groups:
        return False
    return x.shape[0] * x.shape[1] // num_groups * math.prod(x.shape[2:]) > 1


def group_norm_function(x: Tensor, num_groups: int, weight: Optional[Tensor],
                        bias: Optional[Tensor], eps: float, scheme: Any) -> Tensor:
    """``F.group_norm`` saving its input normalised and compressed (``scheme``), autocast as
    torch's; the caller checks :func:`group_norm_supported`."""
    x, weight, bias = cast_for_autocast('fp32', x, weight, bias)
    return _GroupNormFunction.apply(x, weight, bias, num_groups, eps, scheme)
