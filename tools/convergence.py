#!/usr/bin/env python
"""Convergence parity: train a demo model exact and with ActNN on the same schedule.

Every run uses the same data, schedule and evaluation; a run differs from the others only by its
config's ``actnn`` section (absent for exact runs) and by its seed. Writes the loss and metric
curves of every run to a JSON file and a plot, and prints the final metrics and how they compare.

    python tools/convergence.py                      # Faster R-CNN: exact vs L3, bbox mAP
    python tools/convergence.py --model deit         # DeiT-tiny: exact seeds 0 and 1 vs L3, top-1
    python tools/convergence.py --model deit --iters 40 --eval-interval 20 --out-dir /tmp/c

Runs are given as ``LEVEL[,key=value...][@SEED]``: ``exact``, ``L3``, ``exact@1`` (exact, seed
1), ``L3,per_layer=False``; without ``@SEED`` a run uses ``--seed``. With two or more exact runs
the summary states the exact runs' spread (max - min of their final metrics) and whether each
ActNN run is *within the run-to-run spread of exact*: its distance to the exact runs' mean is at
most that spread, or one validation image's worth of metric if the spread is smaller.

The runs are separate processes (clean RNG and allocator state each); with ``--jobs 2`` two run
side by side, the CPU threads split between them.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import os.path as osp
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
EXACT = 'exact'


# --- what differs between models -------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One model the tool can train: its config, data, metric and CPU-sized defaults."""
    title: str
    config: str  # relative to the repository root
    dataset: str  # tools/make_demo_data.py kind
    metric_key: str  # validation key in mmengine's scalars.json
    metric: str  # short name, used in the JSON (``final_<metric>``) and the plot
    metric_label: str
    per_val_image: Callable[[int], float]  # the metric one validation image is worth
    defaults: Dict[str, Any]
    options: Callable[[argparse.Namespace, str], Dict[str, Any]]
    out_name: str  # docs/<out_name>.{json,png}


def faster_rcnn_options(args: argparse.Namespace, data_root: str) -> Dict[str, Any]:
    """``--cfg-options`` of the Faster R-CNN runs: the small, CPU-feasible schedule."""
    root = data_root.rstrip('/') + '/'
    scale = (args.img_size, args.img_size)
    return {
        'train_dataloader.batch_size': args.batch_size,
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root,
        'test_dataloader.dataset.data_root': root,
        'val_evaluator.ann_file': root + 'annotations/instances_val2017.json',
        'test_evaluator.ann_file': root + 'annotations/instances_val2017.json',
        'train_dataloader.dataset.pipeline.2.scale': scale,
        'val_dataloader.dataset.pipeline.1.scale': scale,
        'test_dataloader.dataset.pipeline.1.scale': scale,
        # fewer proposals / RoIs: the RoI head dominates CPU time at this image size
        'model.train_cfg.rpn_proposal.max_per_img': 200,
        'model.train_cfg.rcnn.sampler.num': 64,
        'model.test_cfg.rpn.max_per_img': 200,
        'optim_wrapper.optimizer.lr': args.lr,
        'train_cfg.max_iters': args.iters,
        'train_cfg.val_interval': args.eval_interval,
        'param_scheduler': [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
            # two decays: both runs settle on a plateau, so the final mAPs compare models,
            # not two points of a noisy climb
            dict(type='MultiStepLR', by_epoch=False, begin=0, end=args.iters,
                 milestones=[int(args.iters * 2 / 3), int(args.iters * 5 / 6)], gamma=0.1)],
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': args.iters,
    }


