"""Statistical unbiasedness: E[decompress(compress(x))] == x for stochastic rounding.

With q = floor(v + u), each reconstruction is m + step * q with variance step^2 p (1 - p) <=
step^2 / 4 (p = frac(v)). Over K independent draws the mean's error is at most z * step /
(2 sqrt(K)) except with probability ~2 Phi(-z) per element; z = 6 over ~1000 elements keeps the
false-alarm probability below 1e-5 (and the seed is fixed, so the test is deterministic).
Round-to-nearest has a bias up to step / 2, i.e. ~sqrt(K) standard errors: the same check must
reject it, which ``test_check_rejects_biased_rounding`` asserts.
"""
from __future__ import annotations

import pytest
import torch
from engine_helpers import element_steps

from actnn_mm.engine import compress, decompress

K = 2000
Z = 6.0


def _max_standardised_bias(x: torch.Tensor, bits: int, stochastic: bool) -> float:
    """max over elements of |mean_K(x^) - x| / (step / (2 sqrt(K))), one batched call."""
    n = x.shape[0]
    reps = x.repeat(K, 1)  # K copies of every sample: same groups, independent random numbers
    c = compress(reps, bits, seed=20240521, stochastic=stochastic)
    y = decompress(c).double().reshape(K, n, -1)
    step, _ = element_steps(c)
    step = step.double().reshape(K, n, -1)[0]
    mean = y.mean(0)
    se = step / (2 * K ** 0.5)
    moving = step > 0
    return float(((mean - x.double()).abs()[moving] / se[moving]).max())


@pytest.mark.parametrize('bits', [1, 2, 4, 8])
def test_stochastic_rounding_is_unbiased(bits):
    x = torch.randn(4, 256) * torch.tensor([[0.1], [1.0], [10.0], [3.0]]) + 0.5
    stat = _max_standardised_bias(x, bits, stochastic=True)
    print(f'bits={bits}: max standardised bias {stat:.2f} (bound {Z})')
    assert stat < Z


@pytest.mark.parametrize('bits', [1, 2, 4])
def test_check_rejects_biased_rounding(bits):
    """The same check on round-to-nearest fails: it has the power to see a bias."""
    x = torch.randn(4, 256) * torch.tensor([[0.1], [1.0], [10.0], [3.0]]) + 0.5
    stat = _max_standardised_bias(x, bits, stochastic=False)
    print(f'bits={bits}: round-to-nearest max standardised bias {stat:.2f} (bound {Z})')
    assert stat > Z


def test_variance_within_formula():
    """Empirical per-element variance <= step^2 / 4 (the bound behind the test's threshold)."""
    x = torch.randn(2, 512)
    reps = x.repeat(K, 1)
    c = compress(reps, 2, seed=7)
    y = decompress(c).double().reshape(K, 2, -1)
    step, _ = element_steps(c)
    var = y.var(0)
    bound = step.double().reshape(K, 2, -1)[0].pow(2) / 4
    # The sample variance of a Bernoulli-scaled variable exceeds its bound only by noise.
    assert (var <= bound * 1.25 + 1e-12).all()
