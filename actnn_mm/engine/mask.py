"""1-bit boolean masks (ReLU, Dropout) and small integer indices (MaxPool window positions).

Both use the kernels' packing (8 values of ``nbits`` bits in ``nbits`` bytes) on the tensor's
memory order, so a channels_last mask stays channels_last without a copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import _ops
from .layout import SampleLayout, flatten_samples

INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(eq=False)
class PackedMask:
    """A boolean tensor stored at 1 bit per element."""

    data: torch.Tensor  # uint8 [ceil(numel / 8)]
    layout: SampleLayout

    @property
    def shape(self) -> torch.Size:
        return self.layout.shape

    @property
    def nbytes(self) -> int:
        return self.data.numel()


@dataclass(eq=False)
class PackedIndex:
    """Small non-negative integers stored at ``nbits`` bits each (1..16)."""

    low: torch.Tensor             # low min(nbits, 8) bits, packed
    high: Optional[torch.Tensor]  # bits 8.. when nbits > 8, packed
    nbits: int
    dtype: torch.dtype
    layout: SampleLayout

    @property
    def shape(self) -> torch.Size:
        return self.layout.shape

    @property
    def nbytes(self) -> int:
        return self.low.numel() + (self.high.numel() if self.high is not None else 0)


def pack_mask(mask: torch.Tensor) -> PackedMask:
    """Pack a bool tensor to 1 bit per element (memory order kept)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f'mask must be a torch.bool tensor, got {got}')
    buf, layout = flatten_samples(mask.detach())
    return PackedMask(_ops.pack_bits(buf, 1), layout)


def unpack_mask(p: PackedMask) -> torch.Tensor:
    """Bool tensor of the original shape and memory format."""
    if not isinstance(p, PackedMask):
        raise ValueError(f'unpack_mask expects a PackedMask, got {type(p).__name__}')
    flat = _ops.unpack_bits(p.data, p.layout.shape.numel(), 1).view(torch.bool)
    return p.layout.restore(flat)


def pack_nonzero(x: torch.Tensor, positive: bool = False) -> PackedMask:
    """The mask ``x != 0`` (or ``x > 0`` with ``positive``) of a float tensor, packed in one op
    without a bool temporary (memory order kept; NaN != 0 is set)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'x must be a floating tensor, got {got}')
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):  # float64: two ops
        return pack_mask((x > 0) if positive else (x != 0))
    buf, layout = flatten_samples(x.detach())
    return PackedMask(_ops.pack_nonzero(buf, bool(positive)), layout)


def unpack_mask_as(p: PackedMask, dtype: torch.dtype) -> torch.Tensor:
    """The mask as 0/1 values of a float ``dtype`` (original shape and memory format), one op."""
    if not isinstance(p, PackedMask):
        raise ValueError(f'unpack_mask_as expects a PackedMask, got {type(p).__name__}')
    flat = _ops.unpack_mask(p.data, p.layout.shape.numel(), dtype)
    return p.layout.restore(flat)


def masked_grad(p: PackedMask, grad: torch.Tensor) -> torch.Tensor:
    """``where(mask, grad, 0)`` in one op when ``grad`` has the mask's memory order (the usual
    case: a gradient laid out like the activation); otherwise unpack, then ``where``."""
    if not isinstance(p, PackedMask):
        raise ValueError(f'masked_grad expects a PackedMask, got {type(p).__name__}')
    if grad.shape == p.layout.shape and grad.dtype in (torch.float32, torch.float16,
                                                       torch.bfloat16):
        buf, layout = flatten_samples(grad)
        if layout.perm == p.layout.perm:  # same memory order as the mask's bits
            return p.layout.restore(_ops.mask_grad(buf, p.data))
    return torch.where(unpack_mask(p), grad, 0)


def pack_index(idx: torch.Tensor, nbits: int, check: bool = True) -> PackedIndex:
    """Pack integers in [0, 2**nbits) (nbits 1..16), e.g. MaxPool argmax within its window.

    Values are checked on CPU; on accelerators an asynchronous device assert checks them (no sync).
    ``check=False`` skips that check for values in range by construction (the Q-layers' own
    window positions): no extra ops, no host read.
    """
    if not isinstance(idx, torch.Tensor) or idx.dtype not in INDEX_DTYPES:
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f'idx must be an integer tensor (uint8/int8/int16/int32/int64), got {got}')
    if isinstance(nbits, bool) or not isinstance(nbits, int) or not 1 <= nbits <= 16:
        raise ValueError(f'nbits must be an int in 1..16, got {nbits!r}')
    buf, layout = flatten_samples(idx.detach())
    info = torch.iinfo(idx.dtype)
    if check and buf.numel() and (info.min < 0 or info.max >= (1 << nbits)):
        # (Python scalars beyond the dtype's range would wrap, so compare only where needed.)
        in_range = (buf >= 0) if info.max < (1 << nbits) else (buf >= 0) & (buf < (1 << nbits))
        in_range = in_range.all()
        if buf.device.type == 'cpu':
            if not bool(in_range):
                raise ValueError(f'idx values must be in [0, {1 << nbits}) for nbits={nbits}, got '
                                 f'[{int(buf.min())}, {int(buf.max())}]')
        else:
            torch._assert_async(in_range, f'actnn_mm.pack_index: idx values must be in '
                                          f'[0, {1 << nbits})')
    if nbits <= 8:
        return PackedIndex(_ops.pack_bits(buf, nbits), None, nbits, idx.dtype, layout)
    wide = buf.to(torch.int32)
    low = _ops.pack_bits(wide & 0xFF, 8)
    high = _ops.pack_bits((wide >> 8).contiguous(), nbits - 8)
    return PackedIndex(low, high, nbits, idx.dtype, layout)


def unpack_index(p: PackedIndex, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Integers of the original shape and memory format (``dtype`` defaults to the original)."""
    if not isinstance(p, PackedIndex):
        raise ValueError(f'unpack_index expects a PackedIndex, got {type(p).__name__}')
    numel = p.layout.shape.numel()
    dtype = dtype or p.dtype
    low = _ops.unpack_bits(p.low, numel, min(p.nbits, 8))
    if p.high is None:
        flat = low.to(dtype)
    else:
        high = _ops.unpack_bits(p.high, numel, p.nbits - 8)
        flat = (high.to(torch.int32) << 8 | low.to(torch.int32)).to(dtype)
    return p.layout.restore(flat)