def deit_options(args: argparse.Namespace, data_root: str) -> Dict[str, Any]:
    """``--cfg-options`` of the DeiT runs: image size, batch, lr and an iteration schedule."""
    root = data_root.rstrip('/') + '/'
    size = args.img_size
    warmup = max(1, args.iters // 10)
    opts: Dict[str, Any] = {
        'model.backbone.img_size': size,
        'train_dataloader.batch_size': args.batch_size,
        'train_dataloader.dataset.pipeline.1.scale': size,
        'val_dataloader.dataset.pipeline.1.scale': (size, size),
        'test_dataloader.dataset.pipeline.1.scale': (size, size),
        'optim_wrapper.optimizer.lr': args.lr,
        'train_cfg.max_iters': args.iters,
        'train_cfg.val_interval': args.eval_interval,
        # warm-up, then cosine to ~0: every run ends on a plateau, not mid-climb
        'param_scheduler': [
            dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=warmup),
            dict(type='CosineAnnealingLR', eta_min=args.lr * 1e-2, by_epoch=False,
                 begin=warmup, end=args.iters)],
        # the raw loss of every iteration (mmengine's default logs a 10-iteration mean)
        'default_hooks.logger.interval': 1,
        'log_processor.window_size': 1,
        'default_hooks.checkpoint.interval': 10**9,
        'default_hooks.checkpoint.save_last': False,
    }
    for split in ('train', 'val', 'test'):
        opts[f'{split}_dataloader.dataset.data_root'] = root
    return opts


MODELS: Dict[str, ModelSpec] = {
    'faster_rcnn': ModelSpec(
        title='Faster R-CNN R50-FPN, synthetic COCO',
        config='configs/actnn/demo/faster_rcnn_r50_fpn_demo.py', dataset='coco',
        metric_key='coco/bbox_mAP', metric='bbox_mAP', metric_label='COCO bbox mAP (val)',
        # mAP has no per-image step; 0 lets the spread alone decide
        per_val_image=lambda num_val: 0.0,
        defaults=dict(iters=600, eval_interval=100, img_size=160, batch_size=2, lr=0.01,
                      num_train=128, num_val=64, runs=[EXACT, 'L3']),
        options=faster_rcnn_options, out_name='convergence'),
    'deit': ModelSpec(
        title='DeiT-tiny (8x8 patches), synthetic ImageNet, 10 classes',
        config='configs/actnn/demo/deit_tiny_demo.py', dataset='imagenet',
        metric_key='accuracy/top1', metric='top1', metric_label='top-1 accuracy % (val)',
        per_val_image=lambda num_val: 100.0 / num_val,
        defaults=dict(iters=300, eval_interval=50, img_size=64, batch_size=16, lr=1e-3,
                      num_train=1000, num_val=500, runs=[EXACT, f'{EXACT}@1', 'L3']),
        options=deit_options, out_name='convergence_deit'),
}


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', choices=sorted(MODELS), default='faster_rcnn')
    p.add_argument('--iters', type=int, help='training iterations per run')
    p.add_argument('--eval-interval', type=int, help='evaluate every N iterations')
    p.add_argument('--img-size', '--img-scale', dest='img_size', type=int,
                   help='train/test image size (px)')
    p.add_argument('--batch-size', type=int)
    p.add_argument('--lr', type=float)
    p.add_argument('--runs', '--levels', dest='runs', nargs='+',
                   help=f"runs to compare: LEVEL[,key=value...][@SEED] with LEVEL '{EXACT}' "
                   "or an ActNN level, e.g. 'exact' 'exact@1' 'L3' 'L3,per_layer=False'")
    p.add_argument('--num-train', type=int, help='synthetic training images')
    p.add_argument('--num-val', type=int, help='synthetic validation images')
    p.add_argument('--seed', type=int, default=0, help='seed of runs without @SEED, and data')
    p.add_argument('--work-dir', help='default: work_dirs/<out name>')
    p.add_argument('--data-root', default=None,
                   help='synthetic data folder (default: <work-dir>/<dataset>, made if missing)')
    p.add_argument('--jobs', type=int, default=2, help='runs side by side (threads split)')
    p.add_argument('--out-dir', default=osp.join(REPO, 'docs'),
                   help='where <out name>.json and .png go (default: docs/)')
    p.add_argument('--out-json', default=None, help='overrides --out-dir for the JSON')
    p.add_argument('--out-png', default=None, help='overrides --out-dir for the plot')
    p.add_argument('--replot', action='store_true',
                   help='train nothing: re-read the runs in --work-dir and rewrite the JSON and '
                   'plot (run times are kept from the JSON already at --out-json)')
    # internal: run one training (in a child process)
    p.add_argument('--run-one', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    spec = MODELS[args.model]
    for key, value in spec.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.iters < 1 or args.eval_interval < 1 or args.iters % args.eval_interval:
        p.error(f'--iters ({args.iters}) must be a positive multiple of --eval-interval '
                f'({args.eval_interval}): the last evaluation gives the final metric')
    for run in args.runs:
        try:
            parse_run(run, args.seed)
        except ValueError as e:
            p.error(str(e))
    if len(set(args.runs)) != len(args.runs):
        p.error(f'--runs names a run twice: {args.runs}')
    args.work_dir = args.work_dir or osp.join('work_dirs', spec.out_name)
    args.out_json = args.out_json or osp.join(args.out_dir, spec.out_name + '.json')
    args.out_png = args.out_png or osp.join(args.out_dir, spec.out_name + '.png')
    return args


def parse_run(run: str, default_seed: int) -> Tuple[str, Dict[str, Any], int]:
    """``'L3,per_layer=False@1'`` -> ``('L3', {'per_layer': False}, 1)``."""
    body, _, seed = run.partition('@')
    level, *pairs = body.split(',')
    options = {}
    for pair in pairs:  # 'key=value' with a Python literal value
        key, sep, value = pair.partition('=')
        if not sep:
            raise ValueError(f"run {run!r}: option {pair!r} is not 'key=value'")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f'run {run!r}: {value!r} is not a Python literal') from None
    if level == EXACT and options:
        raise ValueError(f'run {run!r}: an exact run takes no ActNN options')
    if seed and not seed.isdigit():
        raise ValueError(f'run {run!r}: the seed after @ must be an integer, got {seed!r}')
    return level, options, int(seed) if seed else default_seed


