"""tools/gpu_check.sh and its summary: syntax, target evaluation, loud failure, CPU dry run."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'tools', 'gpu_check.sh')


def _summary_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        'gpu_check_summary', os.path.join(ROOT, 'tools', 'gpu_check_summary.py'))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


S = _summary_module()


@pytest.mark.parametrize('script', ['gpu_check.sh', 'fetch_gpu_wheels.sh'])
def test_scripts_parse(script: str) -> None:
    subprocess.run(['bash', '-n', os.path.join(ROOT, 'tools', script)], check=True)


def test_listed_test_paths_exist() -> None:
    with open(os.path.join(ROOT, 'tools', 'gpu_check_tests.txt')) as f:
        paths = [ln.strip() for ln in f if ln.strip() and not ln.startswith('#')]
    assert 'tests/benchmark' in paths
    assert [p for p in paths if not os.path.exists(os.path.join(ROOT, p))] == []


def _r(method: str, saved: float, ips: float, status: str = 'ok') -> Dict[str, Any]:
    return dict(method=method, batch=128, status=status, saved_mb_per_sample=saved,
                images_per_s=ips)


def _bench(**search: Dict[str, Any]) -> Dict[str, Any]:
    return dict(results=[_r('exact', 80.0, 2000.0), _r('L3', 6.0, 1600.0),
                         _r('L2', 13.0, 1700.0), _r('exact-bf16', 42.0, 2100.0),
                         _r('L3-bf16', 8.0, 0.0, status='oom')], search=search)


def test_targets_pass_miss_and_na() -> None:
    rows = {r.name: r for r in S.evaluate(_bench(
        exact=dict(largest=100, exact=True), L3=dict(largest=1200, exact=True)))}
    assert [r.status for r in rows.values()] == ['PASS', 'MISS', 'MISS', 'MISS', 'N/A', 'PASS']
    l3 = rows['L3 activations vs exact (fp32), batch 128']
    assert l3.measured == '13.33x' and '80.0 / 6.0' in l3.note
    assert rows['L3 throughput vs exact (fp32), batch 128'].measured == '0.80x'
    assert 'L3-bf16: oom' in rows['L3-bf16 activations vs exact-bf16, batch 128'].note
    assert rows['largest batch L3 vs exact (fp32)'].measured == '12.0x'


def test_batch_target_with_bounds() -> None:
    def row(**search: Dict[str, Any]) -> Any:
        return S.evaluate(_bench(**search))[-1]
    # L3 stopped early but already >= 10x: a lower bound that passes.
    r = row(exact=dict(largest=100, exact=True), L3=dict(largest=1100, exact=False,
                                                         stopped='time'))
    assert (r.status, r.measured) == ('PASS', '>= 11.0x')
    # A lower bound below the target proves nothing either way.
    r = row(exact=dict(largest=100, exact=True), L3=dict(largest=500, exact=False,
                                                         stopped='time'))
    assert r.status == 'N/A'
    # The baseline not bracketed: no ratio claimed.
    r = row(exact=dict(largest=100, exact=False, stopped='cap'), L3=dict(largest=5000,
                                                                         exact=True))
    assert r.status == 'N/A' and 'not bracketed' in r.note
    assert row().status == 'N/A'


def test_no_bench_means_not_available() -> None:
    assert {r.status for r in S.evaluate(None)} == {'N/A'}


def _kernel_line(name: str, mb: float, bits: int, copy: float, c: float, d: float) -> str:
    # The format tools/bench_kernels.py prints.
    return (f'{name:>5} {mb:7.1f} {bits:4d} | {copy:9.2f} {copy / 3:8.2f} | {c:13.2f} '
            f'{100 * c / copy:6.1f}% | {d:15.2f} {100 * d / copy:6.1f}% | {14.2:5.1f}x')


def test_kernel_rows_take_the_worst_large_size() -> None:
    log = '\n'.join(['header', _kernel_line('fp32', 4.0, 2, 100, 10, 10),
                     _kernel_line('fp32', 256.0, 2, 3000, 2400, 2700),
                     _kernel_line('fp32', 1024.0, 2, 3000, 2000, 2850),
                     _kernel_line('fp32', 1024.0, 4, 3000, 100, 100),
                     _kernel_line('bf16', 1024.0, 2, 3000, 100, 100)])
    comp, decomp = S.kernel_rows(log)
    assert (comp.measured, comp.status) == ('66.7%', 'MISS') and '1024' in comp.note
    assert (decomp.measured, decomp.status) == ('90.0%', 'PASS')
    assert {r.status for r in S.kernel_rows('nothing')} == {'N/A'}


def test_pytest_line() -> None:
    assert S.pytest_line('x\n3 passed, 2 skipped in 1.0s\n') == '3 passed, 2 skipped in 1.0s'
    assert S.pytest_line('') == ''


def test_summary_prints_failed_steps_and_writes_files(tmp_path: str, capsys) -> None:
    steps = os.path.join(tmp_path, 'steps.tsv')
    with open(steps, 'w') as f:
        f.write('env\tok\t1\t\nbuild\tFAIL\t30\texit 1; see build.log\ntests\tok\t5\t\n')
    bench = os.path.join(tmp_path, 'b.json')
    with open(bench, 'w') as f:
        json.dump(_bench(), f)
    assert S.main(['--steps', steps, '--bench', bench, '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'FAILED steps: build' in out and 'Targets:' in out
    assert out.rstrip().splitlines()[-1].startswith('gpu_check: FAILED steps: build')
    with open(os.path.join(tmp_path, 'summary.json')) as f:
        assert json.load(f)['steps'][1]['status'] == 'FAIL'
    assert S.main(['--steps', steps, '--bench', bench, '--strict']) == 3  # MISS rows present


def _run(env: Dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env)
    return subprocess.run(['bash', SCRIPT], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_fails_loudly_and_still_prints_the_table(tmp_path: str) -> None:
    """No usable python: the first step fails, the raw step table is printed, exit != 0."""
    p = _run({'PYTHON': os.path.join(str(tmp_path), 'no-such-python'), 'OUT': str(tmp_path),
              'GPU_CHECK_ALLOW_CPU': '1'}, timeout=60)
    assert p.returncode != 0
    assert 'gpu_check summary' in p.stdout and 'env' in p.stdout and 'FAIL' in p.stdout
    assert 'gpu_check: FAILED: env' in p.stderr


def test_without_a_gpu_it_refuses_unless_cpu_mode(tmp_path: str) -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible')
    p = _run({'PYTHON': sys.executable, 'OUT': str(tmp_path), 'GPU_CHECK_ALLOW_CPU': '0'},
             timeout=120)
    assert p.returncode == 1
    assert 'no CUDA GPU visible (GPU_CHECK_ALLOW_CPU=1 runs the CPU dry run)' in p.stdout
    assert 'Targets:' in p.stdout  # the summary table ran


@pytest.mark.slow
def test_cpu_dry_run(tmp_path: str) -> None:
    """GPU_CHECK_ALLOW_CPU=1: every step runs at small sizes (several minutes on 2 cores)."""
    import torch
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible: run the real check instead')
    p = _run({'PYTHON': sys.executable, 'OUT': str(tmp_path), 'GPU_CHECK_ALLOW_CPU': '1',
              'GPU_CHECK_METHODS': 'exact L3', 'GPU_CHECK_SEARCH_TIME': '60'}, timeout=1500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    last: List[str] = p.stdout.rstrip().splitlines()
    assert any(ln.startswith('gpu_check: all steps ok') for ln in last[-3:])
    names = sorted(os.listdir(tmp_path))
    assert {'summary.txt', 'summary.json', 'tests.log', 'kernels.log', 'bench.log',
            'bench_resnet50_cpu.json', 'bench_resnet50_cpu.png'} <= set(names)
    assert len(names) <= 8  # the results promised in $OUT, no more
    with open(os.path.join(tmp_path, 'bench_resnet50_cpu.json')) as f:
        data = json.load(f)
    assert [r['status'] for r in data['results']] == ['ok', 'ok']
    assert set(data['search']) == {'exact', 'L3'}
    with open(os.path.join(tmp_path, 'summary.json')) as f:
        steps = {s['name']: s['status'] for s in json.load(f)['steps']}
    assert steps == {'env': 'ok', 'wheels': steps['wheels'], 'deps': 'ok', 'build': 'skipped',
                     'extension': 'ok', 'tests': 'ok', 'kernels': 'ok', 'overhead': 'ok',
                     'bench': 'ok'}
