"""1-bit masks and small-integer index packing (ReLU, Dropout, MaxPool)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actnn_mm.engine import pack_index, pack_mask, reference, unpack_index, unpack_mask


@given(st.lists(st.integers(0, 40), min_size=0, max_size=4), st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_mask_roundtrip_and_size(shape, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) > 0.5
    p = pack_mask(m)
    assert p.nbytes == (m.numel() + 7) // 8
    out = unpack_mask(p)
    assert out.dtype == torch.bool and out.shape == m.shape and torch.equal(out, m)
    assert torch.equal(p.data, reference.pack_bits(m.reshape(-1), 1))


def test_mask_channels_last_and_non_contiguous():
    m = (torch.randn(2, 3, 5, 7) > 0).to(memory_format=torch.channels_last)
    out = unpack_mask(pack_mask(m))
    assert torch.equal(out, m) and out.stride() == m.stride()
    nc = (torch.randn(6, 9) > 0)[:, ::2]
    assert torch.equal(unpack_mask(pack_mask(nc)), nc)


def test_mask_bit_order_is_little_endian():
    m = torch.tensor([True, False, False, False, False, False, False, False, False, True])
    p = pack_mask(m)
    assert p.data.tolist() == [1, 2]


@given(st.integers(1, 16), st.integers(0, 3000), st.integers(0, 2**31),
       st.sampled_from([torch.uint8, torch.int16, torch.int32, torch.int64]))
@settings(max_examples=60, deadline=None)
def test_index_roundtrip(nbits, numel, seed, dtype):
    hi = 1 << nbits
    if dtype == torch.uint8:
        hi = min(hi, 256)
    if dtype == torch.int16:
        hi = min(hi, 2**15)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, hi, (numel,), generator=g).to(dtype)
    p = pack_index(idx, nbits)
    assert p.nbytes == (numel + 7) // 8 * nbits
    out = unpack_index(p)
    assert out.dtype == dtype and torch.equal(out, idx)
    assert unpack_index(p, torch.int64).dtype == torch.int64


def test_index_channels_last_maxpool_like():
    idx = torch.randint(0, 9, (2, 4, 6, 6)).to(memory_format=torch.channels_last)
    out = unpack_index(pack_index(idx, 4))
    assert torch.equal(out, idx) and out.stride() == idx.stride()


def test_bad_masks_and_indices_rejected():
    with pytest.raises(ValueError, match='mask must be a torch.bool tensor'):
        pack_mask(torch.ones(3))
    with pytest.raises(ValueError, match='idx must be an integer tensor'):
        pack_index(torch.ones(3), 2)
    with pytest.raises(ValueError, match='nbits must be an int in 1..16'):
        pack_index(torch.ones(3, dtype=torch.long), 17)
    with pytest.raises(ValueError, match=r'idx values must be in \[0, 4\)'):
        pack_index(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match=r'idx values must be in \[0, 4\)'):
        pack_index(torch.tensor([-1, 2]), 2)
    with pytest.raises(ValueError, match='expects a PackedMask'):
        unpack_mask(torch.ones(3))
