#!/usr/bin/env python
"""Saved activations of exact / with_cp / L3 / with_cp + L3 for mmpretrain's ResNet-50 and
Swin-T backbones (one training forward, counted by ``SavedBytesCounter``; backward run).

    python tools/with_cp_saved_bytes.py [--size 224] [--batch 2]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from actnn_mm import convert, measure_saved_bytes  # noqa: E402
from actnn_mm.engine import CompressionConfig  # noqa: E402


def _backbone(name: str, with_cp: bool) -> torch.nn.Module:
    from mmpretrain.models.backbones import ResNet, SwinTransformer
    if name == 'resnet50':
        return ResNet(depth=50, with_cp=with_cp)
    return SwinTransformer(arch='tiny', img_size=224, with_cp=with_cp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=2)
    args = p.parse_args()
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f'| backbone ({args.size}x{args.size}, batch {args.batch}) | exact | with_cp | L3 | '
          'with_cp + L3 | (MiB saved for backward)')
    print('| --- | --- | --- | --- | --- |')
    for name in ('resnet50', 'swin-t'):
        torch.manual_seed(0)
        plain = _backbone(name, False)
        cp = _backbone(name, True)
        cp.load_state_dict(plain.state_dict())
        row = []
        for model, level in ((plain, None), (cp, None), (copy.deepcopy(plain), 'L3'),
                             (copy.deepcopy(cp), 'L3')):
            if level:
                convert(model, CompressionConfig.from_level(level))
            torch.manual_seed(0)
            row.append(measure_saved_bytes(model, x).total / 2**20)
        print(f'| {name} | ' + ' | '.join(f'{v:.2f}' for v in row) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
