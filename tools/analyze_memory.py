#!/usr/bin/env python
"""Will ActNN help my model? Saved activations, peak memory and the largest batch, per level.

    python tools/analyze_memory.py CONFIG [--levels exact L2 L3] [--batch N]
        [--device cpu|cuda] [--gpu-memory GB] [--out DIR] [--input-size H [W]]
        [--cfg-options KEY=VALUE ...]

CONFIG is any mmdet / mmseg / mmpretrain training config (a file, with its ``custom_imports``,
or an installed one as ``mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py``). No data set and
no download: the model is built from the config with pretrained weights removed, at the
training input size of its train pipeline / data preprocessor and the batch of its
``train_dataloader`` (``--batch``, ``--input-size`` override them), and trains two steps (a
warm-up, then the measured one) on a synthetic batch per level, each level in a fresh process.
ActNN converts the parts the config's own ``actnn`` section / ``ActNNHook`` names, else the
whole model. Prints a progress line per level, then the saved activations per part and per
module type, what stays exact and why, the peak estimate and the largest batch that fits in
``--gpu-memory`` GiB, and the measured peak (peak RSS on CPU, ``max_memory_allocated`` on CUDA);
writes ``memory_analysis.json`` and ``memory_analysis.png`` to ``--out``. See docs/memory.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

import actnn_mm  # noqa: E402,F401  (registrations and stack compat fixes)
from actnn_mm.mm.analysis import (  # noqa: E402
    DEFAULT_LEVELS,
    analyze,
    check_levels,
    format_text,
    write_json,
    write_png,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Memory analysis of a training config with ActNN')
    p.add_argument('config', help='training config file, or pkg::path of an installed one')
    p.add_argument('--levels', nargs='+', default=list(DEFAULT_LEVELS),
                   help='exact and/or ActNN levels L0..L5 (exact is always measured first)')
    p.add_argument('--batch', type=int, default=None,
                   help="batch size (default: the config's train_dataloader.batch_size)")
    p.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    p.add_argument('--gpu-memory', type=float, default=None, metavar='GB',
                   help='memory budget in GiB for the largest batch (default: the visible '
                        "GPU's memory with --device cuda, else 32)")
    p.add_argument('--out', default='work_dirs/memory_analysis',
                   help='directory for memory_analysis.json and .png')
    p.add_argument('--input-size', type=int, nargs='+', default=None, metavar='H [W]',
                   help='training input size instead of the pipeline\'s (full-size inputs '
                        'are slow on CPU)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config keys, e.g. model.backbone.with_cp=True')
    args = p.parse_args(argv)
    try:
        check_levels(args.levels)
    except ValueError as err:
        p.error(str(err))
    if args.input_size is not None and len(args.input_size) not in (1, 2):
        p.error('--input-size takes H W or one size S (square)')
    if args.batch is not None and args.batch < 1:
        p.error('--batch must be at least 1')
    if not (args.device == 'cpu' or args.device.startswith('cuda')):
        p.error(f'--device must be cpu or cuda[:N], got {args.device!r}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result = analyze(args.config, levels=args.levels, batch=args.batch, device=args.device,
                     gpu_memory_gib=args.gpu_memory, input_size=args.input_size,
                     cfg_options=args.cfg_options)
    print()
    print(format_text(result))
    paths = [write_json(result, args.out), write_png(result, args.out)]
    print('\nwritten: ' + ', '.join(paths))
    return 0 if all(lv.get('status') == 'ok' for lv in result['levels']) else 1


if __name__ == '__main__':
    sys.exit(main())
