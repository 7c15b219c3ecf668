"""How a tensor is laid out for the kernels: samples outermost, features in memory order.

Why memory order: a channels_last activation is quantized as the NHWC buffer it already is (no
copy) and comes back channels_last; any other dense permutation is handled the same way. Only
overlapping or gapped strides are copied to contiguous first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_GROUP_SIZE = 4096


@dataclass(frozen=True)
class SampleLayout:
    """Shape bookkeeping of one tensor seen as [num_samples, numel_per_sample]."""

    shape: torch.Size
    perm: Optional[Tuple[int, ...]]  # dims order of the buffer (None: plain contiguous)
    num_samples: int
    numel_per_sample: int

    def groups_per_sample(self, group_size: int) -> int:
        return -(-self.numel_per_sample // group_size)

    def flatten(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (of this shape, e.g. a gradient) as a 1-d buffer in this layout's memory order:
        no copy when t is already laid out so."""
        if self.perm is not None:
            t = t.permute(self.perm)
        return t.contiguous().reshape(-1)

    def dim_runs(self, dim: int) -> Tuple[int, int]:
        """(inner, period) such that element e of the flat buffer has index
        ``(e // inner) % period`` along ``dim`` (samples are outermost)."""
        order = self.perm if self.perm is not None else tuple(range(len(self.shape)))
        pos = order.index(dim)
        inner = math.prod(int(self.shape[d]) for d in order[pos + 1:])
        return max(1, inner), max(1, int(self.shape[dim]))

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        """View the flat buffer back as a tensor of ``shape`` with the original dims order."""
        if self.perm is None:
            return flat.reshape(self.shape)
        permuted = flat.reshape([self.shape[d] for d in self.perm])
        inverse = [0] * len(self.perm)
        for i, d in enumerate(self.perm):
            inverse[d] = i
        return permuted.permute(inverse)


def num_samples_of(x: torch.Tensor) -> int:
    """Samples are dim 0 for tensors with 2+ dims; 0-d and 1-d tensors are one sample."""
    return int(x.shape[0]) if x.dim() >= 2 else 1


def flatten_samples(x: torch.Tensor) -> Tuple[torch.Tensor, SampleLayout]:
    """(1-d buffer in memory order, layout). Copies only when x is not dense."""
    n = num_samples_of(x)
    d = x.numel() // n if n else 0
    perm: Optional[Tuple[int, ...]] = None
    if x.is_contiguous():
        buf = x.reshape(-1)
    else:
        buf = None
        if x.dim() >= 2:
            # Dims by decreasing stride, samples kept outermost: dense permutations need no copy.
            order = (0,) + tuple(sorted(range(1, x.dim()), key=lambda i: (-x.stride(i), i)))
            xp = x.permute(order)
            if xp.is_contiguous():
                buf, perm = xp.reshape(-1), order
        if buf is None:
            buf = x.contiguous().reshape(-1)
    return buf, SampleLayout(x.shape, perm, n, d)


def check_group_size(group_size: int) -> None:
    if (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 8
            or group_size > MAX_GROUP_SIZE or group_size % 8):
        raise ValueError(f'group_size must be a multiple of 8 in [8, {MAX_GROUP_SIZE}], '
                         f'got {group_size!r}')


def check_float_tensor(x: object, name: str = 'x') -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f'{name} must be a float32, float16 or bfloat16 tensor, got {x.dtype}')


def as_int64(v: int) -> int:
    """A uint64 (seed, offset) as the signed int64 the op schema carries."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= (1 << 63) else v
