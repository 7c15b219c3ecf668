"""Pure-PyTorch reference of the compression kernels: the same arithmetic, op for op, and the
same Philox random stream, so its output equals the compiled kernels' bit for bit.

Why it exists: the property tests compare the kernels against it, and devices without compiled
kernels (e.g. MPS, or a build without CUDA kernels) run it instead (with a warning: it is slow and
allocates several temporaries of the input's size in fp32/int64).

Every function here has the argument list of the matching ``torch.ops.actnn_mm`` operator.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .philox import philox_uniform

FLT_MAX = torch.finfo(torch.float32).max


def _layout(numel: int, num_samples: int, group_size: int) -> Tuple[int, int, int]:
    if group_size < 8 or group_size > 4096 or group_size % 8:
        raise ValueError(f'group_size must be a multiple of 8 in [8, 4096], got {group_size}')
    if num_samples == 0:
        return 0, 0, 0
    d = numel // num_samples
    return num_samples, d, -(-d // group_size)


def _padded_groups(x: torch.Tensor, n: int, d: int, gs: int, g: int):
    """[N, Gs, G] fp32 values (padding 0) and a mask of the valid (unpadded) positions."""
    xf = x.reshape(n, d).to(torch.float32)
    xp = torch.nn.functional.pad(xf, (0, gs * g - d)).reshape(n, gs, g)
    valid = (torch.arange(gs * g, device=x.device) < d).reshape(1, gs, g)
    return xp, valid


def _minmax(xp: torch.Tensor, valid: torch.Tensor):
    """(min, max, non-finite) per group over valid elements; zeros canonicalised to +0."""
    inf = torch.tensor(float('inf'), device=xp.device)
    bad = (~torch.isfinite(xp) & valid).any(-1)
    mn = torch.where(valid, xp, inf).amin(-1) + 0.0
    mx = torch.where(valid, xp, -inf).amax(-1) + 0.0
    return mn, mx, bad


def _bits_per_sample(n: int, bits: int, sample_bits: Optional[torch.Tensor],
                     device) -> torch.Tensor:
    if sample_bits is None:
        return torch.full((n,), bits, dtype=torch.int64, device=device)
    return sample_bits.to(torch.int64)


def _pack_rows(q: torch.Tensor, b: int) -> torch.Tensor:
    """[..., 8k] values of b bits -> [..., k*b] bytes (value j at bits [j*b, (j+1)*b))."""
    shape = q.shape[:-1]
    q = q.reshape(*shape, -1, 8, 1)
    bits = (q >> torch.arange(b, device=q.device)) & 1            # [..., k, 8, b]
    bits = bits.reshape(*shape, -1, b, 8)                          # stream of 8b bits -> b bytes
    byte = (bits << torch.arange(8, device=q.device)).sum(-1)
    return byte.reshape(*shape, -1).to(torch.uint8)


def _unpack_rows(p: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of ``_pack_rows``: [..., k*b] bytes -> [..., 8k] int64 values."""
    shape = p.shape[:-1]
    p = p.to(torch.int64).reshape(*shape, -1, b, 1)
    bits = (p >> torch.arange(8, device=p.device)) & 1             # [..., k, b, 8]
    bits = bits.reshape(*shape, -1, 8, b)
    q = (bits << torch.arange(b, device=p.device)).sum(-1)
    return q.reshape(*shape, -1)


