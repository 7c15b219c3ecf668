#!/usr/bin/env python
"""Make small synthetic datasets in the real COCO / Cityscapes / ImageNet layouts.

    python tools/make_demo_data.py all       # data/coco, data/cityscapes, data/imagenet
    python tools/make_demo_data.py coco --num-train 64 --num-val 16 --img-size 240 320 --seed 0

Deterministic for a given seed; a second run with the same arguments does nothing (``--force``
regenerates). It refuses to write into a folder holding a dataset it did not make.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))

from actnn_tools.demo_data import DEMO_DATASETS, make_demo_data  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Make synthetic demo datasets')
    parser.add_argument('dataset', choices=[*DEMO_DATASETS, 'all'], help='which dataset')
    parser.add_argument('--out', default='data',
                        help='parent folder; each dataset goes to <out>/<dataset>')
    parser.add_argument('--data-root', help='exact folder for a single dataset (overrides --out)')
    parser.add_argument('--num-train', type=int, help='training images (default per dataset)')
    parser.add_argument('--num-val', type=int, help='validation images (default per dataset)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image height and width (default per dataset)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--force', action='store_true', help='regenerate even if complete')
    args = parser.parse_args(argv)
    if args.data_root and args.dataset == 'all':
        parser.error('--data-root names one dataset folder; use --out with "all"')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    kinds = list(DEMO_DATASETS) if args.dataset == 'all' else [args.dataset]
    for kind in kinds:
        start = time.time()
        try:
            root, written = make_demo_data(
                kind, out=args.out, data_root=args.data_root, num_train=args.num_train,
                num_val=args.num_val, img_size=args.img_size, seed=args.seed, force=args.force)
        except FileExistsError as e:
            sys.exit(f'make_demo_data: {e}')
        state = (f'written in {time.time() - start:.1f}s' if written else
                 'already complete, skipped (--force to regenerate)')
        print(f'{kind}: {root} {state}')


if __name__ == '__main__':
    main()