# --- one run (child process) -----------------------------------------------------------------
def train_one(args: argparse.Namespace, run: str, data_root: str, work_dir: str) -> None:
    """Train one run in this process through mmengine's Runner, as ``tools/train.py`` does
    (exact runs have no ``actnn`` section)."""
    sys.path.insert(0, osp.join(REPO, 'tools'))
    from mmengine.config import Config

    from actnn_tools.runner import build_runner, load_config  # noqa: E402

    spec = MODELS[args.model]
    level, options, seed = parse_run(run, args.seed)
    cfg = Config.fromfile(osp.join(REPO, spec.config))
    if level == EXACT:
        cfg.pop('actnn', None)
    else:
        cfg.actnn.level = level
        # kept-bytes figure: every 50 iterations is plenty (and at least once per run)
        cfg.actnn.log_interval = min(50, args.eval_interval)
        cfg.actnn.update(options)
    tmp = osp.join(work_dir, 'run_config.py')
    os.makedirs(work_dir, exist_ok=True)
    cfg.dump(tmp)
    cfg_options = dict(spec.options(args, data_root), **{'randomness.seed': seed})
    cfg = load_config(tmp, cfg_options, work_dir=work_dir)
    build_runner(cfg).train()


# --- orchestration ---------------------------------------------------------------------------
def ensure_data(args: argparse.Namespace, data_root: str) -> None:
    spec = MODELS[args.model]
    if spec.dataset == 'coco':
        h, w = args.img_size * 3 // 4, args.img_size
    else:
        h = w = args.img_size
    cmd = [sys.executable, osp.join(REPO, 'tools/make_demo_data.py'), spec.dataset,
           '--data-root', data_root, '--num-train', str(args.num_train), '--num-val',
           str(args.num_val), '--img-size', str(h), str(w), '--seed', str(args.seed)]
    subprocess.run(cmd, check=True)


def read_curves(work_dir: str, spec: ModelSpec) -> Dict[str, Any]:
    """Loss per iteration and the metric per evaluation from mmengine's ``scalars.json``."""
    found = [osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs
             if f == 'scalars.json']
    if not found:
        raise RuntimeError(f'no scalars.json under {work_dir}: did the run fail?')
    loss: List[List[float]] = []
    metric: List[List[float]] = []
    kept_mb: List[List[float]] = []
    with open(max(found, key=osp.getmtime)) as f:
        for line in f:
            row = json.loads(line)
            if 'loss' in row and 'iter' in row:
                loss.append([row['iter'], row['loss']])
                if 'actnn_kept_MB' in row:
                    kept_mb.append([row['iter'], row['actnn_kept_MB']])
            if spec.metric_key in row:
                # validation rows carry no iteration: each follows the training row of the
                # iteration it ran after
                metric.append([loss[-1][0] if loss else 0, row[spec.metric_key]])
    curves: Dict[str, Any] = {'loss': loss, spec.metric: metric}
    if kept_mb:
        curves['actnn_kept_MB'] = kept_mb
    return curves


