"""Method names, the table's ratios and the figure, from hand-made records (no measuring)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import pytest

from actnn_tools.benchmark.measure import is_oom, tensor_bytes
from actnn_tools.benchmark.methods import DEFAULT_METHODS, parse_method
from actnn_tools.benchmark.report import format_table, max_batch_text, plot, write_json


def test_parse_method() -> None:
    m = parse_method('L3-bf16')
    assert (m.kind, m.level, m.bf16, m.baseline) == ('actnn', 'L3', True, 'exact-bf16')
    assert parse_method('ckpt').segments == 8 and parse_method('ckpt4').segments == 4
    assert parse_method('exact').baseline == 'exact'
    assert parse_method('L4').uses_swap and not parse_method('L3').uses_swap
    assert len(DEFAULT_METHODS) == 15 and all(parse_method(n).name == n for n in DEFAULT_METHODS)
    for bad in ('L6', 'exact-fp16', 'ckpt0', 'l3', ''):
        with pytest.raises(ValueError, match='unknown method|segments'):
            parse_method(bad)


def test_tensor_bytes_counts_each_storage_once() -> None:
    import torch
    x = torch.zeros(10, 10)
    assert tensor_bytes({'a': x, 'b': [x[0], (x.t(), torch.zeros(3, dtype=torch.float16))],
                         'c': 'text'}) == 400 + 6


def test_is_oom() -> None:
    import torch
    assert is_oom(torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2 GiB'))
    assert is_oom(RuntimeError('CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling ...'))
    assert not is_oom(RuntimeError('shape mismatch'))
    assert not is_oom(ValueError('out of memory'))


def _record(method: str, batch: int, saved: float, ips: float, status: str = 'ok'
            ) -> Dict[str, Any]:
    return dict(model='resnet50', method=method, batch=batch, device='cuda', status=status,
                error='', saved_mb_per_sample=saved if status == 'ok' else None,
                saved_source='cuda memory_allocated', counted_mb_per_sample=None, peak_mb=None,
                images_per_s=ips if status == 'ok' else None, avg_bits=None)


def _data() -> Dict[str, Any]:
    trials = lambda fits, oom: [dict(batch=b, outcome='fits', images_per_s=100.0 + b)  # noqa
                                for b in fits] + [dict(batch=b, outcome='oom') for b in oom]
    return {
        'meta': dict(model='resnet50', device='cuda', device_name='FakeGPU', torch='x',
                     image_size=[224]),
        'results': [_record('exact', 128, 80.0, 2000.0), _record('L3', 128, 8.0, 1500.0),
                    _record('exact-bf16', 128, 40.0, 2200.0), _record('L3-bf16', 128, 5.0, 0),
                    _record('L5', 128, 0, 0, status='oom'),
                    dict(_record('L2', 128, 12.0, 1800.0), loss_finite=False)],
        'search': {'exact': dict(largest=200, first_oom=210, exact=True, stopped='bracketed',
                                 trials=trials([128], [256, 210])),
                   'L3': dict(largest=2048, first_oom=None, exact=False, stopped='time',
                              trials=trials([128, 256, 512, 1024, 2048], []))},
    }


def test_table_ratios_against_the_baseline_of_the_same_precision() -> None:
    table = format_table(_data())
    rows = {line.split('|')[0].strip(): [c.strip() for c in line.split('|')]
            for line in table.splitlines() if '|' in line}
    head = rows['method']
    col = {name: i for i, name in enumerate(head)}
    assert rows['L3'][col['x smaller']] == '10.0x'
    assert rows['L3'][col['x speed']] == '0.75x'
    assert rows['L3-bf16'][col['x smaller']] == '8.0x'  # vs exact-bf16, not exact
    assert rows['L3'][col['max batch']] == '>=2048 (time)'
    assert rows['L3'][col['x batch']] == '10.2x'
    assert rows['exact'][col['max batch']] == '200'
    assert rows['L5'][col['status']] == 'oom' and rows['L5'][col['x smaller']] == '-'
    assert rows['L2'][col['status']] == 'ok, loss not finite'


def test_max_batch_text() -> None:
    assert max_batch_text(None) == '-'
    assert max_batch_text(dict(largest=None, exact=True)) == 'none'
    assert max_batch_text(dict(largest=None, exact=False, stopped='error')) == '? (error)'


def test_plot_and_json(tmp_path: str) -> None:
    data = _data()
    png, js = os.path.join(tmp_path, 'a.png'), os.path.join(tmp_path, 'sub', 'a.json')
    plot(data, png)
    write_json(data, js)
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(png) > 5000
    with open(js) as f:
        assert json.load(f) == data
