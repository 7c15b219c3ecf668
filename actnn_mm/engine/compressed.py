"""``compress`` / ``decompress`` and the ``CompressedTensor`` they exchange.

Format (see docs/engine.md): each sample's features, in memory order, in groups of ``group_size``
(tail zero-padded); per group a float32 (min, step); codes of ``b`` bits packed 8 per ``b`` bytes.
Bits are uniform (1, 2, 4, 8) or per sample (int32 [N], 1..8) with per-sample byte offsets.
16 and 32 bits keep the tensor as it is.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Tuple, Union

import torch

from . import _ops
from .layout import SampleLayout, as_int64, check_float_tensor, check_group_size, flatten_samples

UNIFORM_BITS = (1, 2, 4, 8)
PASSTHROUGH_BITS = (16, 32)


@dataclass(eq=False)
class CompressedTensor:
    """A quantized activation: packed codes, per-group (min, step), and what restores the tensor.

    ``payload`` is the packed uint8 codes (or, for 16/32 bits, the original tensor itself),
    ``meta`` float32 [N * Gs * 2] holds (min, step) per group, ``bits`` an int or an int32 [N]
    tensor with ``offsets`` (int64 [N], byte offset of each sample's codes).
    """

    payload: torch.Tensor
    meta: Optional[torch.Tensor]
    bits: Union[int, torch.Tensor]
    offsets: Optional[torch.Tensor]
    layout: SampleLayout
    dtype: torch.dtype
    device: torch.device
    group_size: int
    swap: Any = field(default=None, repr=False)  # set by the L4 swapper (actnn_mm.engine.swap)

    @property
    def shape(self) -> torch.Size:
        return self.layout.shape

    @property
    def is_raw(self) -> bool:
        """True when stored as is (16/32 bits): ``payload`` is the tensor."""
        return self.meta is None

    @property
    def nbytes(self) -> int:
        """Bytes actually held: payload + metadata (+ per-sample bits and offsets)."""
        total = self.payload.numel() * self.payload.element_size()
        for t in (self.meta, self.offsets):
            if t is not None:
                total += t.numel() * t.element_size()
        if isinstance(self.bits, torch.Tensor):
            total += self.bits.numel() * self.bits.element_size()
        return total

    def tensors(self) -> Tuple[Optional[torch.Tensor], ...]:
        bits = self.bits if isinstance(self.bits, torch.Tensor) else None
        return self.payload, self.meta, bits, self.offsets


def payload_bytes(layout: SampleLayout, group_size: int, bits_total: int) -> int:
    """Packed bytes for ``bits_total`` = bits x samples (sum of per-sample bits)."""
    return layout.groups_per_sample(group_size) * (group_size // 8) * bits_total


def _check_bits_tensor(bits: torch.Tensor, x: torch.Tensor, n: int,
                       bits_sum: Optional[int]) -> Tuple[torch.Tensor, int]:
    if bits.dtype.is_floating_point or bits.dtype.is_complex or bits.dtype == torch.bool:
        raise ValueError(f'bits must be an int or an integer tensor of per-sample bits, '
                         f'got a {bits.dtype} tensor')
    if bits.device != x.device:
        raise ValueError(f'bits is on {bits.device} but x is on {x.device}; per-sample bits must '
                         'be on the same device as x')
    if bits.dim() != 1 or bits.numel() != n:
        raise ValueError(f'bits must have shape [{n}] (one value per sample), got '
                         f'{tuple(bits.shape)}')
    bits = bits.to(torch.int32).contiguous()
    if bits_sum is None:
        # Host-side check (a sync on accelerators, which passing bits_sum avoids).
        if n and (int(bits.min()) < 1 or int(bits.max()) > 8):
            raise ValueError(f'per-sample bits must be in 1..8, got values in '
                             f'[{int(bits.min())}, {int(bits.max())}]')
        return bits, int(bits.sum())
    if isinstance(bits_sum, bool) or not isinstance(bits_sum, int):
        raise ValueError(f'bits_sum must be an int, got {bits_sum!r}')
    # Checked on the device without a host round trip (raises at once on CPU); the kernels also
    # bound-check every write, so inconsistent tables decode to NaN, never corrupt memory.
    ok = ((bits >= 1) & (bits <= 8)).all() & (bits.sum() == bits_sum)
    torch._assert_async(ok, 'actnn_mm.compress: per-sample bits must be in 1..8 and sum to '
                            f'bits_sum={bits_sum}')
    return bits, bits_sum


_ROUNDING = threading.local()


@contextmanager
def rounding_generator(generator: Optional[torch.Generator]) -> Iterator[None]:
    """Draw stochastic rounding from ``generator`` (in this thread) when a call names none.

    A CPU generator serves tensors of every device (one host draw per call, like the default);
    a CUDA generator serves CUDA tensors (its graph-safe Philox state).

    By default rounding draws from torch's default CPU generator, so after conversion the
    model's own CPU random ops (dropout, proposal sampling, masking) see a different stream than
    in the exact model with the same seed. With a generator of its own the model's stream is
    untouched: exact and compressed runs of one seed then differ by the compression alone.
    ``None`` restores the default inside the block.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f'generator must be a torch.Generator or None, got '
                         f'{type(generator).__name__}')
    previous = getattr(_ROUNDING, 'generator', None)
    _ROUNDING.generator = generator
    try:
        yield
    finally:
        _ROUNDING.generator = previous


