"""CUDA twins of the fused ops (skipped without a GPU): bit-exact with the CPU kernels under the
same seed and the same torch seed, tensors over 2^31 elements and over 65,535 samples, CUDA graph
replay, no host synchronisation."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import DTYPES

from actnn_mm.engine import CompressionConfig, LayerScheme, decompress
from actnn_mm.engine.compressed import Affine, compress_fused
from actnn_mm.engine.mask import masked_grad, pack_nonzero, unpack_mask_as

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    return torch.equal(a, b)


def _assert_same(c_gpu, c_cpu) -> None:
    assert _bits_equal(c_gpu.payload, c_cpu.payload)
    assert _bits_equal(c_gpu.meta, c_cpu.meta)
    if isinstance(c_cpu.bits, torch.Tensor):
        assert torch.equal(c_gpu.bits.cpu(), c_cpu.bits)
        assert torch.equal(c_gpu.offsets.cpu(), c_cpu.offsets)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('bits,total', [(2, 0), (4, 0), (0, 13), (0, 48), (0, 6)])
@pytest.mark.parametrize('affine', [None, 'channel', 'channels_last', 'block'])
def test_cuda_fused_bit_exact_with_cpu(dtype, bits, total, affine):
    x = (torch.randn(6, 8, 17, 19) * torch.logspace(-1, 1, 6).reshape(6, 1, 1, 1)).to(dtype)
    x.view(-1)[700] = float('nan')
    aff = None
    if affine in ('channel', 'channels_last'):
        if affine == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)
        aff = (torch.randn(8), torch.rand(8) + 0.5, 1, None)
    elif affine == 'block':
        aff = (torch.randn(48), torch.rand(48) + 0.5, None, 17 * 19)
    st_cpu, st_gpu = torch.zeros(2), torch.zeros(2, device='cuda')
    kw = dict(total_bits=total, group_size=128, seed=2**64 - 5, offset=3, stats_factor=0.5)
    mk = lambda dev: None if aff is None else Affine(aff[0].to(dev), aff[1].to(dev),  # noqa
                                                     aff[2], aff[3])
    c_cpu = compress_fused(x, bits, affine=mk('cpu'), stats=st_cpu, **kw)
    c_gpu = compress_fused(x.cuda(), bits, affine=mk('cuda'), stats=st_gpu, **kw)
    _assert_same(c_gpu, c_cpu)
    assert _bits_equal(st_gpu, st_cpu)
    assert _bits_equal(decompress(c_gpu), decompress(c_cpu))


@pytest.mark.parametrize('dtype', DTYPES)
def test_cuda_fused_same_torch_seed_same_bytes_as_cpu(dtype):
    x = torch.randn(8, 3000).to(dtype)
    torch.manual_seed(11)
    c_cpu = compress_fused(x, 0, total_bits=17)
    torch.manual_seed(11)
    c_gpu = compress_fused(x.cuda(), 0, total_bits=17)
    _assert_same(c_gpu, c_cpu)


def test_cuda_fused_more_than_65535_samples():
    n = 70_000
    x = torch.randn(n, 300, dtype=torch.float16) * torch.rand(n, 1, dtype=torch.float16)
    c_cpu = compress_fused(x, 0, total_bits=2 * n, seed=3)
    c_gpu = compress_fused(x.cuda(), 0, total_bits=2 * n, seed=3)
    _assert_same(c_gpu, c_cpu)
    assert int(c_gpu.bits.sum()) == 2 * n


def test_cuda_fused_more_than_2_pow_31_elements():
    n = 4
    d = (2**31) // n + 1024                      # 2^31 + 4096 elements in 4 samples
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip('needs ~14 GiB of free GPU memory')
    x = torch.empty(n, d, device='cuda', dtype=torch.float16).normal_()
    mean, invstd = torch.zeros(n, device='cuda'), torch.full((n,), 2.0, device='cuda')
    c = compress_fused(x, 0, total_bits=3 * n, seed=9, affine=Affine(mean, invstd, dim=0))
    assert int(c.bits.sum()) == 3 * n
    tail = x[:, -2048:].cpu()
    y = decompress(c)[:, -2048:].cpu()
    del x
    # Past element 2^31 the codes decode within one step of the normalised values (2 x).
    step = c.meta.reshape(n, -1, 2)[:, -8:, 1].max().cpu()
    assert (y.float() - 2.0 * tail.float()).abs().max() <= step * 1.01


def test_cuda_fused_graph_replay_draws_anew_and_is_sync_free():
    cfg = CompressionConfig.from_level('L3')
    scheme = LayerScheme(cfg, kind='conv', kernel_area=9)
    x = torch.randn(16, 32, 28, 28, device='cuda')
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        scheme.compress(x)  # warm-up outside the graph (statistics tensor, extension)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        c = scheme.compress(x)
        y = decompress(c)
    graph.replay()
    first = c.payload.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(first, c.payload)
    assert int(c.bits.sum()) == 2 * 16
    step = c.meta.reshape(-1, 2)[:, 1].max()
    assert float((y - x).abs().max()) <= float(step) * 1.0001
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            scheme.decompress(scheme.compress(x))
            scheme.observe_grad(x)
    finally:
        torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('dtype', DTYPES)
def test_cuda_mask_ops_match_cpu(dtype):
    x = torch.randn(3, 5, 7, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    x.view(-1)[4] = 0.0
    g = torch.randn_like(x)
    for positive in (False, True):
        p_cpu, p_gpu = pack_nonzero(x, positive), pack_nonzero(x.cuda(), positive)
        assert torch.equal(p_gpu.data.cpu(), p_cpu.data)
        assert _bits_equal(unpack_mask_as(p_gpu, dtype), unpack_mask_as(p_cpu, dtype))
        assert _bits_equal(masked_grad(p_gpu, g.cuda()), masked_grad(p_cpu, g))
