#!/usr/bin/env python
"""Train a model from an mmdet, mmseg or mmpretrain config, with actnn_mm available.

Same flags and behaviour as mmdet's ``tools/train.py``; the config's ``default_scope`` picks the
codebase. ``import actnn_mm`` happens first, so its registrations and compat fixes are active,
and ``custom_imports`` in the config are honoured. Without CUDA a distributed launch uses gloo.

    python tools/train.py configs/actnn/demo/faster_rcnn_r50_fpn_demo.py
    bash tools/dist_train.sh configs/actnn/demo/faster_rcnn_r50_fpn_demo.py 2
"""
import argparse
import os
import sys

from mmengine.config import DictAction
from mmengine.device import get_device

from actnn_tools.runner import (
    build_runner,
    ensure_data_exists,
    load_config,
    setup_cache_size_limit_of_dynamo,
    setup_cpu_distributed,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model (mmdet/mmseg/mmpretrain)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='If specify checkpoint path, resume from it, while if not specify, try to auto '
        'resume from the latest checkpoint in the work directory.')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format '
        'will be merged into config file. If the value to be overwritten is a list, it should '
        'be like key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
        'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white '
        'space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch >= 2.0 launchers pass `--local-rank`, older ones `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_cache_size_limit_of_dynamo()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    if args.amp:
        if get_device() == 'cpu':  # mmengine's AmpOptimWrapper asserts an accelerator
            sys.exit('--amp needs a GPU (or NPU/MLU/MUSA): mmengine\'s AmpOptimWrapper does not '
                     'train on CPU, and no accelerator is visible.')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        # mmpretrain configs give only `base_batch_size`; mmdet ones also `enable=False`.
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.base_batch_size" '
                               'in your configuration file.')
        cfg.auto_scale_lr.enable = True

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    ensure_data_exists(cfg, ('train', 'val') if cfg.get('val_cfg') else ('train', ))
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