def _random_stream(x: torch.Tensor, generator: Optional[torch.Generator], seed: Optional[int],
                   offset: int, stochastic: bool = True
                   ) -> Tuple[bool, int, int, Optional[torch.Generator]]:
    """(use_generator, seed, offset, generator) for the op: an explicit seed, else the given
    generator, else the :func:`rounding_generator` in force, else the torch generator."""
    if generator is None and seed is None and stochastic:
        generator = getattr(_ROUNDING, 'generator', None)
        if generator is not None and generator.device.type == 'cpu':
            # The (seed, offset) pair the default path draws, from this generator: the same
            # host draw for tensors of any device.
            seed, offset = torch.randint(0, 2**63 - 1, (2, ), generator=generator).tolist()
            generator = None
    if seed is not None:
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f'seed must be an int in [0, 2**64), got {seed!r}')
        return False, as_int64(seed), as_int64(offset), generator
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f'generator must be a torch.Generator, got {type(generator).__name__}')
        if generator.device.type != x.device.type:
            raise ValueError(f'generator is on {generator.device} but x is on {x.device}')
    return True, 0, 0, generator


def compress(x: torch.Tensor, bits: Union[int, torch.Tensor] = 2, *, group_size: int = 256,
             stochastic: bool = True, generator: Optional[torch.Generator] = None,
             seed: Optional[int] = None, offset: int = 0,
             bits_sum: Optional[int] = None) -> CompressedTensor:
    """Quantize ``x`` per group with ``bits`` (1, 2, 4, 8; 16/32 = kept as is; or int tensor [N]).

    Stochastic rounding (unbiased) draws from the Philox stream ``seed`` (and ``offset``), else
    from one (seed, offset) drawn from ``generator``, else from torch's default CPU generator
    whatever the device: the same ``seed`` or the same ``torch.manual_seed`` gives the same bytes
    on CPU and CUDA. (Under CUDA graph capture, and with an explicit CUDA generator, the CUDA
    generator's graph-safe Philox state is used instead, so each replay draws anew.)
    ``stochastic=False`` rounds to nearest (deterministic, for tests).
    ``bits_sum``: the sum of per-sample bits when the caller knows it on the host; with it a
    CUDA tensor of bits is used without any device-to-host synchronisation.
    """
    if not isinstance(bits, torch.Tensor) and (
            isinstance(bits, bool) or not isinstance(bits, int)
            or bits not in UNIFORM_BITS + PASSTHROUGH_BITS):
        raise ValueError(f'bits must be one of {UNIFORM_BITS + PASSTHROUGH_BITS} or an integer '
                         f'tensor of per-sample bits, got {bits!r}')
    return _compress_impl(x, bits, group_size=group_size, stochastic=stochastic,
                          generator=generator, seed=seed, offset=offset, bits_sum=bits_sum)


def _compress_impl(x: torch.Tensor, bits: Union[int, torch.Tensor], *, group_size: int = 256,
                   stochastic: bool = True, generator: Optional[torch.Generator] = None,
                   seed: Optional[int] = None, offset: int = 0,
                   bits_sum: Optional[int] = None) -> CompressedTensor:
    """``compress`` accepting any uniform bits in 1..8 (per-layer allocation may pick 3, 5..)."""
    check_float_tensor(x)
    check_group_size(group_size)
    x = x.detach()
    buf, layout = flatten_samples(x)
    n = layout.num_samples
    use_gen, s, o, generator = _random_stream(x, generator, seed, offset, stochastic)
    if isinstance(bits, torch.Tensor):
        sample_bits, total = _check_bits_tensor(bits, x, n, bits_sum)
        per_bit = layout.groups_per_sample(group_size) * (group_size // 8)
        sizes = sample_bits.to(torch.int64) * per_bit
        offsets = torch.cumsum(sizes, 0) - sizes
        nbytes = payload_bytes(layout, group_size, total)
        payload, meta = _ops.quantize(buf, n, group_size, 0, sample_bits, offsets, nbytes,
                                      bool(stochastic), s, o, use_gen, generator)
        return CompressedTensor(payload, meta, sample_bits, offsets, layout, x.dtype, x.device,
                                group_size)
    if bits in PASSTHROUGH_BITS:
        return CompressedTensor(x, None, bits, None, layout, x.dtype, x.device, group_size)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f'bits must be an int in 1..8 (or 16/32), got {bits!r}')
    nbytes = payload_bytes(layout, group_size, bits * n)
    payload, meta = _ops.quantize(buf, n, group_size, bits, None, None, nbytes, bool(stochastic),
                                  s, o, use_gen, generator)
    return CompressedTensor(payload, meta, bits, None, layout, x.dtype, x.device, group_size)


