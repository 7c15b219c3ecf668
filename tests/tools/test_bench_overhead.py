"""tools/bench_overhead.py: one small ResNet-50 step per level, the figures it writes."""
from __future__ import annotations

import json
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_bench_overhead_counts_ops_and_host_reads(tmp_path):
    out = tmp_path / 'overhead.json'
    subprocess.run([sys.executable, osp.join(REPO, 'tools/bench_overhead.py'), 'resnet50',
                    '--levels', 'exact', 'L2', 'L3', '--batch', '2', '--image-size', '64',
                    '--warmup', '1', '--count-steps', '1', '--steps', '1', '--out', str(out)],
                   check=True, timeout=600, cwd=REPO)
    rows = {r['level']: r for r in json.loads(out.read_text())['rows']}
    assert rows['exact']['ops_ratio'] == 1.0 and rows['exact']['host_reads'] == 0
    # The fast path's targets: no host reads, L3 <= 2.3x and L2 <= 1.8x exact's ops.
    assert rows['L2']['host_reads'] == 0 and rows['L3']['host_reads'] == 0
    assert rows['L2']['ops_ratio'] <= 1.8 and rows['L3']['ops_ratio'] <= 2.3
    assert rows['L3']['ops_by_name']['actnn_mm.compress'] >= 100  # one per saved tensor
    assert 'actnn_mm.quantize' not in rows['L3']['ops_by_name']
