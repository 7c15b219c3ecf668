"""tools/bench_memory.py end to end on CPU at tiny sizes: valid JSON, PNG, table printed last."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from actnn_tools.benchmark.cli import TRIAL_TAG, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 64x64, batch 4: small enough for CI, large enough that several timed steps from scratch stay
# well-behaved (the Q batch norms save their input normalised, see docs/layers.md).
TINY = ['--device', 'cpu', '--batch', '4', '--image-size', '64', '--iters', '1']


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


def test_two_methods_write_json_png_and_table_last(tmp_path: str, capsys) -> None:
    rc = main(TINY + ['--methods', 'exact', 'L3', '--warmup', '0', '--out', str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    with open(os.path.join(tmp_path, 'bench_resnet50_cpu.json')) as f:
        data = json.load(f)
    exact, l3 = data['results']
    assert (exact['method'], l3['method']) == ('exact', 'L3')
    assert exact['status'] == l3['status'] == 'ok'
    # ResNet-50 keeps about 12x more than L3's 2-bit codes at 224x224; at 64x64 the smallest
    # maps stay exact (below min_numel), so a looser bound holds here.
    assert exact['saved_mb_per_sample'] > 8 * l3['saved_mb_per_sample'] > 0
    assert exact['saved_source'].startswith('SavedBytesCounter')
    assert exact['images_per_s'] > 0 and len(exact['iter_s']) == 1
    assert exact['loss_finite'] and l3['loss_finite']
    assert l3['avg_bits'] == pytest.approx(2.0, abs=0.05)
    assert data['meta']['device'] == 'cpu' and data['search'] == {}
    with open(os.path.join(tmp_path, 'bench_resnet50_cpu.png'), 'rb') as f:
        assert f.read(4) == b'\x89PNG'
    lines = out.rstrip().splitlines()
    progress = [i for i, ln in enumerate(lines) if ln.startswith('[')]
    header = next(i for i, ln in enumerate(lines) if ln.startswith('method '))
    assert len(progress) == 2 and max(progress) < header
    assert data['table'] in out and out.rstrip().endswith(data['table'].splitlines()[-1])


def test_a_failing_method_is_recorded_and_the_run_goes_on(tmp_path: str, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import actnn_tools.benchmark.measure as measure

    def broken(method, wl):  # noqa: ANN001
        raise RuntimeError('boom')
    monkeypatch.setattr(measure, 'apply_method', broken)
    rc = main(TINY + ['--methods', 'L2', '--warmup', '0', '--out', str(tmp_path)])
    assert rc == 1
    with open(os.path.join(tmp_path, 'bench_resnet50_cpu.json')) as f:
        r = json.load(f)['results'][0]
    assert r['status'] == 'error' and 'boom' in r['error']
    assert 'error: RuntimeError: boom' in capsys.readouterr().out


def test_bad_method_name_is_refused() -> None:
    with pytest.raises(SystemExit, match='unknown method'):
        main(TINY + ['--methods', 'L9'])


def test_trial_reports_emulated_out_of_memory_on_cpu(capsys) -> None:
    """A search trial under a memory cap that the model state alone exceeds."""
    assert main(['--trial'] + TINY + ['--methods', 'exact', '--warmup', '0', '--iters', '0',
                                      '--search-memory-gb', '0.01']) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(TRIAL_TAG)][-1]
    trial = json.loads(line[len(TRIAL_TAG):])
    assert trial['batch'] == 4 and trial['outcome'] == 'oom'
    assert 'emulated on CPU' in trial['detail']


@pytest.mark.slow
def test_search_in_subprocesses(tmp_path: str) -> None:
    """The real subprocess search on CPU under an emulated cap (each trial imports torch)."""
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bench_memory.py')] + TINY +
        ['--methods', 'exact', '--warmup', '0', '--iters', '0', '--max-batch-search', '32',
         '--search-memory-gb', '0.33', '--search-iters', '1', '--time-limit', '300',
         '--out', str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(os.path.join(tmp_path, 'bench_resnet50_cpu.json')) as f:
        s = json.load(f)['search']['exact']
    outcomes = {t['batch']: t['outcome'] for t in s['trials']}
    # 0.33 GiB = 292 MB of model state + about 6.7 MB per 64x64 sample: 6 fits, 7 does not.
    assert outcomes[4] == 'fits' and 'oom' in outcomes.values()
    assert s['exact'] and s['first_oom'] == s['largest'] + 1
    assert s['first_oom'] == min(b for b, o in outcomes.items() if o == 'oom')
    assert '[search exact] batch 4: fits' in p.stdout
