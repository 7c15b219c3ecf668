"""Property tests (hypothesis) of the compression kernels against the PyTorch reference.

Over shapes, dtypes, bits (uniform and per sample), group sizes and seeds: bit-exact equality of
the CPU kernel and the reference (payload, metadata, dequantized values), determinism per seed,
the exact payload size, and the error bound (below one quantization step of the group).
"""
from __future__ import annotations

import torch
from engine_helpers import DTYPES, element_steps, kernel_and_reference, make_input
from hypothesis import given, settings
from hypothesis import strategies as st

from actnn_mm.engine import compress, decompress, reference
from actnn_mm.engine.philox import philox4x32_10

SETTINGS = dict(max_examples=60, deadline=None)
GROUP_SIZES = (8, 16, 64, 256, 512)


@st.composite
def cases(draw):
    n = draw(st.integers(1, 5))
    d = draw(st.integers(1, 700))
    dtype = draw(st.sampled_from(DTYPES))
    group_size = draw(st.sampled_from(GROUP_SIZES))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    shift = draw(st.sampled_from([0.0, 3.0, -100.0]))
    x = make_input((n, d), dtype, draw(st.integers(0, 2**31)), scale, shift)
    special = draw(st.sampled_from(['none', 'constant', 'nan', 'inf', 'zero_signs']))
    if special == 'constant':
        x[draw(st.integers(0, n - 1))] = x.flatten()[0]
    elif special in ('nan', 'inf'):
        x.view(-1)[draw(st.integers(0, n * d - 1))] = \
            float('nan') if special == 'nan' else float('-inf')
    elif special == 'zero_signs':
        x.view(-1)[::3] = -0.0
        x.view(-1)[1::3] = 0.0
    per_sample = draw(st.booleans())
    if per_sample:
        sample_bits = torch.tensor(draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)),
                                   dtype=torch.int32)
        bits = 0
    else:
        sample_bits = None
        bits = draw(st.sampled_from([1, 2, 4, 8]))
    seed = draw(st.integers(0, 2**64 - 1))
    stochastic = draw(st.booleans())
    return x, n, group_size, bits, sample_bits, seed, stochastic