def launch(args: argparse.Namespace, run: str, data_root: str,
           threads: int) -> subprocess.Popen:
    work = osp.join(args.work_dir, run)
    log = open(osp.join(args.work_dir, f'{run}.out'), 'w')
    cmd = [sys.executable, osp.abspath(__file__), '--model', args.model, '--run-one', run,
           '--runs', run, '--data-root', data_root, '--work-dir', args.work_dir]
    for key in ('iters', 'eval_interval', 'img_size', 'batch_size', 'lr', 'seed'):
        cmd += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    print(f'[convergence] {run}: training in {work} with {threads} thread(s) '
          f'(log {log.name})', flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_all(args: argparse.Namespace, data_root: str) -> Tuple[Dict[str, float], List[str]]:
    """Train every run, ``--jobs`` at a time; returns wall seconds per run and the failed ones.

    Threads are split between the runs that can still run side by side, so a last run alone
    gets every core."""
    cpus = os.cpu_count() or 2
    pending, running, times, failed = list(args.runs), {}, {}, []
    while pending or running:
        while pending and len(running) < args.jobs:
            side_by_side = min(args.jobs, len(pending) + len(running))
            run = pending.pop(0)
            running[run] = (launch(args, run, data_root, max(1, cpus // side_by_side)),
                            time.time())
        time.sleep(2)
        for run, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                times[run] = round(time.time() - t0, 1)
                del running[run]
                if proc.returncode:
                    failed.append(run)
                print(f'[convergence] {run}: exit {proc.returncode} after {times[run]:.0f}s',
                      flush=True)
    return times, failed


def summarize(runs: Dict[str, Dict[str, Any]], spec: ModelSpec, num_val: int,
              default_seed: int) -> Dict[str, Any]:
    """Exact runs' mean and spread; each ActNN run's gap to that mean and its verdict.

    Within the run-to-run spread of exact: ``|final - exact mean| <= max(spread, one val
    image)``, spread = max - min of the exact runs' final metrics. Needs two exact runs; with one,
    only the gaps are given."""
    final = f'final_{spec.metric}'
    exact = [r for r in runs if parse_run(r, default_seed)[0] == EXACT]
    others = [r for r in runs if r not in exact]
    out: Dict[str, Any] = {'metric': spec.metric, 'exact_runs': exact}
    if not exact:
        return out
    values = [runs[r][final] for r in exact]
    mean = sum(values) / len(values)
    out['exact_mean'] = round(mean, 4)
    out['gap_vs_exact_mean'] = {r: round(runs[r][final] - mean, 4) for r in others}
    if len(exact) >= 2:
        spread = max(values) - min(values)
        tolerance = max(spread, spec.per_val_image(num_val))
        out['exact_spread'] = round(spread, 4)
        out['tolerance'] = round(tolerance, 4)
        out['within_exact_spread'] = {r: abs(runs[r][final] - mean) <= tolerance + 1e-9
                                      for r in others}
    return out


def smooth(values: List[float], k: int) -> List[float]:
    """Trailing mean over ``k`` values (fewer at the start)."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1])
            for i in range(len(values))]


def plot(result: Dict[str, Any], spec: ModelSpec, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    final = f'final_{spec.metric}'
    for name, run in result['runs'].items():
        it = [r[0] for r in run['loss']]
        loss = [r[1] for r in run['loss']]
        line, = ax_loss.plot(it, smooth(loss, 10), label=name)
        ax_loss.plot(it, loss, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax_metric.plot([r[0] for r in run[spec.metric]], [r[1] for r in run[spec.metric]],
                       'o-', color=line.get_color(), label=f'{name} (final {run[final]:.3f})')
    summary = result['summary']
    if 'exact_spread' in summary:  # the band an ActNN run must end in
        lo = summary['exact_mean'] - summary['tolerance']
        hi = summary['exact_mean'] + summary['tolerance']
        ax_metric.axhspan(lo, hi, color='grey', alpha=0.15,
                          label=f"exact mean ± max(spread, 1 val image) = "
                          f"{summary['exact_mean']:.2f} ± {summary['tolerance']:.2f}")
    s = result['settings']
    ax_loss.set(xlabel='iteration', ylabel='training loss (10-iteration mean; raw faint)',
                title='loss')
    ax_metric.set(xlabel='iteration', ylabel=spec.metric_label, title=spec.metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{spec.title} ({s['num_train']} train / {s['num_val']} val), "
                 f"{s['img_size']} px, batch {s['batch_size']}, {s['iters']} iterations",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def final_loss(loss: List[List[float]]) -> float:
    """Mean training loss over the last 10% of iterations (one iteration is too noisy)."""
    tail = loss[-max(1, len(loss) // 10):]
    return sum(r[1] for r in tail) / len(tail)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    spec = MODELS[args.model]
    data_root = osp.abspath(args.data_root or osp.join(args.work_dir, spec.dataset))
    if args.run_one:
        train_one(args, args.run_one, data_root, osp.join(args.work_dir, args.run_one))
        return 0
    start = time.time()
    if args.replot:
        times, total = earlier_times(args.out_json, args.runs)
    else:
        os.makedirs(args.work_dir, exist_ok=True)
        ensure_data(args, data_root)
        times, failed = run_all(args, data_root)
        if failed:
            print(f'[convergence] failed runs: {failed}; see {args.work_dir}/<run>.out',
                  file=sys.stderr)
            return 1
        total = round(time.time() - start, 1)
    final = f'final_{spec.metric}'
    runs = {}
    for run in args.runs:
        level, options, seed = parse_run(run, args.seed)
        curves = read_curves(osp.join(args.work_dir, run), spec)
        curves.update(level=level, options=options, seed=seed, wall_s=times.get(run))
        curves[final] = curves[spec.metric][-1][1]
        curves['final_loss'] = round(final_loss(curves['loss']), 4)
        runs[run] = curves
    settings = {k: getattr(args, k) for k in ('model', 'iters', 'eval_interval', 'img_size',
                                              'batch_size', 'lr', 'num_train', 'num_val',
                                              'seed', 'jobs')}
    settings['config'] = spec.config
    settings['command'] = 'python tools/convergence.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    summary = summarize(runs, spec, args.num_val, args.seed)
    result = {'settings': settings, 'runs': runs, 'summary': summary, 'wall_s': total}
    for path in (args.out_json, args.out_png):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(args.out_json, 'w') as f:
        json.dump(result, f, indent=1)
    plot(result, spec, args.out_png)
    print_summary(result, spec)
    print(f'[convergence] wrote {args.out_json} and {args.out_png} '
          f'({_seconds(result["wall_s"])} in all)')
    return 0


def earlier_times(out_json: str, runs: List[str]) -> Tuple[Dict[str, float], Optional[float]]:
    """Run times recorded by the training that ``--replot`` re-reads (none if unknown)."""
    if not osp.isfile(out_json):
        return {}, None
    with open(out_json) as f:
        earlier = json.load(f)
    times = {r: earlier['runs'][r].get('wall_s') for r in runs if r in earlier.get('runs', {})}
    return times, earlier.get('wall_s')


def _seconds(value: Optional[float]) -> str:
    return 'time unknown' if value is None else f'{value:.0f}s'


def print_summary(result: Dict[str, Any], spec: ModelSpec) -> None:
    final = f'final_{spec.metric}'
    width = max(len(r) for r in result['runs'])
    for name, run in result['runs'].items():
        print(f'[convergence] {name:>{width}}: final {spec.metric} {run[final]:.4f}  '
              f'loss (last 10%) {run["final_loss"]:.4f}  ({_seconds(run["wall_s"])})')
    s = result['summary']
    if 'exact_spread' in s:
        print(f"[convergence] exact spread |max - min| {s['exact_spread']:.4f} over "
              f"{len(s['exact_runs'])} seeds, mean {s['exact_mean']:.4f}, tolerance "
              f"max(spread, one val image) {s['tolerance']:.4f}")
    for name, gap in s.get('gap_vs_exact_mean', {}).items():
        verdict = s.get('within_exact_spread', {}).get(name)
        state = ('' if verdict is None else
                 '  PASS: within the run-to-run spread of exact' if verdict else
                 '  FAIL: outside the run-to-run spread of exact')
        print(f'[convergence] {name}: {spec.metric} gap vs exact mean {gap:+.4f}{state}')


if __name__ == '__main__':
    sys.exit(main())
