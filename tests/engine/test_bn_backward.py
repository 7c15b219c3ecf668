"""``actnn_mm::bn_backward``: batch norm's backward read from the compressed normalised input
gives the gradients of dequantize + ``native_batch_norm_backward`` (mean 0, invstd 1, weight
scale), for every layout, bit width, per-sample bits and dtype; the CUDA twin gives the CPU's."""
from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from actnn_mm.engine import _ops, reference
from actnn_mm.engine.compressed import compress_fused, decompress
from actnn_mm.engine.norm_backward import bn_backward, bn_backward_supported

CASES = [
    # shape, bits (0: per sample), group_size, channels_last
    ((4, 16, 20, 20), 2, 256, False),   # runs of 400: several groups per channel
    ((3, 48, 7, 9), 3, 64, False),      # runs of 63: groups straddle channels
    ((5, 24, 5, 5), 1, 256, False),     # runs of 25: ten channels per group
    ((4, 40, 6, 6), 4, 128, True),      # channels_last: channels innermost
    ((6, 300), 8, 256, False),          # BatchNorm1d on (N, C)
    ((3, 12, 33), 2, 32, False),        # BatchNorm1d on (N, C, L)
    ((5, 16, 9, 11), 0, 256, False),    # per-sample bits
    ((2, 8, 3, 4, 5), 2, 64, False),    # BatchNorm3d
]


def _compressed(shape, bits, group_size, channels_last, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float32).to(dtype)
    g = torch.randn(shape, dtype=torch.float32).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        g = g.to(memory_format=torch.channels_last)
    n = shape[0]
    c = compress_fused(x, bits, total_bits=3 * n if bits == 0 else 0, min_bits=1, max_bits=8,
                       group_size=group_size, seed=seed + 7)
    return c, g


def _native(g: torch.Tensor, c, scale: Optional[torch.Tensor], mask):
    xh = decompress(c)
    ch = g.shape[1]
    zeros, ones = torch.zeros(ch), torch.ones(ch)
    return torch.ops.aten.native_batch_norm_backward(g, xh, scale, None, None, zeros, ones, True,
                                                     1e-5, mask)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    a, b = a.float(), b.float()
    assert a.shape == b.shape
    scale = b.abs().max().clamp_min(1e-30)
    assert ((a - b).abs().max() / scale).item() <= rel