def _sample_spans(n: int, gs: int, g: int, bits_n: torch.Tensor,
                  sample_offsets: Optional[torch.Tensor]) -> torch.Tensor:
    if sample_offsets is not None:
        return sample_offsets.to(torch.int64)
    per = gs * (g // 8) * bits_n
    return torch.cumsum(per, 0) - per


def quantize(x: torch.Tensor, num_samples: int, group_size: int, bits: int,
             sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
             payload_bytes: int, stochastic: bool, seed: int, offset: int,
             use_generator: bool = False, generator: Optional[torch.Generator] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``actnn_mm::quantize`` -> (payload uint8, meta float32 [N*Gs*2])."""
    if use_generator and stochastic:
        seed, offset = draw_seed_offset(generator, x.device)
    n, d, gs = _layout(x.numel(), num_samples, group_size)
    g = group_size
    dev = x.device
    payload = torch.zeros(payload_bytes, dtype=torch.uint8, device=dev)
    if n * gs == 0:
        return payload, torch.empty(0, dtype=torch.float32, device=dev)
    xp, valid = _padded_groups(x, n, d, gs, g)
    mn, mx, bad = _minmax(xp, valid)
    bits_n = _bits_per_sample(n, bits, sample_bits, dev)
    big_b = ((1 << bits_n) - 1).to(torch.float32).reshape(n, 1)
    rng = mx - mn
    bad = bad | ~torch.isfinite(rng)
    zero = torch.zeros((), device=dev)
    scale = torch.where(rng > 0, big_b / rng, zero)
    scale = torch.where(scale <= FLT_MAX, scale, zero)
    step = torch.where(scale > 0, rng / big_b, zero)
    if stochastic:
        u = philox_uniform(seed, offset, 0, n * gs * g, dev).reshape(n, gs, g)
    else:
        u = torch.full((), 0.5, device=dev)
    t = torch.floor((xp - mn[..., None]) * scale[..., None] + u)
    t = torch.minimum(t.clamp_min(0.0), big_b.reshape(n, 1, 1))
    q = torch.where(valid & ~bad[..., None], t, zero).to(torch.int64)
    nan = torch.tensor(float('nan'), device=dev)
    meta = torch.stack([torch.where(bad, nan, mn), torch.where(bad, nan, step)], -1).reshape(-1)
    starts = _sample_spans(n, gs, g, bits_n, sample_offsets)
    for b in torch.unique(bits_n).tolist():
        rows = (bits_n == b).nonzero().reshape(-1)
        packed = _pack_rows(q[rows].reshape(rows.numel(), gs * g), b)
        idx = starts[rows].reshape(-1, 1) + torch.arange(packed.shape[1], device=dev)
        payload[idx.reshape(-1)] = packed.reshape(-1)
    return payload, meta


def dequantize(payload: torch.Tensor, meta: torch.Tensor, num_samples: int,
               numel_per_sample: int, group_size: int, bits: int,
               sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    """Reference of ``actnn_mm::dequantize`` -> flat tensor of ``dtype``."""
    n, d, gs = _layout(num_samples * numel_per_sample, num_samples, group_size)
    g = group_size
    dev = payload.device
    if n * gs == 0:
        return torch.empty(num_samples * numel_per_sample, dtype=dtype, device=dev)
    bits_n = _bits_per_sample(n, bits, sample_bits, dev)
    starts = _sample_spans(n, gs, g, bits_n, sample_offsets)
    q = torch.zeros(n, gs * g, dtype=torch.int64, device=dev)
    for b in torch.unique(bits_n).tolist():
        rows = (bits_n == b).nonzero().reshape(-1)
        nbytes = gs * (g // 8) * b
        idx = starts[rows].reshape(-1, 1) + torch.arange(nbytes, device=dev)
        q[rows] = _unpack_rows(payload[idx.reshape(-1)].reshape(rows.numel(), nbytes), b)
    m = meta.reshape(n, gs, 1, 2)
    out = q.reshape(n, gs, g).to(torch.float32) * m[..., 1] + m[..., 0]
    return out.reshape(n, gs * g)[:, :d].to(dtype).reshape(-1)


def bn_backward(grad: torch.Tensor, payload: torch.Tensor, meta: torch.Tensor, num_samples: int,
                numel_per_sample: int, group_size: int, bits: int,
                sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
                scale: Optional[torch.Tensor], channel_inner: int, channels: int,
                input_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of ``actnn_mm::bn_backward`` -> (grad_input flat or [0], grad_weight, grad_bias):
    x_hat dequantized, then batch norm's backward with mean 0 and invstd 1 (sums in float64)."""
    xh = dequantize(payload, meta, num_samples, numel_per_sample, group_size, bits, sample_bits,
                    sample_offsets, grad.dtype).to(torch.float32)
    outer = numel_per_sample // (channels * channel_inner) if channels * channel_inner else 0
    shape = (num_samples, outer, channels, channel_inner)
    dy = grad.to(torch.float32).reshape(shape)
    xh = xh.reshape(shape)
    sum_dy = dy.double().sum((0, 1, 3))
    sum_dyx = (dy.double() * xh.double()).sum((0, 1, 3))
    gw, gb = sum_dyx.to(torch.float32), sum_dy.to(torch.float32)
    if not input_grad:
        return grad.new_empty(0), gw, gb
    m = max(1, num_samples * outer * channel_inner)
    per_channel = (1, 1, channels, 1)
    mean_dy = (sum_dy / m).to(torch.float32).reshape(per_channel)
    k = (sum_dyx / m).to(torch.float32).reshape(per_channel)
    gx = (dy - mean_dy) - xh * k
    if scale is not None:
        gx = gx * scale.reshape(per_channel)
    return gx.to(grad.dtype).reshape(-1), gw, gb


def group_minmax(x: torch.Tensor, num_samples: int, group_size: int) -> torch.Tensor:
    """Reference of ``actnn_mm::group_minmax`` -> float32 [N*Gs*2] (NaN for non-finite)."""
    n, d, gs = _layout(x.numel(), num_samples, group_size)
    if n * gs == 0:
        return torch.empty(0, dtype=torch.float32, device=x.device)
    xp, valid = _padded_groups(x, n, d, gs, group_size)
    mn, mx, bad = _minmax(xp, valid)
    nan = torch.tensor(float('nan'), device=x.device)
    return torch.stack([torch.where(bad, nan, mn), torch.where(bad, nan, mx)], -1).reshape(-1)


def pack_bits(values: torch.Tensor, nbits: int) -> torch.Tensor:
    """Reference of ``actnn_mm::pack_bits``: low ``nbits`` of each value, 8 values per nbits
    bytes."""
    v = values.reshape(-1).to(torch.int64) & ((1 << nbits) - 1)
    v = torch.nn.functional.pad(v, (0, (-v.numel()) % 8))
    return _pack_rows(v, nbits)


def unpack_bits(packed: torch.Tensor, numel: int, nbits: int) -> torch.Tensor:
    """Reference of ``actnn_mm::unpack_bits`` -> uint8 [numel]."""
    return _unpack_rows(packed, nbits)[:numel].to(torch.uint8)


def draw_seed_offset(generator: Optional[torch.Generator],
                     device: torch.device) -> Tuple[int, int]:
    """Two 63-bit numbers from ``generator``, else from torch's default *CPU* generator whatever
    ``device`` is: the kernels' draw (``draw_cpu_seed_offset`` in csrc/cpu/quantize_cpu.cpp), so
    one ``torch.manual_seed`` gives one stream on every device. Host values."""
    gen_device = generator.device if generator is not None else torch.device('cpu')
    r = torch.randint(0, 2**63 - 1, (2,), generator=generator, device=gen_device)
    s, o = r.tolist()
    return int(s), int(o)


# ---- fused compression (actnn_mm::compress) --------------------------------------------------

def transformed(x: torch.Tensor, shift: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                inner: int, period: int) -> torch.Tensor:
    """x (flat) with the op's affine pre-transform: ``((x - shift[i]) * scale[i]).to(x.dtype)``,
    i = (e // inner) % period for element e; x itself without shift/scale."""
    if shift is None:
        return x
    idx = torch.div(torch.arange(x.numel(), device=x.device), inner,
                    rounding_mode='floor') % period
    v = (x.reshape(-1).to(torch.float32) - shift[idx]) * scale[idx]
    return v.to(x.dtype)


def sample_range_sums(mn: torch.Tensor, mx: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Per sample, sum of squared group ranges (NaN for non-finite groups), fp32 in group order
    (one rounding per addition, as the kernels add them)."""
    nan = torch.tensor(float('nan'), device=mn.device)
    r = torch.where(bad, nan, mx) - torch.where(bad, nan, mn)
    r2 = r * r
    acc = torch.zeros(r2.shape[0], dtype=torch.float32, device=r2.device)
    for g in range(r2.shape[1]):
        acc = acc + r2[:, g]
    return acc


def bit_weights(min_bits: int, max_bits: int, device) -> torch.Tensor:
    """``bit_weight(b)`` of csrc/quant_common.h for b = max_bits .. min_bits + 1, fp32."""
    b = torch.arange(max_bits, min_bits, -1, device=device)
    lo = ((1 << (b - 1)) - 1).to(torch.float32)
    hi = ((1 << b) - 1).to(torch.float32)
    one = torch.ones((), dtype=torch.float32, device=device)
    return torch.div(one, lo * lo) - torch.div(one, hi * hi)


def allocate_bits(sens: torch.Tensor, total_bits: int, min_bits: int,
                  max_bits: int) -> torch.Tensor:
    """Per-sample bits (int32) of the kernels' greedy: remove the k = N * max_bits - total_bits
    cheapest (sample, bit) items, ordered by (cost, sample * levels + level); unique keys make
    the set well defined (ties go to the lower index), and a sample's chosen items are its
    highest bits because its costs never fall as the bits fall."""
    n = sens.numel()
    bits = torch.full((n,), max_bits, dtype=torch.int32, device=sens.device)
    levels = max_bits - min_bits
    k = n * max_bits - total_bits
    if k == 0:
        return bits
    c = torch.nan_to_num(sens.to(torch.float32), nan=0.0, posinf=FLT_MAX).clamp_min(0.0)
    cost = c.reshape(n, 1) * bit_weights(min_bits, max_bits, sens.device).reshape(1, levels)
    cost = cost + 0.0
    index = torch.arange(n * levels, device=sens.device).reshape(n, levels)
    keys = (cost.view(torch.int32).to(torch.int64) << 32) | index
    kth = torch.kthvalue(keys.reshape(-1), k).values
    return bits - (keys <= kth).sum(1).to(torch.int32)


def compress(x: torch.Tensor, num_samples: int, group_size: int, bits: int, total_bits: int,
             min_bits: int, max_bits: int, shift: Optional[torch.Tensor],
             scale: Optional[torch.Tensor], affine_inner: int, affine_period: int,
             stats: Optional[torch.Tensor], stats_factor: float, stochastic: bool, seed: int,
             offset: int, use_generator: bool = False,
             generator: Optional[torch.Generator] = None):
    """Reference of ``actnn_mm::compress`` -> (payload, meta, sample_bits, sample_offsets)."""
    if use_generator and stochastic:
        seed, offset = draw_seed_offset(generator, x.device)
    n, d, gs = _layout(x.numel(), num_samples, group_size)
    g = group_size
    dev = x.device
    per_sample = bits == 0
    per_bit = gs * (g // 8)
    nbytes = per_bit * (total_bits if per_sample else n * bits)
    sample_bits = torch.empty(n if per_sample else 0, dtype=torch.int32, device=dev)
    offsets = torch.empty(n if per_sample else 0, dtype=torch.int64, device=dev)
    if n * gs == 0:
        return (torch.empty(nbytes, dtype=torch.uint8, device=dev),
                torch.empty(0, dtype=torch.float32, device=dev), sample_bits, offsets)
    v = transformed(x.reshape(-1), shift, scale, affine_inner, affine_period)
    if per_sample or stats is not None:
        xp, valid = _padded_groups(v, n, d, gs, g)
        mn, mx, bad = _minmax(xp, valid)
        rsq = sample_range_sums(mn, mx, bad)
        if stats is not None:
            clean = torch.nan_to_num(rsq, nan=0.0, posinf=0.0)
            s = torch.zeros((), dtype=torch.float32, device=dev)
            for i in range(n):
                s = s + clean[i]
            f32 = lambda val: torch.tensor(val, dtype=torch.float32, device=dev)  # noqa: E731
            stats[0] = stats[0] + (s / f32(float(n))) * f32(stats_factor)
        if per_sample:
            sample_bits = allocate_bits(rsq, total_bits, min_bits, max_bits)
            sizes = sample_bits.to(torch.int64) * per_bit
            offsets = torch.cumsum(sizes, 0) - sizes
    payload, meta = quantize(v, n, g, 0 if per_sample else bits,
                             sample_bits if per_sample else None,
                             offsets if per_sample else None, nbytes, stochastic, seed, offset)
    return payload, meta, sample_bits, offsets


def accumulate_sq_norm(g: torch.Tensor, acc: torch.Tensor, index: int, scale: float) -> None:
    """Reference of ``actnn_mm::accumulate_sq_norm``: acc[index] += scale * sum(g^2) (float64
    sum; the kernel's block order may differ in the last bits: a statistic, not packed data)."""
    total = g.detach().to(torch.float64).pow(2).sum() * scale
    acc[index] = (acc[index].to(torch.float64) + total).to(torch.float32)


# ---- fused masks ------------------------------------------------------------------------------

def pack_nonzero(x: torch.Tensor, positive: bool) -> torch.Tensor:
    """Reference of ``actnn_mm::pack_nonzero``: 1 bit per element, x > 0 or x != 0."""
    bits = (x > 0) if positive else (x != 0)
    return pack_bits(bits.reshape(-1), 1)


def unpack_mask(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Reference of ``actnn_mm::unpack_mask`` -> 0/1 of ``dtype``, [numel]."""
    return unpack_bits(packed, numel, 1).to(dtype)


def mask_grad(grad: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Reference of ``actnn_mm::mask_grad``: grad where the bit is set, else 0."""
    keep = unpack_bits(packed, grad.numel(), 1).view(torch.bool).reshape(grad.shape)
    return torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
