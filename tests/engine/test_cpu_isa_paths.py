"""Every hand-vectorised CPU path gives the reference's bytes: the kernels run once per ISA cap
(``ACTNN_MM_CPU_ISA=avx512|avx2|none``, each capped to what the CPU has) in a fresh process,
over the cases each path treats differently: whole and partial groups, 1..8 bits, a batch-norm
affine folded into the quantizer (groups inside one channel, groups across channels, negative,
zero and infinite scales), non-finite inputs, bf16."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from actnn_mm import _ext_loader

pytestmark = pytest.mark.skipif(not _ext_loader.is_built(), reason='compiled extension not built')

CHECK = textwrap.dedent('''
    import itertools, torch
    from actnn_mm.engine import _ops, reference as R

    INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16}

    def same(a, b):
        """Same bits, NaN (whatever its payload) where the other has NaN."""
        if a.dtype not in INT:
            return torch.equal(a, b)
        nan = a.isnan()
        return torch.equal(nan, b.isnan()) and torch.equal(a[~nan].view(INT[a.dtype]),
                                                           b[~nan].view(INT[a.dtype]))

    torch.manual_seed(0)
    cases = bad = 0
    for n, d, g, bits, dtype in itertools.product(
            [1, 3], [64, 300, 1024], [64, 72, 256], [1, 2, 3, 4, 5, 8],
            [torch.float32, torch.bfloat16]):
        x = (torch.randn(n, d) * 3).to(dtype)
        if d == 300:
            x[0, 5] = float('nan')
        for total in ([0, 2 * n] if bits == 2 else [0]):
            b = 0 if total else bits
            args = (x.reshape(-1), n, g, b, total, 1, 8, None, None, 1, 1, None, 1.0, True,
                    12345678901, 77, False, None)
            cases += 1
            bad += not all(same(p, q) for p, q in zip(_ops.compress(*args), R.compress(*args)))
            qargs = (x.reshape(-1), n, g, bits, None, None, n * -(-d // g) * g // 8 * bits,
                     True, 5, 9, False, None)
            got, ref = _ops.quantize(*qargs), R.quantize(*qargs)
            cases += 1
            bad += not all(same(p, q) for p, q in zip(got, ref))
            dargs = (got[0], got[1], n, d, g, bits, None, None, dtype)
            cases += 1
            bad += not same(_ops.dequantize(*dargs), R.dequantize(*dargs))
    for n, c, hw, g, bits, special in itertools.product(
            [2, 5], [3, 16], [1, 7, 16, 40], [64, 256], [0, 2, 3],
            ['plain', 'negative', 'zero', 'inf', 'nan']):
        x = torch.randn(n, c, hw, hw) * 3
        shift, scale = torch.randn(c), torch.rand(c) + 0.1
        if special == 'negative':
            scale[0] = -scale[0]
        elif special == 'zero':
            scale[1] = 0.0
        elif special == 'inf':
            scale[0], shift[0] = float('inf'), float(x[0, 0, 0, 0])
        elif special == 'nan':
            x.view(-1)[3] = float('nan')
        st = [torch.zeros(2), torch.zeros(2)]
        total = 2 * n if bits == 0 else 0
        args = lambda s: (x.reshape(-1), n, g, bits, total, 1, 8, shift, scale, hw * hw, c, s,
                          0.5, True, 3, 4, False, None)
        got, ref = _ops.compress(*args(st[0])), R.compress(*args(st[1]))
        cases += 1
        bad += not (all(same(p, q) for p, q in zip(got, ref)) and same(st[0], st[1]))
    print(f'cases={cases} bad={bad}')
''')


def _run(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACTNN_MM_CPU_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    return subprocess.run([sys.executable, '-c', CHECK], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize('isa', ['avx512', 'avx2', 'none'])
def test_each_cpu_path_matches_the_reference_bytes(isa: str) -> None:
    res = _run(isa)
    assert res.returncode == 0, res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    cases = int(line.split()[0].split('=')[1])
    assert cases > 400 and line.endswith('bad=0'), line


def test_unknown_isa_cap_is_an_error() -> None:
    res = _run('sse9')
    assert res.returncode != 0
    assert 'ACTNN_MM_CPU_ISA must be avx512, avx2 or none' in res.stderr
