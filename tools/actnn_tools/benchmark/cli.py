"""Command line of ``tools/bench_memory.py`` (see its docstring), and the search trials it runs
in subprocesses (``--trial``: one method at one batch, result as a ``TRIAL_RESULT`` JSON line).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from .measure import MB, ConfigResult, run_config
from .methods import DEFAULT_METHODS, parse_method
from .report import fmt_rate, format_table, plot, write_json
from .search import ERROR, FITS, OOM, TIMEOUT, Trial, search_max_batch
from .workloads import WORKLOADS, default_batch, default_image_size

__all__ = ['main', 'build_parser']

TRIAL_TAG = 'TRIAL_RESULT '
#: What a trial subprocess needs on its path: ``tools/`` (this package) and the repository root
#: (``actnn_mm`` in a checkout that is not installed).
_TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TRIAL_PATH = (_TOOLS_DIR, os.path.dirname(_TOOLS_DIR))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='bench_memory.py',
        description='Activation memory, peak memory, throughput and largest batch of exact, '
                    'bf16-autocast, checkpointed and ActNN (L0-L5) training.')
    ap.add_argument('--model', choices=sorted(WORKLOADS), default='resnet50')
    ap.add_argument('--methods', nargs='+', default=None,
                    help='exact, ckpt / ckptN (N segments, default 8), L0..L5; each optionally '
                         f'with -bf16 (default: all of {" ".join(DEFAULT_METHODS)})')
    ap.add_argument('--batch', type=int, nargs='+', default=None,
                    help='batch size(s) (default: 128 on CUDA / 2 on CPU for resnet50; 8 / 1 '
                         'for faster_rcnn)')
    ap.add_argument('--image-size', type=int, nargs='+', default=None, metavar='N',
                    help='S (square) or H W (default: 224; faster_rcnn 800 1333 on CUDA, '
                         '320 480 on CPU)')
    ap.add_argument('--iters', type=int, default=None, help='timed iterations (20 CUDA / 2 CPU)')
    ap.add_argument('--warmup', type=int, default=None, help='warm-up iterations (5 / 1)')
    ap.add_argument('--device', default=None, help='cuda (default when available) or cpu')
    ap.add_argument('--out', default='work_dirs/bench_memory',
                    help='folder for bench_<model>_<device>.json and .png')
    ap.add_argument('--max-batch-search', type=int, default=0, metavar='CAP',
                    help='search the largest batch that fits, up to CAP (0: no search)')
    ap.add_argument('--search-methods', nargs='+', default=None,
                    help='methods to search (default: all of --methods)')
    ap.add_argument('--time-limit', type=float, default=None,
                    help='seconds per method for the search (default 300 CUDA / 120 CPU)')
    ap.add_argument('--search-memory-gb', type=float, default=None,
                    help='cap the memory of each search trial (CUDA: '
                         'set_per_process_memory_fraction; CPU: emulated, counted saved bytes '
                         '+ 3x parameters)')
    ap.add_argument('--search-iters', type=int, default=2,
                    help='timed iterations per search trial, after one warm-up (CUDA: at least '
                         '1; CPU: 0 runs only the counted forward/backward)')
    ap.add_argument('--search-tolerance', type=float, default=0.05,
                    help='stop bisecting when first OOM / largest fit <= 1 + this')
    ap.add_argument('--threads', type=int, default=None, help='CPU threads (torch)')
    ap.add_argument('--no-cudnn-benchmark', action='store_true',
                    help='keep cudnn.benchmark off (it is on for the timed runs by default)')
    ap.add_argument('--trial', action='store_true', help=argparse.SUPPRESS)
    return ap


def _resolve(args: argparse.Namespace) -> None:
    """Fill device-dependent defaults; check method names early."""
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    cuda = args.device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise SystemExit('bench_memory: --device cuda but no CUDA GPU is visible')
    args.methods = args.methods or list(DEFAULT_METHODS)
    for m in args.methods + (args.search_methods or []):
        try:
            parse_method(m)
        except ValueError as e:
            raise SystemExit(f'bench_memory: {e}')
    args.batch = args.batch or [default_batch(args.model, args.device)]
    args.image_size = args.image_size or list(default_image_size(args.model, args.device))
    if len(args.image_size) not in (1, 2):
        raise SystemExit('bench_memory: --image-size takes S or H W')
    args.iters = (20 if cuda else 2) if args.iters is None else args.iters
    args.warmup = (5 if cuda else 1) if args.warmup is None else args.warmup
    args.time_limit = (300.0 if cuda else 120.0) if args.time_limit is None else args.time_limit
    if args.search_methods is None:
        args.search_methods = list(args.methods)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = not (args.no_cudnn_benchmark or args.trial)


def _meta(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, Any]:
    dev = torch.device(args.device)
    cuda = dev.type == 'cuda'
    meta = dict(model=args.model, device=args.device,
                device_name=torch.cuda.get_device_name(dev) if cuda else
                f'CPU ({platform.processor() or platform.machine()}, '
                f'{torch.get_num_threads()} threads)',
                torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                batch=args.batch, image_size=args.image_size, iters=args.iters,
                warmup=args.warmup, cudnn_benchmark=bool(cuda and torch.backends.cudnn.benchmark),
                search_cap=args.max_batch_search, search_time_limit_s=args.time_limit,
                search_memory_gb=args.search_memory_gb, command=' '.join(argv),
                started=time.strftime('%Y-%m-%d %H:%M:%S'))
    if cuda:
        meta['gpu_memory_mb'] = round(torch.cuda.get_device_properties(dev).total_memory / MB)
    return meta


def _progress_line(i: int, n: int, r: ConfigResult) -> str:
    parts = [f'[{i}/{n}] {r.model} {r.method} batch {r.batch} ({r.device}): {r.status}']
    if r.status == 'ok':
        if r.saved_mb_per_sample is not None:
            parts.append(f'act {r.saved_mb_per_sample:.2f} MB/sample')
        if r.peak_mb is not None:
            parts.append(f'peak {r.peak_mb:.0f} MB')
        if r.images_per_s is not None:
            parts.append(f'{fmt_rate(r.images_per_s)} img/s')
        if r.avg_bits is not None:
            parts.append(f'{r.avg_bits:.2f} bits')
        if r.loss_finite is False:
            parts.append('LOSS NOT FINITE')
    elif r.error:
        parts.append(r.error[:200])
    return '  '.join(parts) + f'  ({r.seconds:.1f} s)'


def _order(methods: List[str]) -> List[str]:
    """Run order: L5 (which turns on expandable segments for the rest of the process) last."""
    return sorted(methods, key=lambda m: parse_method(m).level == 'L5')


# -- search trials ----------------------------------------------------------------------------

def _trial_cmd(args: argparse.Namespace, method: str, batch: int) -> List[str]:
    iters, warmup = args.search_iters, 1
    if args.device.startswith('cuda'):
        iters = max(1, iters)  # two steps at least: the optimizer state counts in the peak
    elif iters == 0:
        warmup = 0  # CPU, emulated cap: the counted forward alone decides
    cmd = [sys.executable, '-m', 'actnn_tools.benchmark.cli', '--trial', '--model', args.model,
           '--methods', method, '--batch', str(batch), '--image-size',
           *map(str, args.image_size), '--iters', str(iters), '--warmup', str(warmup),
           '--device', args.device]
    if args.search_memory_gb:
        cmd += ['--search-memory-gb', str(args.search_memory_gb)]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    return cmd


def _probe(args: argparse.Namespace, method: str, log) -> Any:
    def probe(batch: int, seconds_left: float) -> Trial:
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (*_TRIAL_PATH, env.get('PYTHONPATH')) if p)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(_trial_cmd(args, method, batch), env=env, capture_output=True,
                                  text=True, timeout=seconds_left + 10)
        except subprocess.TimeoutExpired:
            trial = Trial(batch, TIMEOUT, detail=f'trial exceeded {seconds_left + 10:.0f} s')
        else:
            line = next((ln for ln in reversed(proc.stdout.splitlines())
                         if ln.startswith(TRIAL_TAG)), None)
            if line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                oom = any('out of memory' in ln for ln in tail)
                trial = Trial(batch, OOM if oom else ERROR,
                              detail=f'exit {proc.returncode}: ' + ' / '.join(tail)[-400:])
            else:
                trial = Trial(**json.loads(line[len(TRIAL_TAG):]))
        trial.seconds = round(time.perf_counter() - t0, 2)
        extra = ''
        if trial.images_per_s:
            extra += f' {fmt_rate(trial.images_per_s)} img/s'
        if trial.peak_mb:
            extra += f' peak {trial.peak_mb:.0f} MB'
        if trial.detail and trial.outcome != FITS:
            extra += f' ({trial.detail[:160]})'
        log(f'  [search {method}] batch {batch}: {trial.outcome}{extra} ({trial.seconds:.1f} s)')
        return trial
    return probe


def _run_trial(args: argparse.Namespace) -> int:
    """``--trial``: one method, one batch; prints the TRIAL_RESULT line."""
    dev = torch.device(args.device)
    limit = args.search_memory_gb
    if dev.type == 'cuda' and limit:
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit * 2**30 / total), dev)
    batch = args.batch[0]
    r = run_config(args.model, args.methods[0], batch, args.image_size, dev, args.iters,
                   args.warmup, measure_memory=False,
                   count_saved=dev.type != 'cuda' and bool(limit),
                   progress=lambda s: print(s, file=sys.stderr))
    outcome = {'ok': FITS, 'oom': OOM}.get(r.status, ERROR)
    detail = r.error
    if outcome == FITS and dev.type != 'cuda' and limit:
        need = (r.counted_mb_per_sample or 0.0) * batch + (r.model_state_mb or 0.0)
        if need > limit * 1024:
            outcome = OOM
            detail = (f'emulated on CPU: saved {r.counted_mb_per_sample * batch:.0f} MB + model '
                      f'state {r.model_state_mb:.0f} MB > {limit} GiB')
    trial = Trial(batch, outcome, images_per_s=r.images_per_s, peak_mb=r.peak_mb, detail=detail)
    print(TRIAL_TAG + json.dumps(trial.__dict__), flush=True)
    return 0


# -- main -------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _resolve(args)
    if args.trial:
        return _run_trial(args)

    def log(s: str) -> None:
        print(s, flush=True)

    dev = torch.device(args.device)
    data: Dict[str, Any] = {'meta': _meta(args, ['bench_memory.py'] + argv), 'results': [],
                            'search': {}}
    configs = [(m, b) for m in _order(args.methods) for b in args.batch]
    log(f"bench_memory: {args.model} on {data['meta']['device_name']}, torch {torch.__version__},"
        f" {len(configs)} configurations")
    stem = os.path.join(args.out, f'bench_{args.model}_{dev.type}')
    by_key: Dict[Any, Dict[str, Any]] = {}
    for i, (method, batch) in enumerate(configs, 1):
        r = run_config(args.model, method, batch, args.image_size, dev, args.iters, args.warmup,
                       progress=log)
        by_key[(method, batch)] = r.to_dict()
        log(_progress_line(i, len(configs), r))
        # Written after every configuration: a run stopped half-way keeps what it measured.
        data['results'] = [by_key[(m, b)] for m in args.methods for b in args.batch
                           if (m, b) in by_key]
        write_json(data, stem + '.json')
    if args.max_batch_search > 0:
        for method in args.search_methods:
            log(f'search {method}: doubling from {min(args.batch)} then bisection, cap '
                f'{args.max_batch_search}, {args.time_limit:.0f} s')
            res = search_max_batch(_probe(args, method, log), start=min(args.batch),
                                   cap=args.max_batch_search, time_limit=args.time_limit,
                                   tolerance=args.search_tolerance)
            data['search'][method] = res.to_dict()
            write_json(data, stem + '.json')
            log(f'search {method}: largest batch {res.largest} '
                f'({"exact" if res.exact else "lower bound, stopped: " + res.stopped})')
    data['meta']['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
    table = format_table(data)
    data['table'] = table
    write_json(data, stem + '.json')
    try:
        plot(data, stem + '.png')
        log(f'wrote {stem}.json and {stem}.png')
    except Exception as e:  # noqa: BLE001 (a broken plot must not lose the measurements)
        log(f'wrote {stem}.json; plot failed: {e!r}')
        return 1
    log('')
    log(table)
    return 1 if any(r['status'] == 'error' for r in data['results']) else 0


if __name__ == '__main__':
    sys.exit(main())
