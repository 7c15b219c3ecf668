"""tools/bench_grad_error.py: exact configs give zero error, compressed ones a finite one, and
small maps no longer blow the gradients up."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import bench_grad_error  # noqa: E402


def test_parse_config_reads_level_and_options() -> None:
    cfg = bench_grad_error.parse_config('L3,compress_norm=False,bits=4')
    assert cfg.level == 'L3' and cfg.compress_norm is False and cfg.bits == 4


def test_l0_is_exact_and_l3_is_bounded_on_32px_batch_2(capsys) -> None:
    assert bench_grad_error.main(['--sizes', '32', '--configs', 'L0', 'L3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ['size', 'batch', 'L0', 'L3']
    size, batch, l0, l3 = lines[-1].split()
    assert (size, batch) == ('32', '2')
    assert float(l0) == 0.0
    assert 0.0 < float(l3) < 10.0, l3  # quantizing raw BN inputs gave inf here
