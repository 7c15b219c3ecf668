"""Edge cases and bad input: layouts, special values, empty/0-d tensors, argument errors."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import DTYPES, element_steps

from actnn_mm.engine import CompressedTensor, compress, decompress


def _roundtrip_ok(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    y = decompress(compress(x, bits, seed=3))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    return y


@pytest.mark.parametrize('dtype', DTYPES)
def test_channels_last_stays_channels_last(dtype):
    x = torch.randn(3, 5, 7, 9).to(dtype).to(memory_format=torch.channels_last)
    c = compress(x, 8, seed=1)
    y = decompress(c)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride() == x.stride()
    # Grouped in memory (NHWC) order: identical to compressing the NHWC buffer itself.
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    y_ref = decompress(compress(nhwc, 8, seed=1)).permute(0, 3, 1, 2)
    assert torch.equal(y, y_ref)
    eps = torch.finfo(dtype).eps  # the output's own rounding
    limit = (x.float().max() - x.float().min()) / 255 * 1.01 + eps * x.float().abs()
    assert ((y.float() - x.float()).abs() <= limit).all()


def test_channels_last_3d_and_other_dense_permutations():
    x = torch.randn(2, 3, 4, 5, 6).to(memory_format=torch.channels_last_3d)
    y = _roundtrip_ok(x, 8)
    assert y.stride() == x.stride()
    z = torch.randn(4, 6, 5).permute(0, 2, 1)  # dense, samples outermost
    assert _roundtrip_ok(z, 8).stride() == z.stride()


def test_non_contiguous_inputs():
    base = torch.randn(6, 40, 30)
    for x in (base[:, ::2, 1:], base.transpose(0, 1), base[::2],
              base.unsqueeze(1).expand(6, 3, 40, 30)):
        y = _roundtrip_ok(x, 8)
        rng = (x.max() - x.min()).item()
        assert (y - x).abs().max() <= rng / 255 + 1e-5


@pytest.mark.parametrize('shape', [(), (1,), (7,), (0,), (0, 5), (4, 0), (3, 0, 2), (1, 1, 1, 1)])
def test_empty_and_tiny_tensors(shape):
    x = torch.randn(shape)
    c = compress(x, 2, seed=0)
    y = decompress(c)
    assert y.shape == x.shape
    if x.numel():
        # A single element is its own group: min = max = x, stored exactly.
        if x.numel() == 1:
            assert torch.equal(y, x)
    else:
        assert c.payload.numel() == 0


@pytest.mark.parametrize('d', [1, 7, 255, 257, 1000])
def test_odd_sizes_not_divisible_by_group(d):
    x = torch.randn(3, d) * 5
    c = compress(x, 2, seed=11)
    y = decompress(c)
    step, _ = element_steps(c)
    assert ((y - x).abs() <= step * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize('dtype', DTYPES)
def test_constant_groups_are_exact(dtype):
    x = torch.full((4, 300), 2.5, dtype=dtype)
    x[1] = -7.0
    c = compress(x, 1, seed=5)
    assert torch.equal(decompress(c), x)
    assert (c.meta.reshape(-1, 2)[:, 1] == 0).all()


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_groups_stay_non_finite(dtype, value):
    x = torch.randn(2, 512, dtype=dtype)
    x[0, 300] = value  # sample 0, group 1
    y = decompress(compress(x, 2, seed=1))
    assert not torch.isfinite(y[0, 256:512]).any()
    assert torch.isfinite(y[0, :256]).all() and torch.isfinite(y[1]).all()


def test_range_overflowing_fp32_is_non_finite_not_plausible():
    x = torch.tensor([[-3e38, 3e38] * 4])
    y = decompress(compress(x, 8, seed=0))
    assert not torch.isfinite(y).any()


def test_tiny_range_is_stored_as_constant_within_range():
    x = torch.tensor([[1e-38, 1.0000001e-38] * 8])
    y = decompress(compress(x, 8, seed=0))
    assert ((y - x).abs() <= (x.max() - x.min())).all()


def test_per_sample_bits_roundtrip_and_error_shrinks_with_bits():
    x = torch.randn(8, 1000)
    bits = torch.arange(1, 9, dtype=torch.int32)
    c = compress(x, bits, seed=2)
    err = (decompress(c) - x).abs().amax(1)
    assert (err[1:] < err[:-1]).all()


def test_passthrough_bits_keep_the_tensor():
    x = torch.randn(3, 10)
    for b in (16, 32):
        c = compress(x, b)
        y = decompress(c)
        assert c.is_raw and y.data_ptr() == x.data_ptr() and torch.equal(y, x)
        assert c.nbytes == x.numel() * 4


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize('dtype',
                         [torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64])
def test_wrong_dtype_rejected(dtype):
    with pytest.raises(ValueError, match='x must be a float32, float16 or bfloat16'):
        compress(torch.zeros(4, 4, dtype=dtype))


@pytest.mark.parametrize('bits', [0, 3, 5, 7, 9, 12, 64, -1, 2.0, True, '2'])
def test_bad_bits_rejected(bits):
    with pytest.raises(ValueError, match='bits must be one of'):
        compress(torch.randn(4, 4), bits)


def test_bad_per_sample_bits_rejected():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r'bits must have shape \[4\]'):
        compress(x, torch.tensor([2, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match='in 1..8'):
        compress(x, torch.tensor([2, 0, 2, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match='integer tensor'):
        compress(x, torch.tensor([2.0, 2, 2, 2]))
    with pytest.raises(RuntimeError, match='bits_sum=9'):
        compress(x, torch.tensor([2, 2, 2, 2]), bits_sum=9)
    with pytest.raises(ValueError, match='bits is on meta but x is on cpu'):
        compress(x, torch.tensor([2, 2, 2, 2], device='meta'))


@pytest.mark.parametrize('group_size', [0, 4, 12, 100, 8192, 256.0])
def test_bad_group_size_rejected(group_size):
    with pytest.raises(ValueError, match='group_size must be a multiple of 8'):
        compress(torch.randn(4, 4), 2, group_size=group_size)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match='x must be a torch.Tensor'):
        compress([1.0, 2.0])
    with pytest.raises(ValueError, match='seed must be an int'):
        compress(torch.randn(4), 2, seed=-1)
    with pytest.raises(ValueError, match='generator must be a torch.Generator'):
        compress(torch.randn(4), 2, generator=123)
    with pytest.raises(ValueError, match='expects a CompressedTensor'):
        decompress(torch.randn(3))


def test_kernel_checks_name_the_argument():
    """The C++ entry points reject misuse with TORCH_CHECK messages (RuntimeError)."""
    ops = torch.ops.actnn_mm
    x = torch.randn(64)
    with pytest.raises(RuntimeError, match='x must be float32, float16 or bfloat16'):
        ops.quantize(x.double(), 1, 256, 2, None, None, 64, True, 0, 0, False, None)
    with pytest.raises(RuntimeError, match='bits must be in 1..8'):
        ops.quantize(x, 1, 256, 9, None, None, 288, True, 0, 0, False, None)
    with pytest.raises(RuntimeError, match='payload_bytes must be 64'):
        ops.quantize(x, 1, 256, 2, None, None, 10, True, 0, 0, False, None)
    with pytest.raises(RuntimeError, match='group_size must be a multiple of 8'):
        ops.quantize(x, 1, 12, 2, None, None, 64, True, 0, 0, False, None)
    with pytest.raises(RuntimeError, match='sample_bits must be a contiguous int32'):
        ops.quantize(x, 2, 256, 0, torch.ones(2), torch.zeros(2, dtype=torch.long), 64, True, 0,
                     0, False, None)
    with pytest.raises(RuntimeError, match='x must be contiguous'):
        ops.quantize(torch.randn(8, 8).t(), 1, 256, 2, None, None, 64, True, 0, 0, False, None)
    p, m = ops.quantize(x, 1, 256, 2, None, None, 64, True, 0, 0, False, None)
    with pytest.raises(RuntimeError, match='meta must be a contiguous float32'):
        ops.dequantize(p, m[:1], 1, 64, 256, 2, None, None, torch.float32)
    with pytest.raises(RuntimeError, match='dtype must be float32, float16 or bfloat16'):
        ops.dequantize(p, m, 1, 64, 256, 2, None, None, torch.int32)
    with pytest.raises(RuntimeError, match='nbits must be in 1..8'):
        ops.pack_bits(torch.ones(8, dtype=torch.bool), 9)


def test_inconsistent_per_sample_tables_never_write_out_of_bounds():
    """Offsets pointing outside the payload decode to NaN instead of corrupting memory."""
    ops = torch.ops.actnn_mm
    x = torch.randn(2 * 256)
    bits = torch.tensor([2, 2], dtype=torch.int32)
    offsets = torch.tensor([0, 10_000], dtype=torch.int64)
    p, m = ops.quantize(x, 2, 256, 0, bits, offsets, 128, True, 0, 0, False, None)
    y = ops.dequantize(p, m, 2, 256, 256, 0, bits, offsets, torch.float32)
    assert torch.isfinite(y[:256]).all() and torch.isnan(y[256:]).all()


def test_compressed_tensor_reports_bytes():
    x = torch.randn(16, 1024)
    c = compress(x, 2)
    assert isinstance(c, CompressedTensor)
    assert c.nbytes == 16 * 1024 * 2 // 8 + 16 * 4 * 8
    assert x.numel() * 4 / c.nbytes > 14
