"""Slow: exact and ActNN L3 trained on the same schedule end within 0.02 bbox
mAP of each other. Runs ``tools/convergence.py`` with its default settings, the ones that made
docs/convergence.png / docs/convergence.json (Faster R-CNN R50-FPN, synthetic COCO 128 train /
64 val at 160 px, batch 2, 300 iterations, seed 0; the two runs side by side, one thread each).
"""
from __future__ import annotations

import json
import os.path as osp
import subprocess
import sys

import pytest
from e2e_helpers import REPO

MAX_MAP_GAP = 0.02


@pytest.mark.slow
def test_exact_and_l3_end_within_002_bbox_map(tmp_path, tool_env: dict) -> None:
    out_json, out_png = str(tmp_path / 'convergence.json'), str(tmp_path / 'convergence.png')
    res = subprocess.run([sys.executable, osp.join(REPO, 'tools/convergence.py'),
                          '--work-dir', str(tmp_path / 'work'), '--out-json', out_json,
                          '--out-png', out_png], cwd=str(tmp_path), env=tool_env,
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out_json) as f:
        result = json.load(f)
    exact = result['runs']['exact']['final_bbox_mAP']
    l3 = result['runs']['L3']['final_bbox_mAP']
    print(f'\n[e2e] convergence: exact {exact:.4f}  L3 {l3:.4f}  gap {l3 - exact:+.4f}  '
          f'({result["wall_s"]:.0f}s)')
    assert osp.getsize(out_png) > 10_000
    assert exact > 0.3, f'the exact run did not learn (bbox mAP {exact})'
    assert len(result['runs']['L3']['loss']) == result['settings']['iters']
    assert abs(l3 - exact) <= MAX_MAP_GAP, (exact, l3)
