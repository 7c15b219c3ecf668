"""Shared helpers for the engine tests: the kernel/reference pair and per-element quantization
steps, so that each test states its property directly."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from actnn_mm.engine import reference
from actnn_mm.engine.compressed import CompressedTensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_and_reference(x: torch.Tensor, n: int, group_size: int, bits: int,
                         sample_bits: Optional[torch.Tensor], stochastic: bool, seed: int,
                         offset: int = 0) -> Tuple[tuple, tuple]:
    """(payload, meta) from torch.ops.actnn_mm.quantize and from the reference, same arguments."""
    d = x.numel() // n if n else 0
    gs = -(-d // group_size)
    if sample_bits is None:
        offsets, nbytes = None, n * gs * group_size // 8 * bits
    else:
        sizes = sample_bits.to(torch.int64) * (gs * group_size // 8)
        offsets, nbytes = torch.cumsum(sizes, 0) - sizes, int(sizes.sum())
    args = (x.reshape(-1), n, group_size, bits, sample_bits, offsets, nbytes, stochastic, seed,
            offset, False, None)
    return torch.ops.actnn_mm.quantize(*args), reference.quantize(*args)


def element_steps(c: CompressedTensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-element (step, min) of a compressed *contiguous* tensor, shaped like the tensor."""
    lay = c.layout
    n, d, g = lay.num_samples, lay.numel_per_sample, c.group_size
    meta = c.meta.reshape(n, -1, 2)
    step = meta[..., 1].repeat_interleave(g, dim=1)[:, :d]
    mn = meta[..., 0].repeat_interleave(g, dim=1)[:, :d]
    return step.reshape(lay.shape), mn.reshape(lay.shape)


def make_input(shape, dtype: torch.dtype, seed: int, scale: float = 1.0,
               shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)