@dataclass(frozen=True)
class Affine:
    """A pre-transform ``(x - shift) * scale`` the kernel applies before quantizing, so that a
    normalisation layer saves its normalised input without running elementwise ops for it.

    ``dim``: shift/scale hold one value per index of that dim (batch norm: dim 1, whatever the
    memory format). ``block``: one value per run of ``block`` consecutive elements in the
    tensor's logical order (contiguous, or copied to contiguous; a dense permuted layout such as
    channels_last is refused) (layer norm rows: block = normalised numel; group norm of an NCHW
    tensor: block = C / groups * H * W). The result is rounded to x's dtype before quantizing, like
    ``((x - shift) * scale).to(x.dtype)``.
    """

    shift: torch.Tensor
    scale: torch.Tensor
    dim: Optional[int] = 1
    block: Optional[int] = None

    def kernel_args(self, x: torch.Tensor, perm: Optional[Tuple[int, ...]]
                    ) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """(shift, scale, inner, period) of the op for x flattened in memory order ``perm``."""
        if self.block is not None:
            if perm is not None:
                raise ValueError('Affine(block=...) needs a contiguous tensor, got strides '
                                 f'{x.stride()} for shape {tuple(x.shape)}')
            if self.block < 1 or x.numel() % self.block:
                raise ValueError(f'Affine block {self.block} must divide numel {x.numel()}')
            inner, period = self.block, x.numel() // self.block
        else:
            dim = self.dim if self.dim >= 0 else self.dim + x.dim()
            if not 0 <= dim < x.dim():
                raise ValueError(f'Affine dim {self.dim} out of range for a {x.dim()}-d tensor')
            inner, period = SampleLayout(x.shape, perm, 0, 0).dim_runs(dim)
        out = []
        for name, t in (('shift', self.shift), ('scale', self.scale)):
            if not isinstance(t, torch.Tensor) or t.numel() != period:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f'Affine {name} must have {period} values, got {got}')
            if t.device != x.device:
                raise ValueError(f'Affine {name} is on {t.device} but x is on {x.device}')
            t = t.detach().reshape(-1)
            if t.dtype != torch.float32:
                t = t.to(torch.float32)
            out.append(t if t.is_contiguous() else t.contiguous())
        return out[0], out[1], max(1, inner), max(1, period)


def compress_fused(x: torch.Tensor, bits: int, *, total_bits: int = 0, min_bits: int = 1,
                   max_bits: int = 8, group_size: int = 256, stochastic: bool = True,
                   affine: Optional[Affine] = None, stats: Optional[torch.Tensor] = None,
                   stats_factor: float = 1.0, generator: Optional[torch.Generator] = None,
                   seed: Optional[int] = None, offset: int = 0) -> CompressedTensor:
    """One op for everything a saved tensor needs in forward (see ``actnn_mm::compress``).

    ``bits`` 1..8: uniform; ``bits=0``: per-sample bits in [min_bits, max_bits] summing to
    ``total_bits`` (a host number), chosen on the device from the per-sample sum of squared group
    ranges. ``affine``: normalise before quantizing. ``stats``: a float32 device tensor whose
    element 0 gets the mean per-sample range statistic times ``stats_factor`` added.
    """
    check_float_tensor(x)
    check_group_size(group_size)
    x = x.detach()
    buf, layout = flatten_samples(x)
    n = layout.num_samples
    use_gen, s, o, generator = _random_stream(x, generator, seed, offset, stochastic)
    shift = scale = None
    inner = period = 1
    if affine is not None:
        shift, scale, inner, period = affine.kernel_args(x, layout.perm)
    payload, meta, sbits, offs = _ops.compress(
        buf, n, group_size, int(bits), int(total_bits), int(min_bits), int(max_bits), shift,
        scale, inner, period, stats, float(stats_factor), bool(stochastic), s, o, use_gen,
        generator)
    if bits == 0:
        return CompressedTensor(payload, meta, sbits, offs, layout, x.dtype, x.device,
                                group_size)
    return CompressedTensor(payload, meta, int(bits), None, layout, x.dtype, x.device,
                            group_size)


def decompress(c: CompressedTensor) -> torch.Tensor:
    """Inverse of ``compress``: same shape, dtype, device and memory format (strides)."""
    if not isinstance(c, CompressedTensor):
        raise ValueError(f'decompress expects a CompressedTensor, got {type(c).__name__}')
    if c.swap is not None:
        c.swap.fetch(c)  # L4: bring the payload back from host memory (prefetched if possible)
    if c.is_raw:
        return c.payload
    lay = c.layout
    if isinstance(c.bits, torch.Tensor):
        flat = _ops.dequantize(c.payload, c.meta, lay.num_samples, lay.numel_per_sample,
                               c.group_size, 0, c.bits, c.offsets, c.dtype)
    else:
        flat = _ops.dequantize(c.payload, c.meta, lay.num_samples, lay.numel_per_sample,
                               c.group_size, c.bits, None, None, c.dtype)
    return lay.restore(flat)