@pytest.mark.parametrize('shape,bits,group_size,channels_last', CASES)
@pytest.mark.parametrize('with_scale', [True, False])
def test_matches_dequantize_then_native(shape, bits, group_size, channels_last, with_scale):
    c, g = _compressed(shape, bits, group_size, channels_last)
    scale = torch.rand(shape[1]) + 0.5 if with_scale else None
    gx, gw, gb = bn_backward(g, c, scale, True)
    ex, ew, eb = _native(g, c, scale, [True, True, True])
    assert gx.stride() == ex.stride() and gx.dtype == ex.dtype
    _close(gx, ex, 1e-5)
    _close(gw, ew, 1e-5)
    _close(gb, eb, 1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('shape,bits,group_size,channels_last', CASES[:4])
def test_low_precision_matches_native(dtype, shape, bits, group_size, channels_last):
    """x_hat is rounded to the input's dtype like dequantize's output; gx differs from native's
    by its own rounding at most."""
    c, g = _compressed(shape, bits, group_size, channels_last, dtype)
    scale = torch.rand(shape[1]) + 0.5
    gx, gw, gb = bn_backward(g, c, scale, True)
    ex, ew, eb = _native(g, c, scale, [True, True, True])
    assert gx.dtype == dtype
    _close(gx, ex, 2.0 ** -7)
    _close(gw, ew, 1e-4)
    _close(gb, eb, 1e-4)


@pytest.mark.parametrize('shape,bits,group_size,channels_last', CASES)
def test_kernel_matches_reference(shape, bits, group_size, channels_last):
    c, g = _compressed(shape, bits, group_size, channels_last)
    lay = c.layout
    inner, channels = lay.dim_runs(1)
    per_sample = isinstance(c.bits, torch.Tensor)
    args = (lay.flatten(g), c.payload, c.meta, lay.num_samples, lay.numel_per_sample,
            c.group_size, 0 if per_sample else c.bits, c.bits if per_sample else None,
            c.offsets, torch.rand(channels), inner, channels, True)
    fast = _ops.bn_backward(*args)
    slow = reference.bn_backward(*args)
    for a, b in zip(fast, slow):
        _close(a, b, 1e-6)


def test_without_input_grad_only_the_sums():
    c, g = _compressed((4, 16, 20, 20), 2, 256, False)
    gx, gw, gb = bn_backward(g, c, None, False)
    ex, ew, eb = _native(g, c, None, [True, True, True])
    assert gx is None
    _close(gw, ew, 1e-5)
    _close(gb, eb, 1e-5)


def test_nan_groups_propagate_like_native():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    x[0, 1, 3, 3] = float('nan')
    c = compress_fused(x, 2, seed=1)
    g = torch.randn_like(x)
    gx, gw, gb = bn_backward(g, c, None, True)
    ex, ew, eb = _native(g, c, None, [True, True, True])
    assert torch.equal(torch.isnan(gw), torch.isnan(ew))
    assert torch.equal(torch.isnan(gx), torch.isnan(ex))


def test_same_result_whatever_the_thread_count():
    c, g = _compressed((8, 32, 20, 20), 2, 256, False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bn_backward(g, c, None, True)
        torch.set_num_threads(max(2, before))
        many = bn_backward(g, c, None, True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_bad_arguments_name_what_was_expected():
    c, g = _compressed((2, 6, 5, 5), 2, 64, False)
    lay = c.layout
    base = [lay.flatten(g), c.payload, c.meta, 2, lay.numel_per_sample, 64, 2, None, None, None,
            25, 6, True]
    wrong_channels = list(base)
    wrong_channels[11] = 7
    with pytest.raises(RuntimeError, match='not a multiple of channels'):
        _ops.bn_backward(*wrong_channels)
    wrong_scale = list(base)
    wrong_scale[9] = torch.ones(5)
    with pytest.raises(RuntimeError, match=r'scale must be a contiguous float32 tensor of shape'):
        _ops.bn_backward(*wrong_scale)
    wrong_grad = list(base)
    wrong_grad[0] = torch.randn(10)
    with pytest.raises(RuntimeError, match='grad has 10 elements'):
        _ops.bn_backward(*wrong_grad)


def test_supported_only_for_quantized_tensors_of_the_gradients_geometry():
    c, g = _compressed((2, 6, 5, 5), 2, 64, False)
    assert bn_backward_supported(c, g)
    assert not bn_backward_supported(c, g.double())
    assert not bn_backward_supported(c, g[:1])
    raw = compress_fused(torch.randn(2, 6, 5, 5), 2)
    raw_like = type(raw)(g, None, 32, None, raw.layout, g.dtype, g.device, 256)
    assert not bn_backward_supported(raw_like, g)


def test_fake_kernel_gives_the_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    c, g = _compressed((2, 6, 5, 5), 2, 64, False)
    lay = c.layout
    with FakeTensorMode(allow_non_fake_inputs=True):
        gx, gw, gb = torch.ops.actnn_mm.bn_backward(lay.flatten(g), c.payload, c.meta, 2,
                                                    lay.numel_per_sample, 64, 2, None, None,
                                                    None, 25, 6, True)
    assert gx.shape == (g.numel(), ) and gw.shape == (6, ) and gb.shape == (6, )
    assert gw.dtype == torch.float32


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split('.')[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('level', ['L2', 'L3'])
def test_q_batch_norm_backward_is_one_op_with_the_same_gradients(level, monkeypatch):
    """QBatchNorm2d's backward reads the compressed x_hat in one op, no dequantize, and gives
    the gradients of the dequantize + native path (same torch seed, same rounding)."""
    from actnn_mm import convert
    from actnn_mm.engine import CompressionConfig
    from actnn_mm.layers import norm

    def run(fused: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.BatchNorm2d(8))
        convert(model, CompressionConfig.from_level(level))
        model.train()
        x = torch.randn(8, 8, 32, 32, requires_grad=True)
        torch.manual_seed(1)
        out = model(x)
        if not fused:
            monkeypatch.setattr(norm, 'compressed_bn_backward', lambda *a, **k: None)
        counter = _OpCounter()
        with counter:
            out.backward(torch.randn_like(out))
        monkeypatch.undo()
        return x.grad, model[0].weight.grad, model[0].bias.grad, counter.names

    fused, unfused = run(True), run(False)
    assert 'bn_backward' in fused[3] and 'dequantize' not in fused[3]
    assert 'bn_backward' not in unfused[3] and 'native_batch_norm_backward' in unfused[3]
    for a, b in zip(fused[:3], unfused[:3]):
        _close(a, b, 1e-5)


def test_fused_backward_still_steps_the_allocator():
    from actnn_mm import convert
    from actnn_mm.engine import CompressionConfig
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(8))
    allocator = convert(model, CompressionConfig.from_level('L3')).allocator
    model.train()
    for _ in range(2):
        model(torch.randn(8, 8, 32, 32, requires_grad=True)).sum().backward()
    assert allocator.steps == 2


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize('shape,bits,group_size,channels_last', CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(shape, bits, group_size, channels_last, dtype):
    c, g = _compressed(shape, bits, group_size, channels_last, dtype)
    scale = torch.rand(shape[1]) + 0.5
    cpu = bn_backward(g, c, scale, True)
    cc = type(c)(c.payload.cuda(), c.meta.cuda(),
                 c.bits.cuda() if isinstance(c.bits, torch.Tensor) else c.bits,
                 None if c.offsets is None else c.offsets.cuda(), c.layout, c.dtype,
                 torch.device('cuda'), c.group_size)
    gpu = bn_backward(g.cuda(), cc, scale.cuda(), True)
    assert gpu[0].stride() == cpu[0].stride()
    rel = 1e-5 if dtype == torch.float32 else 2.0 ** -7
    _close(gpu[0].cpu(), cpu[0], rel)
    _close(gpu[1].cpu(), cpu[1], 1e-5)
    _close(gpu[2].cpu(), cpu[2], 1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_over_65535_samples_and_graph_replay():
    c, g = _compressed((70000, 4, 2, 2), 2, 16, False)
    cc = type(c)(c.payload.cuda(), c.meta.cuda(), c.bits, None, c.layout, c.dtype,
                 torch.device('cuda'), c.group_size)
    gg = g.cuda()
    ref = bn_backward(g, c, None, True)
    out = bn_backward(gg, cc, None, True)
    _close(out[0].cpu(), ref[0], 1e-5)
    _close(out[1].cpu(), ref[1], 1e-4)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        bn_backward(gg, cc, None, True)  # warm-up on the capture stream
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = bn_backward(gg, cc, None, True)
    gg.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    _close(captured[1].cpu(), 2 * ref[1], 1e-4)
