"""CUDA kernels (skipped without a GPU): bit-exact equality with the CPU kernel for the same seed,
fp16/bf16, tensors over 2^31 elements and over 65,535 samples, no host synchronisation, L4 swap."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import DTYPES

from actnn_mm.engine import (
    BitAllocator,
    CompressionConfig,
    LayerScheme,
    compress,
    decompress,
    enable_expandable_segments,
    pack_index,
    pack_mask,
    reference,
    unpack_index,
    unpack_mask,
)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a.float()),
                                                                 torch.nan_to_num(b.float()))
    return torch.equal(a, b)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bits', [1, 2, 4, 8, 'mixed'])
@pytest.mark.parametrize('shape, group_size', [((4, 1000), 256), ((3, 8, 17, 19), 128),
                                               ((2, 64), 8), ((5, 4096), 4096), ((1, 3), 512)])
@pytest.mark.parametrize('stochastic', [True, False])
def test_cuda_bit_exact_with_cpu(dtype, bits, shape, group_size, stochastic):
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    x.view(-1)[5] = -0.0
    if x.numel() > 600:
        x.view(-1)[600] = float('nan')
    b = torch.randint(1, 9, (shape[0],), dtype=torch.int32) if bits == 'mixed' else bits
    if bits == 'mixed':
        c_cpu = compress(x, b, group_size=group_size, seed=2**64 - 5, offset=3,
                         stochastic=stochastic)
        c_gpu = compress(x.cuda(), b.cuda(), group_size=group_size, seed=2**64 - 5, offset=3,
                         stochastic=stochastic, bits_sum=int(b.sum()))
    else:
        c_cpu = compress(x, b, group_size=group_size, seed=123, stochastic=stochastic)
        c_gpu = compress(x.cuda(), b, group_size=group_size, seed=123, stochastic=stochastic)
    assert _same(c_gpu.payload, c_cpu.payload)
    assert torch.equal(c_gpu.meta.cpu().view(torch.int32), c_cpu.meta.view(torch.int32))
    y_gpu = decompress(c_gpu)
    assert y_gpu.is_cuda and y_gpu.dtype == dtype
    assert _same(y_gpu, decompress(c_cpu))


def test_cuda_channels_last_and_reference_on_device():
    x = torch.randn(4, 6, 9, 11, device='cuda').to(memory_format=torch.channels_last)
    c = compress(x, 2, seed=8)
    y = decompress(c)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _same(y, decompress(compress(x.cpu(), 2, seed=8)))
    buf = x.permute(0, 2, 3, 1).reshape(-1)
    p, m = reference.quantize(buf, 4, 256, 2, None, None, c.payload.numel(), True, 8, 0)
    assert _same(p, c.payload) and _same(m, c.meta)


def test_cuda_minmax_and_packing_match_cpu():
    x = torch.randn(7, 999)
    assert _same(torch.ops.actnn_mm.group_minmax(x.cuda().reshape(-1), 7, 256),
                 torch.ops.actnn_mm.group_minmax(x.reshape(-1), 7, 256))
    m = torch.randn(3, 5, 7, 9) > 0
    pm = pack_mask(m.cuda())
    assert _same(pm.data, pack_mask(m).data) and torch.equal(unpack_mask(pm).cpu(), m)
    idx = torch.randint(0, 2**11, (12345,))
    pi = pack_index(idx.cuda(), 11)
    assert torch.equal(unpack_index(pi).cpu(), idx)


def test_cuda_generator_reproducible_and_advancing():
    x = torch.randn(16, 512, device='cuda')
    g1 = torch.Generator(device='cuda').manual_seed(5)
    g2 = torch.Generator(device='cuda').manual_seed(5)
    a1, a2 = compress(x, 2, generator=g1), compress(x, 2, generator=g1)
    b1 = compress(x, 2, generator=g2)
    assert torch.equal(a1.payload, b1.payload) and not torch.equal(a1.payload, a2.payload)


@pytest.mark.parametrize('dtype', DTYPES)
def test_cuda_same_torch_seed_same_bytes_as_cpu(dtype):
    """torch.manual_seed alone (no explicit seed) gives the CPU kernel's bytes on the GPU."""
    x = (torch.randn(6, 1000) * 2 - 1).to(dtype)
    bits = torch.tensor([1, 2, 4, 8, 2, 3], dtype=torch.int32)
    for b in (2, bits):
        torch.manual_seed(11)
        c_cpu = compress(x, b)
        torch.manual_seed(11)
        c_gpu = compress(x.cuda(), b.cuda() if isinstance(b, torch.Tensor) else b,
                         bits_sum=int(bits.sum()) if isinstance(b, torch.Tensor) else None)
        assert _same(c_gpu.payload, c_cpu.payload)
        assert torch.equal(c_gpu.meta.cpu().view(torch.int32), c_cpu.meta.view(torch.int32))


