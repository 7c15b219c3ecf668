#!/usr/bin/env python
"""The quick-start demo: synthetic COCO -> train Faster R-CNN on CPU -> bbox mAP -> memory saved.

    python tools/demo.py                      # all defaults, a few minutes on 2 CPU cores
    python tools/demo.py --iters 40 --level L3 --work-dir work_dirs/demo --data-root data/coco

1. makes the synthetic COCO data in ``--data-root`` if it is not complete there;
2. trains ``configs/actnn/demo/faster_rcnn_r50_fpn_demo.py`` for ``--iters`` iterations;
3. evaluates COCO bbox mAP on the synthetic val split and prints it;
4. on one training batch, measures the bytes of activations that autograd saves for backward,
   for the exact model and for its ActNN-compressed copy at ``--level``, and prints the saving.
"""
import argparse
import copy
import os.path as osp
import sys
import time
from typing import Callable, Dict, Optional

import torch
from actnn_tools.runner import REPO_ROOT, build_runner, load_config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from actnn_tools.demo_data import make_demo_data

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/actnn/demo/faster_rcnn_r50_fpn_demo.py')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='actnn_mm demo: train Faster R-CNN on synthetic COCO (CPU), report mAP and '
        'the activation memory ActNN saves')
    parser.add_argument('--iters', type=int, default=30, help='training iterations')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs and checkpoints')
    parser.add_argument('--data-root', default='data/coco',
                        help='synthetic COCO folder (made here if missing)')
    parser.add_argument('--level', default='L3',
                        help='ActNN optimisation level for the memory comparison')
    parser.add_argument('--config', default=DEMO_CONFIG, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class _KeepMetrics(Hook):
    """Remembers the last validation metrics (``runner.train()`` does not return them)."""
    priority = 'LOWEST'

    def __init__(self) -> None:
        self.metrics: Dict[str, float] = {}

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self.metrics = dict(metrics or {})


def demo_config(args: argparse.Namespace):
    """The demo config pointed at ``--data-root`` and shortened to ``--iters``."""
    cfg = load_config(args.config, work_dir=args.work_dir)
    root = args.data_root.rstrip('/') + '/'
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
    for split in ('val', 'test'):
        cfg[f'{split}_evaluator'].ann_file = root + 'annotations/instances_val2017.json'
    cfg.train_cfg.max_iters = args.iters
    cfg.train_cfg.val_interval = args.iters
    cfg.default_hooks.checkpoint.interval = args.iters
    for sched in cfg.param_scheduler:
        sched.end = min(sched.end, args.iters)
    return cfg


# --- saved-activation accounting -------------------------------------------------------------
def _fallback_saved_bytes(run: Callable[[], object]) -> int:
    """Bytes of distinct non-parameter tensors autograd saves while ``run()`` builds its graph.

    Used only where ``actnn_mm.saved_bytes`` is unavailable (it also counts compressed objects).
    """
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):  # parameters are not activations
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def saved_activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes kept for backward by one training step (loss forward) of ``model`` on ``batch``."""
    model.train()
    torch.manual_seed(0)  # same RPN/RoI sampling for every model measured
    data = model.data_preprocessor(batch, True)

    def forward(m: torch.nn.Module, d: dict):
        return m._run_forward(d, mode='loss')

    try:
        from actnn_mm.saved_bytes import measure_saved_bytes
    except ImportError:
        return _fallback_saved_bytes(lambda: forward(model, data))
    return measure_saved_bytes(model, data, forward=forward).total


def actnn_copy(model: torch.nn.Module, level: str) -> Optional[torch.nn.Module]:
    """``model`` converted in place to ActNN at ``level``; None where actnn_mm has no
    ``convert`` yet."""
    try:
        from actnn_mm.conversion import convert
        from actnn_mm.engine import CompressionConfig
    except ImportError:
        return None
    report = convert(model, config=CompressionConfig.from_level(level))
    print('  ' + str(report).splitlines()[0])
    return model


def report_memory(runner: Runner, level: str) -> Dict[str, int]:
    """Print (and return) the saved-activation bytes of the exact and the ActNN model."""
    batch = next(iter(runner.train_dataloader))
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    exact = saved_activation_bytes(copy.deepcopy(model), batch)
    result = dict(exact=exact)
    print(f'Saved activations for backward, one training batch ({len(batch["inputs"])} images):')
    print(f'  exact       : {exact / 2**20:9.2f} MiB ({exact} bytes)')
    compressed_model = actnn_copy(copy.deepcopy(model), level)
    if compressed_model is None:
        print(f'  ActNN {level}    : not measured: actnn_mm.convert is not available in this '
              'checkout, so there is nothing to compare against yet.')
        return result
    compressed = saved_activation_bytes(compressed_model, batch)
    result['compressed'] = compressed
    print(f'  ActNN {level}    : {compressed / 2**20:9.2f} MiB ({compressed} bytes)')
    print(f'  compression removed {exact - compressed} bytes of saved activations '
          f'({exact / max(compressed, 1):.1f}x smaller)')
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    try:
        root, written = make_demo_data('coco', data_root=args.data_root)
    except FileExistsError as e:  # a real dataset lives there: never write into it
        sys.exit(f'demo: {e}. Pass --data-root with another folder.')
    print(f'[demo] synthetic COCO in {root}: {"made" if written else "already there"}')

    runner = build_runner(demo_config(args))
    keep = _KeepMetrics()
    runner.register_hook(keep)
    runner.train()
    train_time = time.time() - start

    print('\n========== actnn_mm demo ==========')
    print(f'Faster R-CNN R50-FPN, {args.iters} iterations on {root} '
          f'({train_time:.0f}s incl. data and evaluation)')
    if keep.metrics:
        print(f'COCO bbox mAP: {keep.metrics.get("coco/bbox_mAP", float("nan")):.4f}  '
              f'(mAP@0.5: {keep.metrics.get("coco/bbox_mAP_50", float("nan")):.4f})')
    else:
        print('COCO bbox mAP: not computed (no validation ran)')
    report_memory(runner, args.level)
    print(f'Total wall time: {time.time() - start:.0f}s; work dir: {runner.work_dir}')


if __name__ == '__main__':
    main()
