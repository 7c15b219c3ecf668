"""Outputs of a benchmark run: the JSON record, the text table and the paper-style figure.

Every ratio is against the method's baseline (``exact`` or ``exact-bf16``) at the same batch;
the largest-batch ratio is against the baseline's largest batch.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from .methods import parse_method

__all__ = ['format_table', 'write_json', 'plot', 'ratio', 'max_batch_text', 'find', 'fmt_rate']


def find(results: List[Dict[str, Any]], method: str, batch: Optional[int] = None
         ) -> Optional[Dict[str, Any]]:
    """The result of ``method`` (at ``batch``, else the first one)."""
    for r in results:
        if r['method'] == method and (batch is None or r['batch'] == batch):
            return r
    return None


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den == 0:
        return None
    return num / den


def max_batch_text(search: Optional[Dict[str, Any]]) -> str:
    """``'912'`` when bracketed, ``'>=4096 (time)'`` for a lower bound, ``'-'`` if not run."""
    if not search:
        return '-'
    largest = search.get('largest')
    if largest is None:
        return 'none' if search.get('exact') else f"? ({search.get('stopped')})"
    if search.get('exact'):
        return str(largest)
    return f">={largest} ({search.get('stopped')})"


def _fmt(v: Optional[float], spec: str, suffix: str = '') -> str:
    return '-' if v is None else f'{v:{spec}}{suffix}'


def fmt_rate(v: Optional[float]) -> str:
    """Images/s: one decimal on GPUs, three significant digits for slow (CPU) rates."""
    if v is None:
        return '-'
    return f'{v:.1f}' if v >= 10 else f'{v:.3g}'


def _status(r: Dict[str, Any]) -> str:
    if r['status'] == 'error':
        return 'error: ' + r.get('error', '')[:60]
    if r['status'] == 'ok' and r.get('loss_finite') is False:
        return 'ok, loss not finite'
    return r['status']


def format_table(data: Dict[str, Any]) -> str:
    """The summary table of a run (one row per method and batch)."""
    results: List[Dict[str, Any]] = data['results']
    searches: Dict[str, Any] = data.get('search', {})
    meta = data.get('meta', {})
    cuda = str(meta.get('device', '')).startswith('cuda')
    head = ['method', 'batch', 'act MB/sample', 'x smaller', 'peak MB', 'img/s', 'x speed',
            'max batch', 'x batch', 'bits', 'status']
    if cuda:
        head.insert(3, 'counted MB/s.')
    rows: List[List[str]] = []
    for r in results:
        base_name = parse_method(r['method']).baseline
        base = find(results, base_name, r['batch'])
        smaller = ratio(base and base.get('saved_mb_per_sample'), r.get('saved_mb_per_sample'))
        speed = ratio(r.get('images_per_s'), base and base.get('images_per_s'))
        s, bs = searches.get(r['method']), searches.get(base_name)
        xb = ratio(s and s.get('largest'), bs and bs.get('largest'))
        row = [r['method'], str(r['batch']), _fmt(r.get('saved_mb_per_sample'), '.2f'),
               _fmt(smaller, '.1f', 'x'), _fmt(r.get('peak_mb'), '.0f'),
               fmt_rate(r.get('images_per_s')), _fmt(speed, '.2f', 'x'), max_batch_text(s),
               _fmt(xb, '.1f', 'x'), _fmt(r.get('avg_bits'), '.2f'),
               _status(r)]
        if cuda:
            row.insert(3, _fmt(r.get('counted_mb_per_sample'), '.2f'))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = [' | '.join(h.ljust(w) for h, w in zip(head, widths)),
             '-|-'.join('-' * w for w in widths)]
    lines += [' | '.join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    src = next((r.get('saved_source') for r in results if r.get('saved_source')), '')
    lines.append(f"{meta.get('model', '')} on {meta.get('device_name', meta.get('device', ''))}, "
                 f"image {meta.get('image_size')}, torch {meta.get('torch', '')}; "
                 f"act = {src}; MB = 2^20 bytes")
    if not cuda:
        lines.append('CPU: throughput is informative only; no peak (no allocator statistics)')
    if meta.get('search_memory_gb'):
        lines.append(f"max batch searched under a {meta['search_memory_gb']} GiB memory cap")
    return '\n'.join(lines)


def write_json(data: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write('\n')


def _series(data: Dict[str, Any], method: str) -> Tuple[List[Tuple[int, float]], Optional[int]]:
    """(batch, images/s) points of ``method`` and its smallest out-of-memory batch."""
    points: Dict[int, float] = {}
    ooms: List[int] = []
    for t in (data.get('search', {}).get(method) or {}).get('trials', []):
        if t['outcome'] == 'fits' and t.get('images_per_s'):
            points[t['batch']] = t['images_per_s']
        elif t['outcome'] == 'oom':
            ooms.append(t['batch'])
    for r in data['results']:
        if r['method'] != method:
            continue
        if r['status'] == 'ok' and r.get('images_per_s'):
            points[r['batch']] = r['images_per_s']
        elif r['status'] == 'oom':
            ooms.append(r['batch'])
    return sorted(points.items()), (min(ooms) if ooms else None)


def plot(data: Dict[str, Any], path: str) -> None:
    """Batch size vs throughput per method, a red x where a batch ran out of memory (as in the
    ActNN paper's figure). Written with matplotlib's Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    meta = data.get('meta', {})
    methods: List[str] = []
    for name in [r['method'] for r in data['results']] + list(data.get('search', {})):
        if name not in methods:
            methods.append(name)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    marked_oom = False
    for method in methods:
        points, oom = _series(data, method)
        if points:
            xs, ys = zip(*points)
            line, = ax.plot(xs, ys, marker='o', ms=4, label=method,
                            ls='--' if parse_method(method).bf16 else '-')
        if oom is not None:
            below = [y for x, y in points if x < oom]
            y = below[-1] if below else (max(p[1] for p in points) if points else 0.0)
            ax.plot([oom], [y], 'rx', ms=10, mew=2,
                    label=None if marked_oom else 'out of memory')
            marked_oom = True
    ax.set_xscale('log', base=2)
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
    ax.set_xlabel('batch size')
    ax.set_ylabel('throughput (images/s)')
    dev = meta.get('device_name', meta.get('device', ''))
    title = f"{meta.get('model', '')} training, {dev}"
    if not str(meta.get('device', '')).startswith('cuda'):
        title += ' (CPU: informative only)'
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
