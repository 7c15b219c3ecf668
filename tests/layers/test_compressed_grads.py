"""Gradients with compression on (L2: 4 bits; L3: 2 bits on average, per-sample mixed).

Stochastic rounding makes every saved element unbiased with variance at most step^2 / 4 (step =
group range / (2^bits - 1), read from the compressed tensor's metadata). Hence:

* gradients linear in the saved input (conv/linear weight grads, norm affine grads given the saved
  statistics) are unbiased: the mean over seeds matches the exact gradient within its standard
  error (statistic T = |mean - exact|^2 / (sum var / K), about 1 when unbiased);
* their mean squared error is bounded by the variance formula pushed through the layer
  (e.g. ``conv_weight_grad(grad^2, step^2/4)``); GELU/SiLU/Hardswish compress their derivative,
  so their input gradient is linear in what is saved too;
* gradients that do not read the saved input (conv/linear input grads) stay exact.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

from actnn_mm.engine import CompressedTensor, CompressionConfig
from actnn_mm.layers import QLAYERS
from actnn_mm.saved_bytes import SavedBytesCounter

SEEDS = 24
LEVELS = {
    'L2': CompressionConfig.from_level('L2', min_numel=0),
    'L3': CompressionConfig.from_level('L3', min_numel=0),
}


def _pair(twin: nn.Module, config: CompressionConfig) -> Tuple[nn.Module, nn.Module]:
    """(twin, a Q copy of it with the same weights) -- the class swap ``convert`` does."""
    q = copy.deepcopy(twin)
    q.__class__ = QLAYERS[type(twin)]
    q.actnn_config = config
    return twin, q


def _run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, seed: int
         ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], List[CompressedTensor]]:
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    with SavedBytesCounter(keep_objects=True) as counter:
        y = module(x)
    y.backward(grad)
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return x.grad, grads, [o for o in counter.objects if isinstance(o, CompressedTensor)]


def _element_var_bound(c: CompressedTensor, shape: torch.Size) -> torch.Tensor:
    """step^2 / 4 for every element of the (contiguous) tensor ``c`` was made from."""
    n = shape[0] if len(shape) > 1 else 1
    d = math.prod(shape) // n
    step = c.meta.view(n, -1, 2)[..., 1]
    var = (step.pow(2) / 4).repeat_interleave(c.group_size, dim=1)[:, :d]
    return var.reshape(shape)


def _chi2_quantile_per_dof(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile / dof (z = 3.09: 99.9%)."""
    a = 2.0 / (9.0 * dof)
    return (1.0 - a + z * math.sqrt(a)) ** 3


def _assert_unbiased(samples: List[torch.Tensor], exact: torch.Tensor,
                     limit: Optional[float] = None) -> None:
    """T below the 99.9% quantile for independent elements (or ``limit``: correlated ones)."""
    s = torch.stack(samples).double()
    k = s.shape[0]
    mean, var = s.mean(0), s.var(0)
    assert var.sum() > 0, 'no randomness: compression did not happen'
    t = ((mean - exact.double()) ** 2).sum() / (var.sum() / k)
    limit = limit or _chi2_quantile_per_dof(exact.numel())
    assert t < limit, f'biased: T = {t:.2f} (about 1 when unbiased; limit {limit:.2f})'


def _assert_mse_within(samples: List[torch.Tensor], exact: torch.Tensor, bound: float) -> None:
    mse = torch.stack([(s.double() - exact.double()).pow(2).sum() for s in samples]).mean()
    assert 0 < mse <= 1.1 * bound, f'mse {mse:.3g} above the variance bound {bound:.3g}'


def _collect(twin: nn.Module, q: nn.Module, x: torch.Tensor):
    torch.manual_seed(0)
    y = twin(x.clone().requires_grad_())
    grad = torch.randn_like(y)
    ex_x, ex_p, _ = _run(twin, x, grad, 0)
    runs = [_run(q, x, grad, 1000 + s) for s in range(SEEDS)]
    return grad, ex_x, ex_p, runs