def test_cuda_graph_replays_draw_new_random_numbers():
    """Under capture the CUDA generator's graph-safe Philox state is used: each replay rounds
    with fresh numbers (a host-drawn seed would be frozen into the graph)."""
    x = torch.randn(8, 4096, device='cuda')
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        compress(x, 2)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        c = compress(x, 2)
    graph.replay()
    first = c.payload.clone()
    graph.replay()
    assert not torch.equal(first, c.payload)
    err = (decompress(c) - x).abs().max()
    assert float(err) <= float((x.max() - x.min()) / 3) + 1e-6


def test_cuda_more_than_65535_samples():
    x = torch.randn(70_000, 300, device='cuda', dtype=torch.float16)
    c = compress(x, 2, stochastic=False)
    y = decompress(c)
    tail = x[-5:].cpu()
    assert _same(y[-5:], decompress(compress(tail, 2, stochastic=False)))


def test_cuda_more_than_2_pow_31_elements():
    n = (2**31) // 256 + 3                      # 2^31 + 768 elements, 8.4M samples
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip('needs ~14 GiB of free GPU memory')
    x = torch.empty(n, 256, device='cuda', dtype=torch.float16).normal_()
    c = compress(x, 2, stochastic=False)
    assert c.payload.numel() == n * 64
    tail = x[-4:].cpu()
    y = decompress(c)
    del x
    assert _same(y[-4:], decompress(compress(tail, 2, stochastic=False)))


def test_cuda_scheme_path_never_synchronises():
    cfg = CompressionConfig.from_level('L3')
    alloc = BitAllocator(cfg, interval=50)
    schemes = [alloc.scheme('conv', 9, name='a'), alloc.scheme('norm', name='b'),
               LayerScheme(cfg.replace(per_sample=False), 'linear', allocator=alloc)]
    x = torch.randn(32, 16, 32, 32, device='cuda')
    for s in schemes:  # warm-up: first calls may load the extension
        s.decompress(s.compress(x))
    alloc.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            for s in schemes:
                s.decompress(s.compress(x))
                s.observe_grad(x)
            assert not alloc.step()
    finally:
        torch.cuda.set_sync_debug_mode('default')


def test_cuda_l4_swap_roundtrip_frees_device_memory():
    cfg = CompressionConfig.from_level('L4', per_layer=False, stochastic=False)
    s = LayerScheme(cfg, 'conv', 9)
    x = torch.randn(64, 64, 56, 56, device='cuda')
    expected = decompress(compress(x, s.compress(x).bits.cpu().cuda(), stochastic=False))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    c = s.compress(x)
    torch.cuda.synchronize()
    assert c.payload.device.type == 'cpu' and c.payload.is_pinned()
    assert torch.cuda.memory_allocated() - before < c.nbytes // 2
    y = s.decompress(c)
    assert y.is_cuda and torch.equal(y, expected)


def test_cuda_l5_enables_expandable_segments():
    assert enable_expandable_segments()
