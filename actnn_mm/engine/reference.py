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
