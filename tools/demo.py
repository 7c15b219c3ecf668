#!/usr/bin/env python
"""The quick-start demo: synthetic COCO -> train Faster R-CNN on CPU -> bbox mAP -> memory saved.

    python tools/demo.py                      # all defaults, a few minutes on 2 CPU cores
    python tools/demo.py --iters 40 --level L3 --work-dir work_dirs/demo --data-root data/coco

1. makes the synthetic COCO data in ``--data-root`` if it is not complete there;
2. trains ``configs/actnn/demo/faster_rcnn_r50_fpn_demo.py`` for ``--iters`` iterations;
3. evaluates COCO bbox mAP on the synthetic val split and prints it;
4. on one training batch, measures the bytes of activations that autograd saves for backward,
   for the trained weights in the model built without ActNN (exact) and converted at
   ``--level`` like the config says, and prints both and their ratio.
"""
import argparse
import os.path as osp
import sys
import time
from typing import Any, Dict, Optional

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

from actnn_mm import LEVELS, ActNNHook, is_converted, measure_saved_bytes
from actnn_mm.mm.config_section import HOOK_TYPES
from actnn_tools.demo_data import make_demo_data
from actnn_tools.runner import REPO_ROOT, build_runner, load_config

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/actnn/demo/faster_rcnn_r50_fpn_demo.py')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='actnn_mm demo: train Faster R-CNN on synthetic COCO (CPU), report mAP and '
        'the activation memory ActNN saves')
    parser.add_argument('--iters', type=int, default=30, help='training iterations')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs and checkpoints')
    parser.add_argument('--data-root', default='data/coco',
                        help='synthetic COCO folder (made here if missing)')
    parser.add_argument('--level', default='L3', choices=LEVELS,
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
def saved_activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes kept for backward by one training step (loss forward) of ``model`` on ``batch``."""
    model.train()
    torch.manual_seed(0)  # same RPN/RoI sampling for every model measured
    data = model.data_preprocessor(batch, True)

    def forward(m: torch.nn.Module, d: dict):
        return m._run_forward(d, mode='loss')

    return measure_saved_bytes(model, data, forward=forward).total


def actnn_options(cfg: Config, level: str) -> Dict[str, Any]:
    """The config's ``ActNNHook`` options (its parts, include/exclude...) at ``level``; the
    whole model where the config has no hook."""
    hook = next((h for h in cfg.get('custom_hooks', None) or []
                 if isinstance(h, dict) and h.get('type') in HOOK_TYPES), None)
    options = {k: v for k, v in (hook or dict(parts=['model'])).items() if k != 'type'}
    options['level'] = level
    return options


def fresh_model(cfg: Config, state_dict: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """The config's model built afresh, never converted, holding ``state_dict``'s weights."""
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(cfg.model)
    model.load_state_dict(state_dict)
    return model


def compare_saved_bytes(cfg: Config, state_dict: Dict[str, torch.Tensor], batch: dict,
                        level: str) -> Dict[str, int]:
    """Saved-activation bytes of one training batch: the exact model (built without ActNN)
    and the same weights converted at ``level`` as the config's ActNN options say."""
    exact_model = fresh_model(cfg, state_dict)
    if is_converted(exact_model):  # e.g. Q-layers named in the config's model itself
        raise ValueError('demo: the exact reference came out converted; the config builds '
                         'Q-layers, so it has no exact model to compare with')
    exact = saved_activation_bytes(exact_model, batch)
    del exact_model
    model = fresh_model(cfg, state_dict)
    hook = ActNNHook(**actnn_options(cfg, level))
    reports = hook.convert(model)
    converted = sum(r.num_converted for r in reports.values())
    compressed = saved_activation_bytes(model, batch)
    return dict(exact=exact, compressed=compressed, converted=converted)


def report_memory(runner: Runner, cfg: Config, level: str) -> Dict[str, int]:
    """Print (and return) the saved-activation bytes of the exact and the ActNN model, both
    holding the trained weights."""
    batch = next(iter(runner.train_dataloader))
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    result = compare_saved_bytes(cfg, model.state_dict(), batch, level)
    exact, compressed = result['exact'], result['compressed']
    print(f'Saved activations for backward, one training batch ({len(batch["inputs"])} images), '
          'trained weights:')
    print(f'  exact (no ActNN): {exact / 2**20:9.2f} MiB ({exact} bytes)')
    print(f'  ActNN {level:<10}: {compressed / 2**20:9.2f} MiB ({compressed} bytes; '
          f'{result["converted"]} modules converted)')
    print(f'  ActNN {level} keeps {exact / compressed:.1f}x fewer bytes of saved activations '
          f'({exact - compressed} bytes less)')
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    try:
        root, written = make_demo_data('coco', data_root=args.data_root)
    except FileExistsError as e:  # a real dataset lives there: never write into it
        sys.exit(f'demo: {e}. Pass --data-root with another folder.')
    print(f'[demo] synthetic COCO in {root}: {"made" if written else "already there"}')

    cfg = demo_config(args)
    runner = build_runner(cfg)
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
    report_memory(runner, cfg, args.level)
    print(f'Total wall time: {time.time() - start:.0f}s; work dir: {runner.work_dir}')


if __name__ == '__main__':
    main()