@given(cases())
@settings(**SETTINGS)
def test_kernel_equals_reference_bit_for_bit(case):
    x, n, group_size, bits, sample_bits, seed, stochastic = case
    seed_i64 = seed - 2**64 if seed >= 2**63 else seed
    (pk, mk), (pr, mr) = kernel_and_reference(x, n, group_size, bits, sample_bits, stochastic,
                                              seed_i64, offset=7)
    assert torch.equal(pk, pr), 'packed payload differs between the CPU kernel and the reference'
    assert torch.equal(mk.view(torch.int32), mr.view(torch.int32)), 'metadata bits differ'
    d = x.numel() // n
    gs = -(-d // group_size)
    offsets = None
    if sample_bits is not None:
        sizes = sample_bits.to(torch.int64) * (gs * group_size // 8)
        offsets = torch.cumsum(sizes, 0) - sizes
    args = (pk, mk, n, d, group_size, bits, sample_bits, offsets, x.dtype)
    yk = torch.ops.actnn_mm.dequantize(*args)
    yr = reference.dequantize(*args)
    assert torch.equal(yk.view(-1).isnan(), yr.view(-1).isnan())
    assert torch.equal(torch.nan_to_num(yk.float()), torch.nan_to_num(yr.float()))


@given(cases())
@settings(**SETTINGS)
def test_payload_size_is_exact(case):
    x, n, group_size, bits, sample_bits, seed, stochastic = case
    c = compress(x, sample_bits if sample_bits is not None else bits, group_size=group_size,
                 seed=seed)
    gs = -(-(x.numel() // n) // group_size)
    total_bits = int(sample_bits.sum()) if sample_bits is not None else bits * n
    assert c.payload.numel() == gs * group_size * total_bits // 8
    assert c.meta.numel() == n * gs * 2
    extra = 0 if sample_bits is None else n * (4 + 8)
    assert c.nbytes == c.payload.numel() + c.meta.numel() * 4 + extra


@given(cases())
@settings(**SETTINGS)
def test_same_seed_same_bytes(case):
    x, n, group_size, bits, sample_bits, seed, stochastic = case
    b = sample_bits if sample_bits is not None else bits
    c1 = compress(x, b, group_size=group_size, seed=seed)
    c2 = compress(x, b, group_size=group_size, seed=seed)
    assert torch.equal(c1.payload, c2.payload)
    g1 = torch.Generator().manual_seed(seed % 2**63)
    g2 = torch.Generator().manual_seed(seed % 2**63)
    assert torch.equal(compress(x, b, group_size=group_size, generator=g1).payload,
                       compress(x, b, group_size=group_size, generator=g2).payload)


@given(st.integers(0, 2**64 - 1), st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=20, deadline=None)
def test_other_seed_other_bytes(seed, bits):
    x = torch.randn(4, 1000)  # values spread inside their groups: rounding is really random
    c1 = compress(x, bits, seed=seed)
    c2 = compress(x, bits, seed=(seed + 1) % 2**64)
    assert not torch.equal(c1.payload, c2.payload)


@given(cases())
@settings(**SETTINGS)
def test_error_below_one_step(case):
    x, n, group_size, bits, sample_bits, seed, stochastic = case
    c = compress(x, sample_bits if sample_bits is not None else bits, group_size=group_size,
                 seed=seed, stochastic=stochastic)
    y = decompress(c)
    assert y.shape == x.shape and y.dtype == x.dtype
    step, mn = element_steps(c)
    xf, yf = x.float(), y.float()
    bad = torch.isnan(step)
    # Non-finite groups come back non-finite, never as plausible numbers.
    assert not torch.isfinite(yf[bad]).any()
    ok = ~bad
    err = (yf - xf).abs()[ok]
    eps = torch.finfo(x.dtype).eps
    # One step (half a step when rounding to nearest), plus fp32 arithmetic and output rounding.
    limit = (step[ok] if stochastic else step[ok] / 2)
    out_rounding = eps * torch.maximum(xf.abs(), yf.abs())  # half an ulp of the output, doubled
    slack = 4 * 2**-23 * (xf.abs() + mn.abs() + step * 255)[ok] + out_rounding[ok]
    assert (err <= limit + slack).all(), float((err - limit - slack).max())
    if stochastic:
        strict = (err < step[ok] + slack) | (err == 0)  # constant groups: step 0, exact
        assert strict.all()


def test_philox_known_answers():
    """Random123's published philox4x32_10 test vectors."""
    M = 0xFFFFFFFF
    kat = [((0, 0, 0, 0, 0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
           ((M, M, M, M, M, M), (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
           ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0),
            (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for args, want in kat:
        assert tuple(int(v) for v in philox4x32_10(*args)) == want


@given(st.lists(st.integers(1, 9), min_size=3, max_size=5), st.sampled_from(DTYPES),
       st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1), st.booleans(),
       st.sampled_from(['contiguous', 'channels_last', 'permuted', 'strided']))
@settings(**SETTINGS)
def test_nd_layouts_match_their_memory_order_buffer(shape, dtype, bits, seed, stochastic, layout):
    """Any N-d layout: quantized in memory order (== compressing that buffer), strides kept."""
    x = make_input(shape, dtype, seed % 2**31)
    if layout == 'channels_last' and x.dim() in (4, 5):
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    elif layout == 'permuted':
        x = x.transpose(1, -1)
    elif layout == 'strided':
        x = x[:, ::2]
    c = compress(x, bits, seed=seed, stochastic=stochastic, group_size=64)
    y = decompress(c)
    assert y.shape == x.shape and y.dtype == x.dtype
    if c.layout.perm is not None or x.is_contiguous():
        def strides(t):  # strides of size-1 dims carry no layout information
            return [st_ for st_, n in zip(t.stride(), t.shape) if n > 1]
        assert strides(y) == strides(x)
    order = c.layout.perm or tuple(range(x.dim()))
    buf = x.permute(order).contiguous()
    y_buf = decompress(compress(buf, bits, seed=seed, stochastic=stochastic, group_size=64))
    assert torch.equal(y.permute(order), y_buf)
