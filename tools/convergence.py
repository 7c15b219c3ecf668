#!/usr/bin/env python
"""Convergence parity: train the demo Faster R-CNN exact and with ActNN on the same schedule.

Both runs use the same seed, data, schedule and evaluation; the only difference is the config's
``actnn`` section (absent for the exact run). Writes the loss and bbox-mAP curves of both to a
JSON file and a plot, and prints the final mAPs and their difference.

    python tools/convergence.py                      # defaults below
    python tools/convergence.py --iters 40 --eval-interval 20 --out-json /tmp/c.json \
        --out-png /tmp/c.png                         # a quick look

The runs are separate processes (clean RNG and allocator state each); with ``--jobs 2`` they run
side by side, one thread each.
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
from typing import Any, Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/actnn/demo/faster_rcnn_r50_fpn_demo.py')
EXACT = 'exact'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--iters', type=int, default=600, help='training iterations per run')
    p.add_argument('--eval-interval', type=int, default=100, help='bbox mAP every N iterations')
    p.add_argument('--img-scale', type=int, default=160, help='train/test resize scale (px)')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--levels', nargs='+', default=[EXACT, 'L3'],
                   help=f"runs to compare: '{EXACT}' and/or ActNN levels, optionally with "
                   "actnn options: 'L3,per_layer=False'")
    p.add_argument('--num-train', type=int, default=128)
    p.add_argument('--num-val', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--work-dir', default='work_dirs/convergence')
    p.add_argument('--data-root', default=None,
                   help='synthetic COCO folder (default: <work-dir>/coco, made if missing)')
    p.add_argument('--jobs', type=int, default=2, help='runs side by side (threads split)')
    p.add_argument('--out-json', default=osp.join(REPO, 'docs/convergence.json'))
    p.add_argument('--out-png', default=osp.join(REPO, 'docs/convergence.png'))
    # internal: run one training (in a child process)
    p.add_argument('--run-one', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- one run (child process) -----------------------------------------------------------------
def run_options(args: argparse.Namespace, data_root: str) -> Dict[str, Any]:
    """``--cfg-options`` shared by every run: the small, CPU-feasible schedule."""
    root = data_root.rstrip('/') + '/'
    scale = (args.img_scale, args.img_scale)
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
        'randomness.seed': args.seed,
    }


def train_one(args: argparse.Namespace, level: str, data_root: str, work_dir: str) -> None:
    """Train one run in this process (the exact run has no ``actnn`` section)."""
    sys.path.insert(0, osp.join(REPO, 'tools'))
    from mmengine.config import Config

    from actnn_tools.runner import build_runner, load_config  # noqa: E402

    cfg = Config.fromfile(CONFIG)
    if level == EXACT:
        cfg.pop('actnn', None)
    else:
        name, *options = level.split(',')
        cfg.actnn.level = name
        cfg.actnn.log_interval = 50  # kept-bytes figure: every 50 iterations is plenty
        for option in options:  # 'key=value' with a Python literal value
            key, value = option.split('=', 1)
            cfg.actnn[key] = ast.literal_eval(value)
    tmp = osp.join(work_dir, 'run_config.py')
    os.makedirs(work_dir, exist_ok=True)
    cfg.dump(tmp)
    cfg = load_config(tmp, run_options(args, data_root), work_dir=work_dir)
    build_runner(cfg).train()


# --- orchestration ---------------------------------------------------------------------------
def ensure_data(args: argparse.Namespace, data_root: str) -> None:
    h, w = args.img_scale * 3 // 4, args.img_scale
    cmd = [sys.executable, osp.join(REPO, 'tools/make_demo_data.py'), 'coco', '--data-root',
           data_root, '--num-train', str(args.num_train), '--num-val', str(args.num_val),
           '--img-size', str(h), str(w), '--seed', str(args.seed)]
    subprocess.run(cmd, check=True)


def read_curves(work_dir: str, eval_interval: int) -> Dict[str, Any]:
    """Loss per iteration and bbox mAP per evaluation from mmengine's ``scalars.json``
    (validation rows carry no iteration: the k-th one ran at k * eval_interval)."""
    found = [osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs
             if f == 'scalars.json']
    if not found:
        raise RuntimeError(f'no scalars.json under {work_dir}: did the run fail?')
    loss: List[List[float]] = []
    mAP: List[List[float]] = []
    with open(max(found, key=osp.getmtime)) as f:
        for line in f:
            row = json.loads(line)
            if 'loss' in row and 'iter' in row:
                loss.append([row['iter'], row['loss']])
            if 'coco/bbox_mAP' in row:
                mAP.append([(len(mAP) + 1) * eval_interval, row['coco/bbox_mAP'],
                            row.get('coco/bbox_mAP_50')])
    return {'loss': loss, 'bbox_mAP': mAP}


def launch(args: argparse.Namespace, level: str, data_root: str, threads: int) -> subprocess.Popen:
    work = osp.join(args.work_dir, level)
    log = open(osp.join(args.work_dir, f'{level}.out'), 'w')
    cmd = [sys.executable, osp.abspath(__file__), '--run-one', level, '--data-root', data_root,
           '--work-dir', args.work_dir]
    for key in ('iters', 'eval_interval', 'img_scale', 'batch_size', 'lr', 'seed'):
        cmd += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    print(f'[convergence] {level}: training in {work} (log {log.name})', flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def plot(result: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for level, run in result['runs'].items():
        it = [r[0] for r in run['loss']]
        loss = [r[1] for r in run['loss']]
        k = 10  # moving average over 10 iterations, raw curve faint
        smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1])
                  for i in range(len(loss))]
        line, = ax_loss.plot(it, smooth, label=f'{level}')
        ax_loss.plot(it, loss, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax_map.plot([r[0] for r in run['bbox_mAP']], [r[1] for r in run['bbox_mAP']], 'o-',
                    color=line.get_color(), label=f"{level} (final {run['final_bbox_mAP']:.3f})")
    s = result['settings']
    ax_loss.set(xlabel='iteration', ylabel='training loss (10-iter mean)', title='loss')
    ax_map.set(xlabel='iteration', ylabel='COCO bbox mAP (val)', title='bbox mAP')
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Faster R-CNN R50-FPN, synthetic COCO ({s['num_train']} train / "
                 f"{s['num_val']} val), {s['img_scale']} px, batch {s['batch_size']}, "
                 f"{s['iters']} iterations, seed {s['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    data_root = osp.abspath(args.data_root or osp.join(args.work_dir, 'coco'))
    if args.run_one:
        train_one(args, args.run_one, data_root, osp.join(args.work_dir, args.run_one))
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    ensure_data(args, data_root)
    start = time.time()
    jobs = max(1, min(args.jobs, len(args.levels)))
    threads = max(1, (os.cpu_count() or 2) // jobs)
    pending, running, times = list(args.levels), {}, {}
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            level = pending.pop(0)
            running[level] = (launch(args, level, data_root, threads), time.time())
        time.sleep(2)
        for level, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                times[level] = time.time() - t0
                del running[level]
                if proc.returncode:
                    failed.append(level)
                print(f'[convergence] {level}: exit {proc.returncode} after '
                      f'{times[level]:.0f}s', flush=True)
    if failed:
        print(f'[convergence] failed runs: {failed}; see {args.work_dir}/<level>.out',
              file=sys.stderr)
        return 1
    runs = {}
    for level in args.levels:
        curves = read_curves(osp.join(args.work_dir, level), args.eval_interval)
        curves['final_bbox_mAP'] = curves['bbox_mAP'][-1][1]
        curves['wall_s'] = round(times[level], 1)
        runs[level] = curves
    settings = {k: getattr(args, k) for k in ('iters', 'eval_interval', 'img_scale',
                                              'batch_size', 'lr', 'num_train', 'num_val',
                                              'seed', 'jobs')}
    settings['config'] = osp.relpath(CONFIG, REPO)
    settings['command'] = 'python tools/convergence.py ' + ' '.join(argv or sys.argv[1:])
    result = {'settings': settings, 'runs': runs, 'wall_s': round(time.time() - start, 1)}
    if EXACT in runs and len(runs) > 1:
        base = runs[EXACT]['final_bbox_mAP']
        result['map_diff_vs_exact'] = {lv: round(r['final_bbox_mAP'] - base, 4)
                                       for lv, r in runs.items() if lv != EXACT}
    for path in (args.out_json, args.out_png):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(args.out_json, 'w') as f:
        json.dump(result, f, indent=1)
    plot(result, args.out_png)
    for level, run in runs.items():
        print(f'[convergence] {level:>6}: final bbox mAP {run["final_bbox_mAP"]:.4f}  '
              f'final loss {run["loss"][-1][1]:.4f}  ({run["wall_s"]:.0f}s)')
    if 'map_diff_vs_exact' in result:
        print(f'[convergence] mAP difference vs exact: {result["map_diff_vs_exact"]}')
    print(f'[convergence] wrote {args.out_json} and {args.out_png} '
          f'({result["wall_s"]:.0f}s in all)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
