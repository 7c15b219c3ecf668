"""LayerScheme and BitAllocator: levels in use, mixed precision, no host synchronisation,
and the variance reached by the allocation versus uniform 2 bits."""
from __future__ import annotations

import contextlib

import pytest
import torch

from actnn_mm.engine import (
    BitAllocator,
    CompressedTensor,
    CompressionConfig,
    LayerScheme,
    Swapper,
    allocate_layers,
    allocate_per_sample,
    compress,
    decompress,
    enable_expandable_segments,
    variance_bound,
)
from actnn_mm.engine.bit_solver import level_weights


def _acts(n=16, c=8, hw=16, spread=2.0, seed=0):
    """Activations whose per-sample scale varies (log-normal), like real batches."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(n, 1, 1, 1, generator=g) * spread)
    return torch.randn(n, c, hw, hw, generator=g) * scale


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Fail on any device-to-host read (the calls that synchronise on an accelerator)."""
    def boom(*_a, **_k):
        raise AssertionError('host read of a tensor value (a device sync on GPU)')
    with monkeypatch.context() as m:
        for name in ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__', 'numpy',
                     'cpu'):
            m.setattr(torch.Tensor, name, boom)
        with pytest.raises(AssertionError, match='host read'):
            torch.ones(()).item()  # the trap itself works
        yield


def test_l0_is_exact_identity():
    s = LayerScheme(CompressionConfig.from_level('L0'), 'conv', 9)
    x = _acts()
    assert s.compress(x) is x and s.decompress(x) is x


def test_l1_leaves_norm_exact_and_quantizes_conv_at_4_bits():
    cfg = CompressionConfig.from_level('L1', min_numel=0)
    x = _acts()
    assert LayerScheme(cfg, 'norm').compress(x) is x
    c = LayerScheme(cfg, 'conv', 9).compress(x)
    assert isinstance(c, CompressedTensor) and c.bits == 4
    c2 = LayerScheme(CompressionConfig.from_level('L2'), 'norm').compress(x)
    assert isinstance(c2, CompressedTensor) and c2.bits == 4


def test_small_or_unprofitable_tensors_stay_exact():
    s = LayerScheme(CompressionConfig.from_level('L2'), 'linear')
    tiny = torch.randn(4, 8)
    assert s.compress(tiny) is tiny                       # below min_numel
    s2 = LayerScheme(CompressionConfig.from_level('L2', min_numel=0), 'linear')
    narrow = torch.randn(4096, 3)                          # 3 features padded to a 256 group
    assert s2.compress(narrow) is narrow
    ints = torch.arange(10000)
    assert s2.compress(ints) is ints
    p = torch.nn.Parameter(torch.randn(64, 64))
    assert s2.compress(p) is p


def test_l3_per_sample_bits_follow_ranges_and_keep_the_budget():
    cfg = CompressionConfig.from_level('L3', per_layer=False)
    s = LayerScheme(cfg, 'conv', 9)
    x = _acts(n=16)
    c = s.compress(x)
    assert isinstance(c.bits, torch.Tensor)
    assert int(c.bits.sum()) == 2 * 16 and int(c.bits.min()) >= 1 and int(c.bits.max()) <= 8
    rng = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    # The widest-range sample never gets fewer bits than the narrowest one.
    assert c.bits[rng.argmax()] >= c.bits[rng.argmin()]
    assert c.bits.unique().numel() > 1
    y = s.decompress(c)
    assert y.shape == x.shape


def test_compress_path_has_no_host_reads(monkeypatch):
    """Per-sample allocation + compression + stats, and observe_grad, read nothing on the host."""
    for level in ('L3', 'L4', 'L5'):
        cfg = CompressionConfig.from_level(level)
        alloc = BitAllocator(cfg, interval=10)
        s = alloc.scheme('conv', 9, name='c')
        s2 = alloc.scheme('norm', name='n')
        s3 = LayerScheme(cfg.replace(per_sample=False), 'linear', allocator=alloc)
        x = _acts()
        with no_host_reads(monkeypatch):
            for _ in range(3):
                saved = [sc.compress(x) for sc in (s, s2, s3)]
                for sc, sv in zip((s, s2, s3), saved):
                    sc.decompress(sv)
                    sc.observe_grad(torch.ones_like(x))
        assert alloc.step()  # the first step solves (the one allowed host read)
        with no_host_reads(monkeypatch):
            for _ in range(8):
                for sc in (s, s2, s3):
                    sc.decompress(sc.compress(x))
                assert not alloc.step()  # steps 2..9: no solve, no reads


def test_allocator_solves_every_k_steps_and_favours_sensitive_layers():
    cfg = CompressionConfig.from_level('L3', realloc_interval=5)
    alloc = BitAllocator(cfg)
    quiet = alloc.scheme('conv', 1, name='quiet')
    loud = alloc.scheme('conv', 9, name='loud')
    solved = []
    for step in range(1, 12):
        for sc, scale in ((quiet, 0.01), (loud, 10.0)):
            x = _acts(seed=step) * scale
            sc.decompress(sc.compress(x))
            sc.observe_grad(torch.randn_like(x) * scale)
        if alloc.step():
            solved.append(step)
    assert solved == [1, 5, 10]
    bits = alloc.layer_bits()
    assert bits['loud'] > 2 > bits['quiet']
    # Feature-weighted average within the budget.
    assert (bits['loud'] + bits['quiet']) / 2 <= 2 + 1e-9
    state = alloc.state_dict()
    other = BitAllocator(cfg)
    q2, l2 = other.scheme(name='quiet'), other.scheme(name='loud')
    other.load_state_dict(state)
    assert (q2.layer_bits, l2.layer_bits) == (bits['quiet'], bits['loud'])


