"""tools/analyze_memory.py as a user runs it, and the claim that CPU peak memory follows the
saving: ResNet-50 (mmpretrain's ImageNet config, SGD momentum) at 112 px, batch 8, exact and L3,
each level in its own process."""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'


@pytest.fixture(scope='module')
def analysis(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('mem'))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools/analyze_memory.py'), CONFIG,
                           '--levels', 'exact', 'L3', '--batch', '8', '--input-size', '112',
                           '--gpu-memory', '16', '--out', out], env=env, capture_output=True,
                          text=True, timeout=1800, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.join(out, 'memory_analysis.json')) as f:
        return proc.stdout, json.load(f), out


def test_cli_prints_a_line_per_level_and_writes_json_and_png(analysis) -> None:
    stdout, result, out = analysis
    assert '[1/2] exact' in stdout and '[2/2] L3' in stdout
    assert 'per part' in stdout and 'per module type' in stdout
    assert 'What stays exact at L3' in stdout and 'largest batch' in stdout
    assert osp.getsize(osp.join(out, 'memory_analysis.png')) > 5000
    assert [lv['level'] for lv in result['levels']] == ['exact', 'L3']
    assert result['batch'] == 8 and result['input_sizes'] == [[112, 112]]
    assert result['optimizer'] == 'SGD' and result['optimizer_state_factor'] == 1.0
    exact, l3 = result['levels']
    assert exact['saved_bytes'] / l3['saved_bytes'] > 8
    # largest batch: linear in the batch, more with ActNN
    assert l3['largest_batch'] > 3 * exact['largest_batch'] > 0


def test_cpu_peak_follows_the_saving(analysis) -> None:
    _, result, _ = analysis
    exact, l3 = result['levels']
    for lv in (exact, l3):
        assert lv['cpu_memory_returned'] and lv['rss_peak_is_step']
    # L3's measured peak is near params + grads + momentum + compressed activations + transient
    est = l3['estimate']
    assert est['total'] / 1.3 <= l3['measured_peak_bytes'] <= 1.3 * est['total'], \
        (l3['measured_peak_bytes'], est)


def test_cpu_peak_falls_by_the_saving(analysis) -> None:
    """The measured peak holds the saved activations, so the saving shows in it: exact's peak
    (at the end of forward, every activation kept) is at least what stays between steps plus
    its saved bytes, while L3's holds its compressed activations, all gradients (its peak is at
    the end of backward) and a working set of at most three times the largest op's."""
    _, result, _ = analysis
    exact, l3 = result['levels']
    between_steps = exact['param_bytes'] + exact['buffer_bytes'] + exact['optimizer_state_bytes']
    # hence the fall (exact's peak minus L3's) is at least the bytes L3 removes less the
    # gradients and L3's working set
    assert exact['measured_peak_bytes'] >= between_steps + exact['saved_bytes']
    l3_working = l3['measured_peak_bytes'] - between_steps - l3['saved_bytes'] \
        - l3['trainable_param_bytes']
    assert 0 < l3_working <= 3 * l3['transient_bytes'], (l3_working, l3['transient_bytes'])
