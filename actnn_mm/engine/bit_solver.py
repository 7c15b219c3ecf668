"""Greedy bit allocation (ActNN's auto-precision), vectorised.

Objective: minimise sum_i C_i / (2^b_i - 1)^2 (the gradient-variance bound) under a bit budget,
b_i integer in [min_bits, max_bits]. Removing one bit from b costs C * delta(b) with
delta(b) = 1/(2^(b-1)-1)^2 - 1/(2^b-1)^2, increasing as b falls. So ActNN's greedy (start at
max_bits, repeatedly remove the cheapest bit) equals taking the k cheapest (sample, bit) pairs
at once (inside the fused compression kernel, by a unique key), and since k is fixed by the
budget (known on the host), the resulting total bits are known on the host too: no
device-to-host synchronisation.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


def level_weights(min_bits: int = 1, max_bits: int = 8) -> List[float]:
    """delta(b) for b = max_bits .. min_bits + 1 (cost of removing the b-th bit, per unit C)."""
    inv = lambda b: 1.0 / float((1 << b) - 1) ** 2  # noqa: E731
    return [inv(b - 1) - inv(b) for b in range(max_bits, min_bits, -1)]


def variance_bound(sens: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """sum C_i / (2^b_i - 1)^2 (proportional to the quantization variance of the gradient)."""
    levels = (torch.pow(2.0, bits.to(torch.float64)) - 1.0)
    return (sens.to(torch.float64) / levels.pow(2)).sum()


def allocate_per_sample(sens: torch.Tensor, total_bits: int, min_bits: int = 1,
                        max_bits: int = 8) -> torch.Tensor:
    """Per-sample bits (int32, on sens.device) summing exactly to ``total_bits``.

    ``sens``: [N] sensitivities C_n (>= 0; NaN treated as 0). ``total_bits`` must be in
    [N * min_bits, N * max_bits]. Runs on the device of ``sens`` (one small selection).
    The greedy of the fused kernel (``actnn_mm::compress``): the removed (sample, bit) items are
    the k cheapest by (cost, sample * levels + level), a unique key, so ties are broken the same
    way on every device (toward lower sample indices, a sample's higher bits first).
    """
    n = sens.numel()
    if not n * min_bits <= total_bits <= n * max_bits:
        raise ValueError(f'total_bits must be in [{n * min_bits}, {n * max_bits}] for {n} '
                         f'samples, got {total_bits}')
    from .reference import allocate_bits
    return allocate_bits(sens.detach(), total_bits, min_bits, max_bits)


def allocate_layers(sens: Sequence[float], features: Sequence[int], samples: Sequence[int],
                    avg_bits: float, min_bits: int = 1, max_bits: int = 8) -> List[float]:
    """Average bits per layer (host floats) for layers l with per-sample sensitivity sens[l],
    ``features[l]`` (packed elements per sample) and ``samples[l]`` samples, so that the
    feature-weighted average is at most ``avg_bits``.

    Greedy over (layer, bit) items of N_l samples each, by cost per feature
    sens * delta(b) / features; a partially taken item gives a fractional layer average.
    Cheap (L x 7 items) and run on the host every ``realloc_interval`` steps.
    """
    nl = len(sens)
    removed = [0] * nl
    weights = level_weights(min_bits, max_bits)
    budget = sum(f * n for f, n in zip(features, samples)) * (max_bits - avg_bits)
    items = []
    for li in range(nl):
        if features[li] <= 0 or samples[li] <= 0:
            continue
        s = max(float(sens[li]), 0.0) if sens[li] == sens[li] else 0.0
        for j, w in enumerate(weights):
            items.append((s * w / features[li], j, li))
    items.sort()
    left = budget
    for _, _, li in items:
        take = min(samples[li], int(left // features[li]))
        if take <= 0:
            continue
        removed[li] += take
        left -= take * features[li]
    return [max_bits - removed[li] / samples[li] if samples[li] > 0 else float(avg_bits)
            for li in range(nl)]