CONVS = [
    ('conv2d', lambda: nn.Conv2d(8, 6, 3, padding=1), (4, 8, 12, 12)),
    ('conv2d-strided-grouped', lambda: nn.Conv2d(8, 6, 3, stride=2, groups=2), (4, 8, 13, 13)),
    ('conv1d', lambda: nn.Conv1d(8, 6, 5, padding=2), (4, 8, 64)),
    ('conv-transpose2d', lambda: nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1), (4, 8, 9, 9)),
]


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('name,make,shape', CONVS, ids=[c[0] for c in CONVS])
def test_conv_weight_grad_unbiased_and_within_variance_bound(name: str, make: Callable,
                                                             shape: Tuple, level: str) -> None:
    twin, q = _pair(make(), LEVELS[level])
    x = torch.randn(shape)
    grad, ex_x, ex_p, runs = _collect(twin, q, x)
    _assert_unbiased([r[1]['weight'] for r in runs], ex_p['weight'])
    # Var(weight grad) = conv weight-grad of (grad^2, per-element variance): every input element
    # meets each weight element at most once.
    m = twin
    c = runs[0][2][0]
    var_x = _element_var_bound(c, x.shape)
    _, var_w, _ = torch.ops.aten.convolution_backward(
        grad.pow(2), var_x, m.weight, None, m.stride, m.padding, m.dilation, m.transposed,
        m.output_padding, m.groups, [False, True, False])
    _assert_mse_within([r[1]['weight'] for r in runs], ex_p['weight'], var_w.sum().item())
    for r in runs:  # input and bias gradients never read the saved input
        torch.testing.assert_close(r[0], ex_x, rtol=0, atol=0)
        torch.testing.assert_close(r[1]['bias'], ex_p['bias'], rtol=0, atol=0)


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('shape', [(8, 512), (64, 32), (4, 16, 32), (2, 3, 8, 32)],
                         ids=['2d', '2d-small-rows', '3d', '4d'])
