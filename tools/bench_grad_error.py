#!/usr/bin/env python
"""How far one training step's gradients with ActNN are from the exact ones.

    python tools/bench_grad_error.py                                   # ResNet-50, CPU
    python tools/bench_grad_error.py --sizes 32 64 224 --batch 2 --configs L3 L3,compress_norm=False

Builds torchvision's ResNet-50 with a fixed seed, runs one forward/backward on a random batch
(loss = mean of squared logits) exact and converted at each ActNN config, and prints the relative
error ||g - g_exact|| / ||g_exact|| over all parameter gradients (inf when a gradient is not
finite). One draw per config: a single-step figure, not an average.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from actnn_mm import convert  # noqa: E402
from actnn_mm.engine import CompressionConfig  # noqa: E402


def parse_config(text: str) -> CompressionConfig:
    """'L3' or 'L3,compress_norm=False,bits=4' -> CompressionConfig."""
    level, *pairs = text.split(',')
    options: Dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition('=')
        options[key] = {'True': True, 'False': False}.get(value, None)
        if options[key] is None:
            options[key] = float(value) if '.' in value else int(value)
    return CompressionConfig.from_level(level, **options)


def gradients(size: int, batch: int, config: Optional[CompressionConfig], seed: int,
              device: torch.device) -> torch.Tensor:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50().to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if config is not None:
        convert(model, config)
    model(x).float().pow(2).mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[32, 64, 224])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--configs', nargs='+', default=['L3', 'L3,compress_norm=False'],
                        help="ActNN levels with options, e.g. 'L2' 'L3,compress_norm=False'")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    configs = {text: parse_config(text) for text in args.configs}
    print(f"{'size':>5} {'batch':>5}  " + '  '.join(f'{c:>24}' for c in configs))
    for size in args.sizes:
        exact = gradients(size, args.batch, None, args.seed, device)
        errors = []
        for config in configs.values():
            g = gradients(size, args.batch, config, args.seed, device)
            err = float((g - exact).norm() / exact.norm()) if torch.isfinite(g).all() else \
                float('inf')
            errors.append(err)
        print(f'{size:>5} {args.batch:>5}  ' + '  '.join(f'{e:>24.3g}' for e in errors),
              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
