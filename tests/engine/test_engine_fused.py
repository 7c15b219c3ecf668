"""The fused forward op (``actnn_mm::compress``) and the fused mask ops: byte-exact with the
PyTorch reference, equal to the unfused path where the semantics are the same, one dispatched
op per saved tensor, no host reads."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import DTYPES, make_input

from actnn_mm.engine import CompressionConfig, LayerScheme, compress, decompress, reference
from actnn_mm.engine.bit_solver import allocate_per_sample, variance_bound
from actnn_mm.engine.compressed import Affine, compress_fused
from actnn_mm.engine.mask import masked_grad, pack_nonzero, unpack_mask_as
from actnn_tools.benchmark.overhead import OpCounter


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def _both(x, n, g, bits, total, shift=None, scale=None, inner=1, period=1, stats=False,
          seed=7, offset=3, min_bits=1, max_bits=8):
    st = [torch.zeros(2) if stats else None for _ in range(2)]
    args = lambda s: (x.reshape(-1), n, g, bits, total, min_bits, max_bits, shift, scale,  # noqa
                      inner, period, s, 0.37, True, seed, offset, False, None)
    return torch.ops.actnn_mm.compress(*args(st[0])), reference.compress(*args(st[1])), st


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bits,total_per_sample', [(2, 0), (4, 0), (0, 2), (0, 3), (0, 1),
                                                    (0, 8)])
@pytest.mark.parametrize('affine', [False, True])
def test_kernel_equals_reference(dtype, bits, total_per_sample, affine):
    n, d, g = 6, 1000, 64
    x = make_input((n, d), dtype, seed=1) * torch.rand(n, 1).to(dtype) * 4
    x[2, 17] = float('nan')
    shift = scale = None
    inner, period = 1, 1
    if affine:
        inner, period = 5, 7
        shift, scale = torch.randn(period), torch.rand(period) + 0.5
    total = total_per_sample * n + (1 if bits == 0 and 1 < total_per_sample < 8 else 0)
    (k, r, (s0, s1)) = _both(x, n, g, bits, total, shift, scale, inner, period, stats=True)
    for a, b in zip(k, r):
        assert _same(a, b)
    assert _same(s0, s1)
    if bits == 0:
        assert int(k[2].sum()) == total


def test_uniform_bits_equal_the_unfused_quantize():
    x = make_input((4, 3, 17, 19), torch.float32, seed=2)
    for bits in (1, 2, 4, 8):
        a = compress_fused(x, bits, seed=11)
        b = compress(x, bits, seed=11)
        assert _same(a.payload, b.payload) and _same(a.meta, b.meta)
        assert torch.equal(decompress(a), decompress(b))


def test_per_sample_bits_equal_quantize_with_the_chosen_bits():
    x = make_input((8, 500), torch.float32, seed=3) * torch.logspace(-2, 2, 8).reshape(8, 1)
    c = compress_fused(x, 0, total_bits=17, seed=5)
    ref = compress(x, c.bits, seed=5, bits_sum=17)
    assert _same(c.payload, ref.payload) and _same(c.meta, ref.meta)
    assert torch.equal(c.offsets, ref.offsets)
    # The allocation is the public greedy on the same sensitivities.
    mm = torch.ops.actnn_mm.group_minmax(x.reshape(-1), 8, 256).reshape(8, -1, 2)
    rsq = reference.sample_range_sums(mm[..., 0], mm[..., 1], torch.isnan(mm[..., 0]))
    assert torch.equal(c.bits, allocate_per_sample(rsq, 17))


def test_allocation_is_the_greedy_and_breaks_ties_by_index():
    # Distinct costs: equal to ActNN's one-bit-at-a-time greedy.
    torch.manual_seed(0)
    sens = torch.rand(7) * 10
    total = 20
    bits = [8] * 7
    w = reference.bit_weights(1, 8, 'cpu').tolist()
    for _ in range(7 * 8 - total):
        costs = [(sens[i].item() * w[8 - bits[i]] if bits[i] > 1 else float('inf'), i)
                 for i in range(7)]
        bits[min(costs)[1]] -= 1
    assert allocate_per_sample(sens, total).tolist() == bits
    # Ties (all zero): lower sample indices lose their bits first, all the way down.
    assert allocate_per_sample(torch.zeros(4), 4 * 8 - 9).tolist() == [1, 6, 8, 8]
    # The allocation never does worse than uniform bits on the variance bound.
    sens = torch.logspace(-3, 3, 16)
    b = allocate_per_sample(sens, 32)
    assert variance_bound(sens, b) <= variance_bound(sens, torch.full((16,), 2))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bits', [0, 2])
def test_batch_norm_affine_equals_quantizing_the_normalised_tensor(dtype, channels_last, bits):
    """Folding (x - mean) * invstd into the kernel gives the bytes the Python path gave."""
    x = make_input((4, 6, 9, 11), dtype, seed=4, scale=3.0, shift=1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean = torch.randn(6)
    invstd = torch.rand(6) + 0.3
    x_hat = ((x - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)).to(x.dtype)
    kw = dict(total_bits=9, seed=13) if bits == 0 else dict(seed=13)
    a = compress_fused(x, bits, affine=Affine(mean, invstd, dim=1), **kw)
    b = compress_fused(x_hat, bits, **kw)
    assert _same(a.payload, b.payload) and _same(a.meta, b.meta)
    y = decompress(a)
    assert y.stride() == x.stride() and torch.equal(y, decompress(b))


def test_block_affine_normalises_rows():
    """Per-row shift/scale (a layer norm's mean/rstd) over consecutive blocks."""
    x = make_input((3, 10, 64), torch.float32, seed=5, scale=5.0)
    mean, rstd = x.mean(-1), x.var(-1, unbiased=False).add(1e-5).rsqrt()
    x_hat = (x - mean[..., None]) * rstd[..., None]
    a = compress_fused(x, 4, affine=Affine(mean, rstd, dim=None, block=64), seed=2)
    b = compress_fused(x_hat, 4, seed=2)
    assert _same(a.payload, b.payload) and _same(a.meta, b.meta)
    with pytest.raises(ValueError, match='contiguous'):
        permuted = x.transpose(1, 2).contiguous().transpose(1, 2)  # dense, not contiguous
        compress_fused(permuted, 4, affine=Affine(mean, rstd, dim=None, block=64))
    with pytest.raises(ValueError, match=r'must have 10 values, got \(7,\)'):
        compress_fused(x.reshape(3, 10, 64), 4, affine=Affine(torch.zeros(7), torch.ones(7),
                                                              dim=1))


def test_affine_rounding_stays_unbiased():
    """E[decompress] = x_hat: stochastic rounding of the transformed values is unbiased."""
    x = make_input((2, 4, 16, 16), torch.float32, seed=6, scale=2.0, shift=3.0)
    mean, invstd = torch.randn(4), torch.rand(4) + 0.5
    x_hat = (x - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
    acc = torch.zeros_like(x)
    draws = 400
    step = None
    for s in range(draws):
        c = compress_fused(x, 2, affine=Affine(mean, invstd), seed=s)
        acc += decompress(c)
        step = c.meta.reshape(-1, 2)[:, 1].max()
    err = (acc / draws - x_hat).abs().max()
    # std of the mean of `draws` roundings <= step / (2 sqrt(draws)); 6 sigma.
    assert err < 6 * step / (2 * draws ** 0.5)


def test_stats_accumulate_on_device():
    x = make_input((4, 512), torch.float32, seed=7)
    st = torch.zeros(2)
    compress_fused(x, 2, stats=st, stats_factor=2.0, seed=1)
    compress_fused(x, 2, stats=st, stats_factor=2.0, seed=2)
    mm = torch.ops.actnn_mm.group_minmax(x.reshape(-1), 4, 256).reshape(4, -1, 2)
    rsq = ((mm[..., 1] - mm[..., 0]) ** 2).sum(1)
    assert torch.allclose(st[0], 2 * 2.0 * rsq.mean(), rtol=1e-5)
    g = torch.randn(4, 8, 8)
    torch.ops.actnn_mm.accumulate_sq_norm(g, st, 1, 0.25)
    assert torch.allclose(st[1], g.pow(2).sum() * 0.25, rtol=1e-5)


@pytest.mark.parametrize('kind', ['conv', 'norm'])
@pytest.mark.parametrize('level', ['L2', 'L3'])
def test_one_op_per_saved_tensor_and_no_host_reads(level, kind):
    scheme = LayerScheme(CompressionConfig.from_level(level), kind=kind, kernel_area=9)
    x, grad = torch.randn(8, 16, 20, 20), torch.randn(8, 16, 20, 20)
    for _ in range(2):  # the statistics tensor exists after the first call
        with OpCounter() as fwd:
            c = scheme.compress(x)
        with OpCounter() as bwd:
            scheme.decompress(c)
            scheme.observe_grad(grad)
    assert fwd.ops == 1 and fwd.by_name['actnn_mm.compress'] == 1
    assert bwd.by_name['actnn_mm.dequantize'] == 1
    # + accumulate_sq_norm with per-layer stats, for the kinds the allocator re-allocates
    assert bwd.ops == (2 if level == 'L3' and kind == 'conv' else 1)
    assert (scheme._grad_count > 0) == (level == 'L3' and kind == 'conv')
    assert fwd.host_reads == 0 and bwd.host_reads == 0


def test_op_counter_sees_host_reads_and_skips_views():
    x = torch.randn(4, 4)
    with OpCounter() as c:
        x.view(16).reshape(2, 8).t()
        x.detach()
        (x + 1).sum().item()
        x.tolist()
        torch.nonzero(x > 0)
    assert c.host_reads == 3
    assert c.by_name == {'aten.add': 1, 'aten.sum': 1, 'aten.gt': 1, 'aten.nonzero': 1}


@pytest.mark.parametrize('dtype', DTYPES)
def test_mask_ops_equal_their_unfused_forms(dtype):
    x = make_input((3, 5, 7, 9), dtype, seed=8).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float('nan')
    x[0, 1, 0, 0] = 0.0
    for positive in (False, True):
        p = pack_nonzero(x, positive)
        want = (x > 0) if positive else (x != 0)
        assert torch.equal(unpack_mask_as(p, dtype), want.to(dtype))
        assert unpack_mask_as(p, dtype).stride() == x.stride()
        g = torch.randn_like(x)
        assert torch.equal(masked_grad(p, g), torch.where(want, g, 0))
        g_other = torch.randn(3, 5, 7, 9, dtype=dtype)  # another memory order: unfused path
        assert torch.equal(masked_grad(p, g_other), torch.where(want, g_other, 0))
        buf = x.permute(0, 2, 3, 1).reshape(-1)
        assert torch.equal(torch.ops.actnn_mm.pack_nonzero(buf, positive),
                           reference.pack_nonzero(buf, positive))


def test_fused_op_errors_name_the_argument():
    x = torch.randn(4, 64)
    op = torch.ops.actnn_mm.compress
    with pytest.raises(RuntimeError, match='total_bits must be in'):
        op(x.reshape(-1), 4, 64, 0, 40, 1, 8, None, None, 1, 1, None, 1.0, True, 1, 0, False,
           None)
    with pytest.raises(RuntimeError, match='shift must be a contiguous float32 tensor'):
        op(x.reshape(-1), 4, 64, 2, 0, 1, 8, torch.zeros(3, dtype=torch.float64),
           torch.ones(3), 1, 3, None, 1.0, True, 1, 0, False, None)
    with pytest.raises(RuntimeError, match='stats must be a contiguous float32'):
        op(x.reshape(-1), 4, 64, 2, 0, 1, 8, None, None, 1, 1, torch.zeros(2, dtype=torch.int32),
           1.0, True, 1, 0, False, None)


def test_fused_op_passes_opcheck():
    x = torch.randn(4, 300)
    args = (x.reshape(-1), 4, 64, 0, 9, 1, 8, torch.randn(5), torch.rand(5), 3, 5, torch.zeros(2),
            1.5, True, 3, 1, False, None)
    torch.library.opcheck(torch.ops.actnn_mm.compress.default, args,
                          test_utils=('test_schema', 'test_faketensor'))
    torch.library.opcheck(torch.ops.actnn_mm.mask_grad.default,
                          (torch.randn(100), torch.zeros(13, dtype=torch.uint8)))
