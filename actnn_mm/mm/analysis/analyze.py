"""Run an analysis: every level in its own process (or in this one), then estimates and report.

    from actnn_mm.mm.analysis import analyze
    result = analyze('my_config.py', levels=['exact', 'L3'], batch=2, out_dir='work_dirs/mem')
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ...engine.config import LEVELS
from .estimate import GiB, MiB, largest_batch, optimizer_state_factor, peak_estimate
from .level_run import EXACT, LevelSpec, run_level

__all__ = ['analyze', 'check_levels', 'DEFAULT_LEVELS']

DEFAULT_LEVELS = ('exact', 'L2', 'L3')
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def check_levels(levels: Sequence[str]) -> List[str]:
    """Levels as given, ``exact`` first; an unknown one is a ``ValueError`` naming the valid."""
    valid = (EXACT, ) + tuple(LEVELS)
    bad = [lv for lv in levels if lv not in valid]
    if bad:
        raise ValueError(f'analyze_memory: unknown level(s) {bad}; valid: {list(valid)}')
    out = list(dict.fromkeys(levels))
    if EXACT in out:
        out.remove(EXACT)
    return [EXACT] + out  # exact is the reference every ratio is taken against


def _run_isolated(spec: LevelSpec, timeout: Optional[float]) -> Dict[str, Any]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get('PYTHONPATH'))
                                        if p)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, 'spec.json'), os.path.join(tmp, 'out.json')
        with open(spec_path, 'w') as f:
            json.dump(spec.to_dict(), f)
        proc = subprocess.run([sys.executable, '-m', 'actnn_mm.mm.analysis.level_run',
                               spec_path, out_path], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if not os.path.isfile(out_path):
            return dict(level=spec.level, status='error',
                        error=f'exit code {proc.returncode}\n{proc.stderr[-4000:]}')
        with open(out_path) as f:
            return json.load(f)


def _run_here(spec: LevelSpec) -> Dict[str, Any]:
    try:
        res = run_level(spec)
    except Exception as exc:  # noqa: BLE001  (a level failing is reported, the others run)
        import traceback
        return dict(level=spec.level, status='error',
                    error=''.join(traceback.format_exception(type(exc), exc,
                                                             exc.__traceback__))[-4000:])
    res['status'] = 'ok'
    return res


def _progress_line(i: int, n: int, res: Dict[str, Any], exact: Optional[int]) -> str:
    head = f"[{i}/{n}] {res['level']:<5}"
    if res.get('status') != 'ok':
        err = (res.get('error') or '').strip().splitlines()
        return f"{head} {res.get('status')}: {err[-1] if err else ''}"
    saved = res['saved_bytes']
    ratio = f' ({exact / saved:.1f}x smaller)' if exact and saved and res['level'] != EXACT \
        else ''
    if 'cuda_peak_bytes' in res:
        peak = f"CUDA peak {res['cuda_peak_bytes'] / MiB:.0f} MiB"
    else:
        peak = (f"measured peak {res['rss_measured_peak_bytes'] / MiB:.0f} MiB (peak RSS "
                f"{res['rss_peak_bytes'] / MiB:.0f} MiB)")
    return (f"{head} saved {saved / MiB:.2f} MiB{ratio}, {peak}, loss {res['loss']:.4f}, "
            f"{res['seconds']:.1f} s")


def analyze(config: str, levels: Sequence[str] = DEFAULT_LEVELS, batch: Optional[int] = None,
            device: str = 'cpu', gpu_memory_gib: Optional[float] = None,
            input_size: Optional[Sequence[int]] = None, cfg_options: Optional[dict] = None,
            isolate: bool = True, timeout: Optional[float] = None,
            progress: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure ``levels`` of ``config`` and estimate peaks and largest batches.

    ``isolate``: each level in a fresh process (peaks do not mix: what one level freed cannot
    lower or raise the next one's); False runs them here (the saved bytes are the same).
    """
    levels = check_levels(levels)
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError('analyze_memory: --device cuda but no CUDA device is visible')
    if gpu_memory_gib is None:
        gpu_memory_gib = (torch.cuda.get_device_properties(torch.device(device)).total_memory
                          / GiB) if device.startswith('cuda') else 32.0
    results: List[Dict[str, Any]] = []
    exact_bytes = None
    for i, level in enumerate(levels, 1):
        spec = LevelSpec(config=config, level=level, batch=batch,
                         input_size=list(input_size) if input_size else None, device=device,
                         cfg_options=cfg_options)
        res = _run_isolated(spec, timeout) if isolate else _run_here(spec)
        if res.get('status') == 'ok' and level == EXACT:
            exact_bytes = res['saved_bytes']
        progress(_progress_line(i, len(levels), res, exact_bytes))
        results.append(res)
    ok = [r for r in results if r.get('status') == 'ok']
    if not ok:
        raise RuntimeError('analyze_memory: no level ran:\n' + '\n'.join(
            f"{r['level']}: {r.get('error', '')}" for r in results))
    first = ok[0]
    from .model_build import load_config
    cfg = load_config(config, cfg_options)
    opt_cfg = dict((cfg.get('optim_wrapper') or {}).get('optimizer') or dict(type='SGD'))
    factor = optimizer_state_factor(opt_cfg)
    budget = gpu_memory_gib * GiB
    for r in ok:
        r['estimate'] = est = peak_estimate(r, factor)
        if 'cuda_peak_bytes' in r:
            r['measured_peak_bytes'] = r['cuda_peak_bytes']
            r['largest_batch_measured'] = largest_batch(
                est, r['batch'], budget, r['cuda_peak_bytes'],
                # allocated between steps (gradients freed) + the gradients: what no batch
                # size changes
                r['cuda_static_bytes'] + r['trainable_param_bytes'])
        else:
            r['measured_peak_bytes'] = r['rss_measured_peak_bytes']
        r['largest_batch'] = largest_batch(est, r['batch'], budget)
    sizes = first['input_sizes']
    views = f' x {len(sizes)} views' if len(sizes) > 1 else ''
    return dict(config=config, model=first['model'], task=first['task'], batch=first['batch'],
                input=f'{sizes[0][0]}x{sizes[0][1]}{views} ({first["input_size_source"][0]})',
                input_sizes=sizes, optimizer=opt_cfg.get('type', 'SGD'),
                optimizer_state_factor=factor, optim_wrapper=first['optim_wrapper'],
                device=device, torch=torch.__version__, gpu_memory_gib=gpu_memory_gib,
                parts_converted=first['parts_converted'], isolated=isolate,
                linear_in_batch='activations and the transient scale linearly with the batch; '
                                'parameters, gradients and optimizer state do not',
                levels=results)
