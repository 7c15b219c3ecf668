#!/usr/bin/env python
"""The table ``tools/gpu_check.sh`` prints last: each step's outcome, then each target with its
measured value and PASS / MISS.

Standard library only, on purpose: it must still report when the step that installs the
dependencies (or builds the extension) failed.

    python tools/gpu_check_summary.py --steps STEPS.tsv --bench bench_resnet50_cuda.json \
        --kernels kernels.log --tests-log tests.log --out DIR

Targets (H100/H200, ResNet-50 fp32, batch 128): L3 >= 12x smaller activations than exact and
>= 0.85x its throughput; L2 >= 6.5x smaller and >= 0.9x; L3 under bf16 autocast >= 6x smaller
than exact bf16; largest batch at L3 >= 10x exact's; compression kernels (2-bit fp32, >= 256 MB)
>= 70% of copy bandwidth. A target whose inputs are missing is reported N/A, never guessed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

PASS, MISS, NA = 'PASS', 'MISS', 'N/A'


@dataclass
class Target:
    """``kind``: 'smaller' (baseline / method activation memory), 'speed' (method / baseline
    images/s), 'batch' (method / baseline largest batch)."""

    name: str
    kind: str
    method: str
    baseline: str
    threshold: float


TARGETS: List[Target] = [
    Target('L3 activations vs exact (fp32)', 'smaller', 'L3', 'exact', 12.0),
    Target('L3 throughput vs exact (fp32)', 'speed', 'L3', 'exact', 0.85),
    Target('L2 activations vs exact (fp32)', 'smaller', 'L2', 'exact', 6.5),
    Target('L2 throughput vs exact (fp32)', 'speed', 'L2', 'exact', 0.9),
    Target('L3-bf16 activations vs exact-bf16', 'smaller', 'L3-bf16', 'exact-bf16', 6.0),
    Target('largest batch L3 vs exact (fp32)', 'batch', 'L3', 'exact', 10.0),
]
KERNEL_TARGET = 70.0  # % of copy bandwidth, 2-bit fp32, >= 256 MB


@dataclass
class Row:
    name: str
    threshold: str
    measured: str
    status: str
    note: str = ''


def _result(results: List[Dict[str, Any]], method: str, batch: Optional[int]
            ) -> Optional[Dict[str, Any]]:
    for r in results:
        if r.get('method') == method and (batch is None or r.get('batch') == batch):
            return r
    return None


def evaluate(bench: Optional[Dict[str, Any]], batch: Optional[int] = 128) -> List[Row]:
    """Rows for :data:`TARGETS` from a ``bench_memory`` JSON (None: all N/A)."""
    rows: List[Row] = []
    results = (bench or {}).get('results', [])
    searches = (bench or {}).get('search', {})
    if bench and batch is not None and not any(r.get('batch') == batch for r in results):
        batch = None  # another batch was run: use the first result of each method
    for t in TARGETS:
        thr = f'>= {t.threshold:g}x'
        if t.kind == 'batch':
            rows.append(_batch_row(t, thr, searches))
            continue
        m, b = _result(results, t.method, batch), _result(results, t.baseline, batch)
        name = f"{t.name}, batch {m['batch']}" if m else t.name
        missing = [name for name, r in ((t.method, m), (t.baseline, b))
                   if not r or r.get('status') != 'ok']
        if missing:
            why = ', '.join(f"{n}: {(_result(results, n, batch) or {}).get('status', 'not run')}"
                            for n in missing)
            rows.append(Row(name, thr, '-', NA, why))
            continue
        if t.kind == 'smaller':
            num, den = b.get('saved_mb_per_sample'), m.get('saved_mb_per_sample')
            note = f"{b['saved_mb_per_sample']} / {m['saved_mb_per_sample']} MB/sample"
        else:
            num, den = m.get('images_per_s'), b.get('images_per_s')
            note = f"{m['images_per_s']} / {b['images_per_s']} img/s"
        if num is None or not den:
            rows.append(Row(name, thr, '-', NA, 'value missing'))
            continue
        value = num / den
        rows.append(Row(name, thr, f'{value:.2f}x', PASS if value >= t.threshold else MISS,
                        note))
    return rows


def _batch_row(t: Target, thr: str, searches: Dict[str, Any]) -> Row:
    m, b = searches.get(t.method), searches.get(t.baseline)
    if not m or not b:
        return Row(t.name, thr, '-', NA, 'largest-batch search not run')
    if not b.get('exact') or not b.get('largest'):
        return Row(t.name, thr, '-', NA, f"{t.baseline} search not bracketed "
                   f"(largest {b.get('largest')}, stopped: {b.get('stopped')})")
    if not m.get('largest'):
        return Row(t.name, thr, '-', NA, f"{t.method}: nothing fitted ({m.get('stopped')})")
    value = m['largest'] / b['largest']
    if m.get('exact'):
        return Row(t.name, thr, f'{value:.1f}x', PASS if value >= t.threshold else MISS,
                   f"{m['largest']} / {b['largest']}")
    # The method's search stopped early: its largest batch is a lower bound.
    return Row(t.name, thr, f'>= {value:.1f}x', PASS if value >= t.threshold else NA,
               f">={m['largest']} ({m.get('stopped')}) / {b['largest']}")


# dtype MB bits | copy [new+copy] | compress % | decompress %
_KERNEL_RE = re.compile(r'^\s*(\w+)\s+([\d.]+)\s+(\d+)\s+\|\s+([\d.]+)(?:\s+[\d.]+)?\s+\|\s+'
                        r'([\d.]+)\s+([\d.]+)%\s+\|\s+([\d.]+)\s+([\d.]+)%')


def kernel_rows(log_text: Optional[str], min_mb: float = 256.0) -> List[Row]:
    """Compress / decompress bandwidth as % of copy for fp32 2-bit at >= ``min_mb`` MB, from
    ``tools/bench_kernels.py`` output (the worst size counts)."""
    found: List[Tuple[float, float, float]] = []
    for line in (log_text or '').splitlines():
        m = _KERNEL_RE.match(line)
        if m and m.group(1) == 'fp32' and int(m.group(3)) == 2 and float(m.group(2)) >= min_mb:
            found.append((float(m.group(2)), float(m.group(6)), float(m.group(8))))
    thr = f'>= {KERNEL_TARGET:g}% copy'
    rows = []
    for i, what in ((1, 'compress'), (2, 'decompress')):
        name = f'kernel {what} fp32 2-bit, >= {min_mb:g} MB'
        if not found:
            rows.append(Row(name, thr, '-', NA, f'no fp32 2-bit line at >= {min_mb:g} MB'))
            continue
        worst = min(found, key=lambda f: f[i])
        rows.append(Row(name, thr, f'{worst[i]:.1f}%', PASS if worst[i] >= KERNEL_TARGET
                        else MISS, f'worst at {worst[0]:g} MB'))
    return rows


def read_steps(path: str) -> List[Dict[str, str]]:
    """``name<TAB>status<TAB>seconds<TAB>note`` lines written by gpu_check.sh."""
    steps = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip('\n').split('\t')
                if len(parts) >= 3:
                    steps.append(dict(name=parts[0], status=parts[1], seconds=parts[2],
                                      note=parts[3] if len(parts) > 3 else ''))
    return steps


def pytest_line(log_text: Optional[str]) -> str:
    """pytest's final counts line (``3 passed, 120 skipped in 4.2s``), or ''."""
    for line in reversed((log_text or '').splitlines()):
        s = line.strip('= ').strip()
        if re.search(r'\b(passed|failed|skipped|error|errors|deselected|no tests ran)\b', s):
            return s
    return ''