def test_linear_weight_grad_unbiased_and_within_variance_bound(shape: Tuple, level: str) -> None:
    twin, q = _pair(nn.Linear(shape[-1], 24), LEVELS[level])
    x = torch.randn(shape)
    grad, ex_x, ex_p, runs = _collect(twin, q, x)
    _assert_unbiased([r[1]['weight'] for r in runs], ex_p['weight'])
    c = runs[0][2][0]
    rows = x.shape[0] if c.layout.num_samples > 1 else 1  # small rows: one regrouped sample
    var_x = _element_var_bound(c, (rows, x.numel() // rows)).reshape(-1, shape[-1])
    var_w = grad.reshape(-1, 24).pow(2).t() @ var_x
    _assert_mse_within([r[1]['weight'] for r in runs], ex_p['weight'], var_w.sum().item())
    for r in runs:
        torch.testing.assert_close(r[0], ex_x, rtol=0, atol=0)


NORMS = [
    ('batchnorm2d', lambda: nn.BatchNorm2d(8), (4, 8, 12, 12)),
    ('layernorm', lambda: nn.LayerNorm(64), (4, 16, 64)),
    ('groupnorm', lambda: nn.GroupNorm(4, 8), (4, 8, 12, 12)),
]


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('name,make,shape', NORMS, ids=[n[0] for n in NORMS])
def test_norm_grads_unbiased_affine_and_close_input(name: str, make: Callable, shape: Tuple,
                                                    level: str) -> None:
    m = make()
    with torch.no_grad():  # non-trivial affine parameters
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    twin, q = _pair(m, LEVELS[level])
    x = torch.randn(shape) * 2 + 0.5
    grad, ex_x, ex_p, runs = _collect(twin, q, x)
    # weight grad = sum(grad * x_hat), linear in the saved input given the saved mean/rstd.
    _assert_unbiased([r[1]['weight'] for r in runs], ex_p['weight'])
    for r in runs:
        torch.testing.assert_close(r[1]['bias'], ex_p['bias'])
    # Input grad: unbiased to first order (a second-order bias), its elements correlated through
    # the per-channel/row reductions: a looser limit.
    _assert_unbiased([r[0] for r in runs], ex_x, limit=2.0)


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('bn', [nn.BatchNorm2d, nn.SyncBatchNorm], ids=['bn', 'syncbn'])
def test_batch_norm_on_tiny_maps_keeps_gradients_at_the_scale_of_the_exact_ones(
        level: str, bn: Callable) -> None:
    """Channels whose batch spread is tiny next to the other channels of their quantization group
    (ResNet's last stage on small images: 1x1 maps, batch 2, so 2 values per channel): the saved
    input is normalised per channel before it is quantized, so invstd cannot blow the rounding
    error up. (Quantizing x itself: ResNet-50, L3, 32x32, batch 2 got 1e19-1e22 gradients.)"""
    torch.manual_seed(0)
    m = bn(512)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    twin, q = _pair(m, LEVELS[level])
    means = torch.empty(1, 512, 1, 1).uniform_(-10, 10)
    spreads = torch.logspace(-4, 0, 512).view(1, 512, 1, 1)
    x = means + spreads * torch.randn(2, 512, 1, 1)
    grad, ex_x, ex_p, runs = _collect(twin, q, x)
    for gx, gp, _ in runs[:4]:
        assert float((gx - ex_x).norm() / ex_x.norm()) < 1.0
        assert float((gp['weight'] - ex_p['weight']).norm() / ex_p['weight'].norm()) < 1.0
        torch.testing.assert_close(gp['bias'], ex_p['bias'])


def _tiny_variance_rows(kind: str) -> Tuple[nn.Module, torch.Tensor]:
    """A norm whose rows (LayerNorm) or groups (GroupNorm) have a spread ~1e-2..1e-3 next to
    rows of spread ~3 in the same quantization group: DeiT's cls_token + pos_embed row at init
    in the first LayerNorm."""
    torch.manual_seed(0)
    if kind == 'layernorm':
        x = torch.cat([torch.randn(2, 1, 192) * 0.02, torch.randn(2, 196, 192) * 3 + 1], 1)
        return nn.LayerNorm(192), x
    x = torch.cat([torch.randn(2, 8, 4, 4) * 1e-3, torch.randn(2, 56, 4, 4) * 5], 1)
    return nn.GroupNorm(8, 64), x


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('kind', ['layernorm', 'groupnorm'])
def test_norm_with_tiny_variance_rows_keeps_gradients_at_the_scale_of_the_exact_ones(
        kind: str, level: str) -> None:
    """The saved input is normalised per row/group before it is quantized, so rstd (up to
    1/sqrt(eps)) cannot multiply the rounding error of a group set by wider rows. (Quantizing x
    itself: input-gradient errors of 40-8000x the exact gradient here.)"""
    m, x = _tiny_variance_rows(kind)
    twin, q = _pair(m, LEVELS[level])
    grad, ex_x, ex_p, runs = _collect(twin, q, x)
    for gx, gp, _ in runs[:4]:
        assert float((gx - ex_x).norm() / ex_x.norm()) < 1.0
        assert float((gp['weight'] - ex_p['weight']).norm() / ex_p['weight'].norm()) < 1.5
        torch.testing.assert_close(gp['bias'], ex_p['bias'])
    _assert_unbiased([r[1]['weight'] for r in runs], ex_p['weight'])


ACTIVATIONS = [
    ('gelu', lambda: nn.GELU()),
    ('gelu-tanh', lambda: nn.GELU(approximate='tanh')),
    ('silu', lambda: nn.SiLU()),
    ('hardswish', lambda: nn.Hardswish()),
]


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('name,make', ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_input_grad_unbiased_and_within_variance_bound(name: str, make: Callable,
                                                                 level: str) -> None:
    """The derivative f'(x) is what is compressed, so the input gradient grad * f'^ is unbiased
    with E|grad (f'^ - f')|^2 <= sum grad^2 step^2 / 4 (steps of f', whose range is ~1)."""
    twin, q = _pair(make(), LEVELS[level])
    x = torch.randn(4, 8, 12, 12) * 3
    grad, ex_x, _, runs = _collect(twin, q, x)
    _assert_unbiased([r[0] for r in runs], ex_x)
    var_d = _element_var_bound(runs[0][2][0], x.shape)
    _assert_mse_within([r[0] for r in runs], ex_x, (grad.pow(2) * var_d).sum().item())


@pytest.mark.parametrize('level', list(LEVELS))
@pytest.mark.parametrize('name,make', ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_on_wide_pre_activations_keeps_the_input_grad_close(name: str, make: Callable,
                                                                       level: str) -> None:
    """Pre-activations spanning ~[-15, 15] in a group (BN outputs with a large weight): rounding
    the input to 2-4 bits moved f'(x) by up to |f''| x step, several times f''s own range, so
    the input gradient was off by more than its own norm at L3; the derivative keeps it a
    fraction."""
    twin, q = _pair(make(), LEVELS[level])
    x = torch.randn(2, 16, 8, 8) * 5
    _, ex_x, _, runs = _collect(twin, q, x)
    for gx, _, _ in runs[:4]:
        assert float((gx - ex_x).norm() / ex_x.norm()) < (0.1 if level == 'L2' else 0.5)


def test_l3_uses_fewer_bits_than_l2() -> None:
    x = torch.randn(4, 8, 12, 12)
    sizes = {}
    for level, cfg in LEVELS.items():
        _, q = _pair(nn.Conv2d(8, 6, 3), cfg)
        _, _, objs = _run(q, x, torch.ones(4, 6, 10, 10), 0)
        sizes[level] = objs[0].nbytes
    assert sizes['L3'] < 0.6 * sizes['L2']
