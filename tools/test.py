#!/usr/bin/env python
"""Test (and evaluate) a checkpoint with an mmdet, mmseg or mmpretrain config.

Same flags as mmdet's ``tools/test.py``. ``--out`` and ``--show-dir`` follow the codebase named
by the config's ``default_scope``: mmdet and mmpretrain dump predictions to a ``.pkl``, mmseg
writes prediction PNGs to a folder.

    python tools/test.py configs/actnn/demo/faster_rcnn_r50_fpn_demo.py work_dirs/.../iter_40.pth
"""
import argparse
import os

from mmengine.config import Config, DictAction

from actnn_tools.runner import (
    build_runner,
    ensure_data_exists,
    load_config,
    setup_cache_size_limit_of_dynamo,
    setup_cpu_distributed,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir',
                        help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation '
                        '(mmseg configs: a directory for the prediction images)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--interval', type=int,
                        help='visualize every N-th sample (default: the config\'s hook; mmseg '
                        'draws every 50th)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format '
        'will be merged into config file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg: Config, args: argparse.Namespace) -> None:
    """Turn on the codebase's visualization hook the way its own test.py does."""
    hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in hooks:
        raise RuntimeError('VisualizationHook must be included in default_hooks: '
                           '"visualization=dict(type=\'VisualizationHook\')"')
    vis = hooks['visualization']
    scope = cfg.get('default_scope')
    if scope == 'mmpretrain':
        vis.enable = True
        vis.out_dir = args.show_dir
    else:
        vis.draw = True
        if args.show_dir and scope == 'mmseg':
            cfg.visualizer.save_dir = args.show_dir
        elif args.show_dir:
            vis.test_out_dir = args.show_dir
    if args.show:
        vis.show = True
        vis.wait_time = args.wait_time
    if args.interval is not None:
        vis.interval = args.interval


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_cache_size_limit_of_dynamo()
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    scope = cfg.get('default_scope')
    if args.out is not None and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    elif args.out is not None:
        assert args.out.endswith(('.pkl', '.pickle')), 'The dump file must be a pkl file.'

    ensure_data_exists(cfg, ('test', ))
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if args.out is not None and scope != 'mmseg':
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults as Dump
        else:
            from mmengine.evaluator import DumpResults as Dump
        runner.test_evaluator.metrics.append(Dump(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
