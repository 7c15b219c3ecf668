"""Philox 4x32-10 in int64 torch ops: the same random stream as ``csrc/philox.h``.

Why: the pure-PyTorch reference (tests, and devices without compiled kernels) must draw exactly
the numbers the C++/CUDA kernels draw, so that results can be compared bit for bit. 32-bit
products are split so that no int64 operation overflows.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

M32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

IntLike = Union[int, torch.Tensor]


def _mulhilo(a: torch.Tensor, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for uint32 values held in int64 (products stay < 2^49)."""
    x = a * (b >> 16)
    y = a * (b & 0xFFFF)
    t = x + (y >> 16)
    lo = ((t & 0xFFFF) << 16) | (y & 0xFFFF)
    return t >> 16, lo


def philox4x32_10(c0: IntLike, c1: IntLike, c2: IntLike, c3: IntLike, k0: int, k1: int,
                  device: torch.device | str = 'cpu') -> Tuple[torch.Tensor, ...]:
    """Random123 ``philox4x32_10`` on int64 tensors holding uint32 values (broadcasting)."""
    c = [torch.as_tensor(v, dtype=torch.int64, device=device) for v in (c0, c1, c2, c3)]
    k0 &= M32
    k1 &= M32
    for r in range(10):
        if r > 0:
            k0 = (k0 + PHILOX_W0) & M32
            k1 = (k1 + PHILOX_W1) & M32
        hi0, lo0 = _mulhilo(c[0], PHILOX_M0)
        hi1, lo1 = _mulhilo(c[2], PHILOX_M1)
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return tuple(c)


def philox_words(seed: int, offset: int, counters: torch.Tensor) -> torch.Tensor:
    """The 4 random words of each call ``counters`` (int64) of stream (seed, offset): [..., 4]."""
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    out = philox4x32_10(counters & M32, (counters >> 32) & M32, offset & M32, offset >> 32,
                        seed & M32, seed >> 32, device=counters.device)
    return torch.stack(out, dim=-1)


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    """Uniforms from the 16-bit halves of each word, low half first: (2h + 1) * 2^-17, as in
    ``actnn::uniform16`` (exact in fp32; the midpoints of 2^16 equal cells of [0, 1), so
    stochastic rounding with them is unbiased up to 2^-17 of a step). Shape [..., 2 * W]."""
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1).flatten(-2)
    return (2 * halves + 1).to(torch.float32) * 7.62939453125e-06


def philox_uniform(seed: int, offset: int, first_element: int, numel: int,
                   device: torch.device | str = 'cpu') -> torch.Tensor:
    """Uniforms for elements ``first_element ..`` of the stream (first_element % 8 == 0):
    element e takes 16-bit half e % 2 of word (e % 8) // 2 of call e // 8."""
    assert first_element % 8 == 0 and numel % 8 == 0
    ctr = torch.arange(first_element // 8, (first_element + numel) // 8, dtype=torch.int64,
                       device=device)
    return uniform_from_words(philox_words(seed, offset, ctr)).reshape(-1)