def _table(head: List[str], rows: List[List[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    out = [' | '.join(h.ljust(w) for h, w in zip(head, widths)),
           '-|-'.join('-' * w for w in widths)]
    out += [' | '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return '\n'.join(out)


def _read(path: Optional[str]) -> Optional[str]:
    if path and os.path.exists(path):
        with open(path, errors='replace') as f:
            return f.read()
    return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', required=True)
    ap.add_argument('--bench')
    ap.add_argument('--kernels')
    ap.add_argument('--tests-log')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--out')
    ap.add_argument('--strict', action='store_true', help='exit 3 when a target is missed')
    args = ap.parse_args(argv)

    steps = read_steps(args.steps)
    tests = pytest_line(_read(args.tests_log))
    for s in steps:
        if s['name'] == 'tests' and tests and not s['note']:
            s['note'] = tests
    bench_text = _read(args.bench)
    bench = None
    if bench_text:
        try:
            bench = json.loads(bench_text)
        except ValueError as e:
            print(f'gpu_check_summary: cannot read {args.bench}: {e}', file=sys.stderr)
    rows = evaluate(bench, args.batch) + kernel_rows(_read(args.kernels))

    lines = []
    if bench:
        meta = bench.get('meta', {})
        lines.append(f"device: {meta.get('device_name')} ({meta.get('device')}), torch "
                     f"{meta.get('torch')}, CUDA {meta.get('cuda')}, python {meta.get('python')}")
        if not str(meta.get('device', '')).startswith('cuda'):
            lines.append('CPU dry run: tiny sizes; the targets apply to the GPU run only')
        if bench.get('table'):
            lines += ['', 'ResNet-50 memory / speed (tools/bench_memory.py):', bench['table']]
    lines += ['', 'Steps:', _table(['step', 'status', 'seconds', 'note'],
                                   [[s['name'], s['status'], s['seconds'], s['note'][:110]]
                                    for s in steps])]
    lines += ['', 'Targets:', _table(['target', 'wanted', 'measured', 'status', 'from'],
                                     [[r.name, r.threshold, r.measured, r.status, r.note[:90]]
                                      for r in rows])]
    failed = [s['name'] for s in steps if s['status'] not in ('ok', 'skipped')]
    missed = [r.name for r in rows if r.status == MISS]
    lines.append('')
    lines.append(f"gpu_check: {'FAILED steps: ' + ', '.join(failed) if failed else 'all steps ok'}"
                 f"; targets: {sum(r.status == PASS for r in rows)} PASS, {len(missed)} MISS, "
                 f"{sum(r.status == NA for r in rows)} N/A")
    text = '\n'.join(lines)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'summary.txt'), 'w') as f:
            f.write(text + '\n')
        with open(os.path.join(args.out, 'summary.json'), 'w') as f:
            json.dump(dict(steps=steps, targets=[asdict(r) for r in rows],
                           meta=(bench or {}).get('meta')), f, indent=1)
    return 3 if args.strict and missed else 0


if __name__ == '__main__':
    sys.exit(main())