def test_per_sample_greedy_matches_sequential_greedy():
    """The vectorised top-k equals ActNN's one-bit-at-a-time greedy (same objective value)."""
    g = torch.Generator().manual_seed(3)
    sens = torch.rand(12, generator=g) ** 4 * 100
    for total in (12, 20, 24, 50, 96):
        fast = allocate_per_sample(sens, total)
        bits = [8] * 12
        w = dict(zip(range(8, 1, -1), level_weights()))
        for _ in range(96 - total):
            i = min((i for i in range(12) if bits[i] > 1), key=lambda i: sens[i] * w[bits[i]])
            bits[i] -= 1
        assert int(fast.sum()) == total
        assert torch.isclose(variance_bound(sens, fast), variance_bound(sens, torch.tensor(bits)))


def test_allocate_layers_respects_budget_and_bounds():
    bits = allocate_layers([1.0, 100.0, 0.0], [256, 1024, 512], [8, 8, 8], 2.0)
    total = sum(b * f for b, f in zip(bits, [256, 1024, 512]))
    assert total <= 2.0 * (256 + 1024 + 512) + 1e-9
    assert all(1 <= b <= 8 for b in bits) and bits[1] > bits[0] > bits[2] - 1e-9


def test_mixed_precision_variance_below_uniform_2_bits():
    """The variance the allocation reaches vs uniform 2 bits, at the same (or fewer) bits."""
    cfg = CompressionConfig.from_level('L3')
    alloc = BitAllocator(cfg, interval=1)
    specs = [('conv3x3', 9, 1.0), ('conv1x1', 1, 0.1), ('dwconv', 9, 5.0)]
    schemes = [alloc.scheme('conv', k, name=name) for name, k, _ in specs]
    grads = {name: g for name, _, g in specs}
    # Warm-up iteration: statistics, then the cross-layer solve.
    batch = [_acts(seed=i, spread=1.5) * (i + 1) for i in range(len(specs))]
    for sc, x in zip(schemes, batch):
        sc.compress(x)
        sc.observe_grad(torch.full_like(x, grads[sc.name]))
    alloc.step()
    mixed_err = uniform_err = mixed_bound = uniform_bound = 0.0
    mixed_bits = uniform_bits = 0.0
    for sc, x in zip(schemes, batch):
        n = x.shape[0]
        weight = sc.coefficient * grads[sc.name] ** 2 * x[0].numel()
        c = sc.compress(x)
        groups = x.flatten(1).unflatten(1, (-1, 256))
        rng = groups.amax(2) - groups.amin(2)
        sens = rng.pow(2).sum(1) * weight
        mixed_bound += float(variance_bound(sens, c.bits))
        uniform_bound += float(variance_bound(sens, torch.full((n,), 2)))
        mixed_bits += float(c.bits.sum()) * x[0].numel()
        uniform_bits += 2.0 * n * x[0].numel()
        for seed in range(4):
            m = decompress(compress(x, c.bits, seed=seed))
            u = decompress(compress(x, 2, seed=seed))
            mixed_err += weight * float((m - x).pow(2).sum()) / 4
            uniform_err += weight * float((u - x).pow(2).sum()) / 4
    print(f'\nvariance bound: mixed {mixed_bound:.4g} vs uniform 2-bit {uniform_bound:.4g} '
          f'(ratio {mixed_bound / uniform_bound:.3f})')
    print(f'empirical weighted squared error: mixed {mixed_err:.4g} vs uniform 2-bit '
          f'{uniform_err:.4g} (ratio {mixed_err / uniform_err:.3f}); bits used '
          f'{mixed_bits / uniform_bits:.3f}x of uniform')
    assert mixed_bits <= uniform_bits
    assert mixed_bound < uniform_bound
    assert mixed_err < uniform_err


def test_swap_and_defrag_are_documented_no_ops_on_cpu():
    cfg = CompressionConfig.from_level('L5', per_layer=False)
    s = LayerScheme(cfg, 'conv', 9)
    x = _acts()
    c = s.compress(x)
    assert c.swap is None and c.payload.device.type == 'cpu' and not c.payload.is_pinned()
    payload = c.payload
    assert Swapper().offload(c) is c and c.payload is payload and c.swap is None
    assert s.decompress(c).shape == x.shape
    assert enable_expandable_segments() is torch.cuda.is_available()


def test_two_models_with_different_levels_in_one_process():
    x = _acts()
    a = LayerScheme(CompressionConfig.from_level('L2'), 'conv', 9).compress(x)
    b = LayerScheme(CompressionConfig.from_level('L3', per_layer=False), 'conv', 9).compress(x)
    assert a.bits == 4 and isinstance(b.bits, torch.Tensor)
    assert a.nbytes > b.nbytes


def test_scheme_argument_validation():
    cfg = CompressionConfig()
    with pytest.raises(ValueError, match='kind must be one of'):
        LayerScheme(cfg, 'pool')
    with pytest.raises(ValueError, match='config must be a CompressionConfig'):
        LayerScheme('L3')
    with pytest.raises(ValueError, match='kernel_area must be an int >= 1'):
        LayerScheme(cfg, 'conv', 0)
    with pytest.raises(ValueError, match='interval must be an int >= 1'):
        BitAllocator(cfg, interval=0)
