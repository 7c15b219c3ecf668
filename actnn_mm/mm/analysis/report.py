"""The analysis as text (tables per part and per module type, what stays exact, peaks and
batches), JSON and a PNG of stacked bars per part (exact vs each level)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from .estimate import MiB

__all__ = ['format_text', 'write_json', 'write_png']


def _mib(n: float) -> str:
    return f'{n / MiB:.2f}'


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append('  '.join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                             for i, c in enumerate(r)))
        if j == 0:
            out.append('  '.join('-' * w for w in widths))
    return out


def _keys(levels: List[Dict[str, Any]], field: str, top: int) -> List[str]:
    totals: Dict[str, int] = {}
    for lv in levels:
        for k, v in lv[field].items():
            totals[k] = max(totals.get(k, 0), v)
    return [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])][:top]


def format_text(analysis: Dict[str, Any]) -> str:
    levels = [lv for lv in analysis['levels'] if lv.get('status') == 'ok']
    lines = [f"{analysis['config']}: {analysis['model']} ({analysis['task']}), batch "
             f"{analysis['batch']}, input {analysis['input']}, optimizer "
             f"{analysis['optimizer']} (state {analysis['optimizer_state_factor']:g}x the "
             f"trainable parameters), device {analysis['device']}, torch {analysis['torch']}"]
    for lv in analysis['levels']:
        if lv.get('status') != 'ok':
            lines.append(f"{lv['level']}: FAILED ({lv.get('status')}): "
                         f"{lv.get('error', '').strip().splitlines()[-1:]}")
    if not levels:
        return '\n'.join(lines)
    names = [lv['level'] for lv in levels]
    base = levels[0]['saved_bytes'] or 1
    lines += ['', 'Saved activations (MiB, what autograd keeps for backward) per part:']
    rows = [['part'] + names]
    for part in _keys(levels, 'saved_by_part', 50):
        rows.append([part] + [_mib(lv['saved_by_part'].get(part, 0)) for lv in levels])
    rows.append(['total'] + [_mib(lv['saved_bytes']) for lv in levels])
    rows.append([f'x smaller than {names[0]}'] + [f"{base / max(lv['saved_bytes'], 1):.1f}x"
                                                  for lv in levels])
    lines += _table(rows)
    lines += ['', 'per module type (largest 15):']
    rows = [['type'] + names]
    for t in _keys(levels, 'saved_by_type', 15):
        rows.append([t] + [_mib(lv['saved_by_type'].get(t, 0)) for lv in levels])
    lines += _table(rows)
    for lv in levels:
        if lv['level'] == 'exact' or not lv.get('conversion'):
            continue
        exact = lv.get('exact_by_type', {})
        lines += ['', f"What stays exact at {lv['level']}: "
                  f"{_mib(sum(exact.values()))} MiB kept uncompressed"]
        for t, n in list(exact.items())[:8]:
            lines.append(f'  {t:<28} {_mib(n):>10} MiB exact')
        lines.append('  (tensors that need no gradient, below min_numel, integer/index tensors, '
                     'and ReLU masks kept as 1 bit are never quantized)')
        for part, conv in lv['conversion'].items():
            for key, n in sorted(conv['left'].items()):
                lines.append(f'  {part}: left {n} x {key}')
        break
    lines += ['', f"Peak estimate (MiB) = parameters + gradients + optimizer state + activations "
              f"+ the largest op's working set; largest batch in {analysis['gpu_memory_gib']:g} "
              f"GiB (activations and transient scale linearly with the batch):"]
    measured = 'CUDA max_memory_allocated' if analysis['device'].startswith('cuda') else \
        'measured (RSS)'
    rows = [['level', 'params', 'grads', 'opt state', 'activ.', 'transient', 'estimate',
             measured, 'meas/est', 'largest batch']]
    for lv in levels:
        e = lv['estimate']
        meas = lv.get('measured_peak_bytes')
        rows.append([lv['level'], _mib(e['params']), _mib(e['grads']),
                     _mib(e['optimizer_state']), _mib(e['activations']), _mib(e['transient']),
                     _mib(e['total']), _mib(meas) if meas else '-',
                     f"{meas / e['total']:.2f}" if meas else '-',
                     str(lv['largest_batch'])])
    lines += _table(rows)
    lines.append(f"(optimizer state measured after the step: "
                 f"{_mib(levels[0]['optimizer_state_bytes'])} MiB; largest op: "
                 f"{levels[0]['transient_op']})")
    if not analysis['device'].startswith('cuda'):
        lines.append('(CPU, measured: parameters + buffers + optimizer state, plus the '
                     "measured step's peak-RSS increase from freed gradients on (activations, "
                     'gradients as backward allocates them, transients); glibc set to return '
                     'freed blocks to the system in every run: '
                     'actnn_mm.engine.allocator_settings.return_freed_cpu_memory)')
    else:
        lines.append('(CUDA: allocator memory; the CUDA context and cached free blocks come on '
                     'top of both the estimate and the largest batch)')
    return '\n'.join(lines)


def write_json(analysis: Dict[str, Any], out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'memory_analysis.json')
    with open(path, 'w') as f:
        json.dump(analysis, f, indent=1)
    return path


def write_png(analysis: Dict[str, Any], out_dir: str) -> str:
    """Stacked bars: saved activations per part, one bar per level; fixed memory beside."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    levels = [lv for lv in analysis['levels'] if lv.get('status') == 'ok']
    parts = _keys(levels, 'saved_by_part', 12)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(levels), 4.8))
    bottoms = [0.0] * len(levels)
    x = list(range(len(levels)))
    for part in parts:
        vals = [lv['saved_by_part'].get(part, 0) / MiB for lv in levels]
        ax.bar(x, vals, bottom=bottoms, label=part)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for xi, total in zip(x, bottoms):
        ax.text(xi, total, f'{total:.0f}', ha='center', va='bottom', fontsize=8)
    ax.set_xticks(x, [lv['level'] for lv in levels])
    ax.set_ylabel('saved activations (MiB)')
    ax.set_title(f"{analysis['model']}, batch {analysis['batch']}, {analysis['input']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc='upper right')
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'memory_analysis.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
