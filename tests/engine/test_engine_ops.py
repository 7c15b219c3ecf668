"""The ops as torch.library operators: schema/fake checks, torch.compile tracing, autograd use,
lazy loading, and the (never silent) pure-PyTorch fallback."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from actnn_mm.engine import _ops, compress, decompress, pack_mask, unpack_mask


def _quantize_args(n=4, d=300, bits=2, per_sample=False):
    x = torch.randn(n, d)
    gs = -(-d // 256)
    if per_sample:
        b = torch.arange(1, n + 1, dtype=torch.int32)
        sizes = b.long() * gs * 32
        return (x.reshape(-1), n, 256, 0, b, torch.cumsum(sizes, 0) - sizes, int(sizes.sum()),
                True, 1, 2, False, None)
    return x.reshape(-1), n, 256, bits, None, None, n * gs * 32 * bits, True, 1, 2, False, None


@pytest.mark.parametrize('per_sample', [False, True])
def test_opcheck_quantize_dequantize(per_sample):
    qargs = _quantize_args(per_sample=per_sample)
    torch.library.opcheck(torch.ops.actnn_mm.quantize, qargs)
    p, m = torch.ops.actnn_mm.quantize(*qargs)
    dargs = (p, m, 4, 300, 256, qargs[3], qargs[4], qargs[5], torch.float16)
    torch.library.opcheck(torch.ops.actnn_mm.dequantize, dargs)


def test_opcheck_minmax_and_packing():
    torch.library.opcheck(torch.ops.actnn_mm.group_minmax, (torch.randn(3 * 500), 3, 256))
    v = torch.randint(0, 8, (1001,))
    torch.library.opcheck(torch.ops.actnn_mm.pack_bits, (v, 3))
    torch.library.opcheck(torch.ops.actnn_mm.unpack_bits,
                          (torch.ops.actnn_mm.pack_bits(v, 3), 1001, 3))


def test_torch_compile_fullgraph_traces_the_api():
    def roundtrip(x):
        y = decompress(compress(x, 2, seed=3))
        m = unpack_mask(pack_mask(x > 0))
        return y * m

    x = torch.randn(4, 3, 10, 10)
    compiled = torch.compile(roundtrip, fullgraph=True, backend='aot_eager')
    assert torch.equal(compiled(x), roundtrip(x))


def test_under_autograd_in_a_custom_function():
    """The layers' pattern: compress in forward, decompress in backward."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.saved = compress(x, 8, seed=0)
            ctx.save_for_backward(w)
            return x * w

        @staticmethod
        def backward(ctx, g):
            (w,) = ctx.saved_tensors
            x = decompress(ctx.saved)
            return g * w, (g * x).sum(0)

    x = torch.randn(8, 64, requires_grad=True)
    w = torch.randn(64, requires_grad=True)
    Scale.apply(x, w).sum().backward()
    assert torch.allclose(w.grad, x.detach().sum(0), atol=(x.max() - x.min()).item() / 255 * 8)
    assert torch.equal(x.grad, w.detach().expand(8, 64))


def test_import_does_not_load_or_build_the_extension():
    code = ('import sys, actnn_mm.engine as e; '
            'e.CompressionConfig(); '
            'assert "actnn_mm._C" not in sys.modules, "extension loaded at import"')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=300)


def test_reference_fallback_warns_and_matches(monkeypatch):
    x = torch.randn(3, 777, dtype=torch.bfloat16)
    fast = compress(x, 4, seed=9)
    monkeypatch.setenv('ACTNN_MM_REFERENCE', '1')
    monkeypatch.setattr(_ops, '_WARNED', set())
    with pytest.warns(RuntimeWarning, match='slow pure-PyTorch compression path'):
        slow = compress(x, 4, seed=9)
    assert torch.equal(fast.payload, slow.payload) and torch.equal(fast.meta, slow.meta)
    assert torch.equal(decompress(slow), decompress(fast))
    m = torch.randn(50) > 0
    assert torch.equal(unpack_mask(pack_mask(m)), m)


def test_reference_is_the_dispatchers_default_kernel(monkeypatch):
    """Devices without a compiled kernel reach the reference through the dispatcher (its
    CompositeExplicitAutograd kernel), which warns once and gives the kernels' bytes."""
    x = torch.randn(4, 300)
    args = (x.reshape(-1), 4, 64, 0, 9, 1, 8, None, None, 1, 1, None, 1.0, True, 3, 1, False,
            None)
    for name in _ops._OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'actnn_mm::{name}',
                                                              'CompositeExplicitAutograd')
    monkeypatch.setattr(_ops, '_WARNED', set())
    op = torch.ops.actnn_mm.compress.default
    with pytest.warns(RuntimeWarning, match="no compiled kernels for device type 'cpu'"):
        slow = op._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args)
    fast = op(*args)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
