#!/usr/bin/env python
"""Dispatch overhead of one training step per ActNN level: ops, host reads, time, ratios.

    python tools/bench_overhead.py resnet50 --levels exact L2 L3 --device cpu
    python tools/bench_overhead.py faster_rcnn --levels exact L2 L3 --batch 2 --image-size 320
    python tools/bench_overhead.py swin_t --levels exact L2 L3 --image-size 160
    python tools/bench_overhead.py resnet50 --device cuda --batch 128 --image-size 224

One model per level (same seed: same weights and inputs), SGD momentum 0.9, a full step
(forward, backward, which steps the bit allocator, and the optimizer step with ``foreach=True``).
Steps are alternated between the levels in one run: first ``--count-steps`` steps per level
under an ``OpCounter`` (compute ops without views/metadata/allocations, host reads), then
``--steps`` timed steps per level without it. Every figure is the median over steps; speed is
reported as throughput relative to the first level (``exact`` by default), never as an absolute
time alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from actnn_mm import convert  # noqa: E402
from actnn_mm.engine import CompressionConfig  # noqa: E402
from actnn_tools.benchmark.overhead import OpCounter  # noqa: E402

MODELS = ('resnet50', 'faster_rcnn', 'swin_t')


class SwinTWorkload:
    """torchvision Swin-T, random images and labels, cross-entropy over 1000 classes."""

    def __init__(self, batch: int, image_size: Tuple[int, int], device: torch.device) -> None:
        import torchvision
        torch.manual_seed(0)
        self.model = torchvision.models.swin_t(weights=None).to(device)
        h, w = image_size
        self.x = torch.randn(batch, 3, h, w, device=device)
        self.y = torch.randint(0, 1000, (batch, ), device=device)

    def forward(self) -> Tuple[Any, torch.Tensor]:
        out = self.model(self.x)
        return out, nn.functional.cross_entropy(out, self.y)

    def actnn_parts(self) -> List[nn.Module]:
        return [self.model]


def build(model: str, batch: int, size: Tuple[int, int], device: torch.device) -> Any:
    if model == 'swin_t':
        return SwinTWorkload(batch, size, device)
    from actnn_tools.benchmark.workloads import build_workload
    return build_workload(model, batch, size, device)


class Run:
    """One level: its workload, optimizer and bit allocator."""

    def __init__(self, level: str, args: argparse.Namespace, device: torch.device) -> None:
        self.level = level
        size = tuple(args.image_size) * (2 // len(args.image_size))
        self.work = build(args.model, args.batch, size, device)
        if level != 'exact':  # the parts share one allocator, stepped by every backward
            cfg = CompressionConfig.from_level(level)
            allocator = None
            for part in self.work.actnn_parts():
                allocator = convert(part, cfg, allocator=allocator).allocator
        params = [p for p in self.work.model.parameters() if p.requires_grad]
        # foreach: one op per update kind for all parameters (the CUDA default; CPU's default
        # loops over parameters, which would bury the per-layer ops being measured).
        self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=True)
        self.work.model.train()
        self.ops: List[int] = []
        self.reads: List[int] = []
        self.times: List[float] = []
        self.by_name: Dict[str, int] = {}
        self.read_names: Dict[str, int] = {}

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.work.forward()
        loss.backward()
        self.opt.step()

    def counted_step(self) -> None:
        with OpCounter() as c:
            self.step()
        self.ops.append(c.ops)
        self.reads.append(c.host_reads)
        self.by_name = dict(c.by_name.most_common())
        self.read_names = dict(c.reads_by_name)

    def timed_step(self, device: torch.device) -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        self.step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        self.times.append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model', choices=MODELS)
    ap.add_argument('--levels', nargs='+', default=['exact', 'L2', 'L3'],
                    help='exact and/or ActNN levels L0..L5; the first is the baseline')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--image-size', type=int, nargs='+', default=[160], help='H [W]')
    ap.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    ap.add_argument('--warmup', type=int, default=2, help='untimed steps per level first')
    ap.add_argument('--count-steps', type=int, default=3, help='counted steps per level')
    ap.add_argument('--steps', type=int, default=5, help='timed steps per level')
    ap.add_argument('--top', type=int, default=0, help='print the N most frequent ops per level')
    ap.add_argument('--out', default='', help='write the figures as JSON to this file')
    args = ap.parse_args()
    for lv in args.levels:
        if lv != 'exact' and lv not in ('L0', 'L1', 'L2', 'L3', 'L4', 'L5'):
            ap.error(f'unknown level {lv!r}: use exact or L0..L5')
    if len(args.image_size) not in (1, 2):
        ap.error('--image-size takes H or H W')
    device = torch.device(args.device)
    if device.type == 'cpu':
        torch.set_num_threads(args.threads)
    runs = [Run(lv, args, device) for lv in args.levels]
    for _ in range(args.warmup):
        for r in runs:
            r.step()
    for _ in range(args.count_steps):
        for r in runs:
            r.counted_step()
    for _ in range(args.steps):
        for r in runs:
            r.timed_step(device)
    base = runs[0]
    b_ops = statistics.median(base.ops) if base.ops else float('nan')
    b_t = statistics.median(base.times) if base.times else float('nan')
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'CPU, {torch.get_num_threads()} threads'
    size = 'x'.join(str(s) for s in args.image_size * (2 // len(args.image_size)))
    print(f'{args.model}, batch {args.batch}, {size}, {dev_name}, torch {torch.__version__}; '
          f'medians of {args.count_steps} counted / {args.steps} timed steps, levels alternated')
    print(f'{"level":>6} | {"ops/step":>8} {"x base":>7} | {"host reads":>10} | '
          f'{"ms/step":>8} {"throughput":>10}')
    rows = []
    for r in runs:
        ops = statistics.median(r.ops) if r.ops else float('nan')
        reads = statistics.median(r.reads) if r.reads else float('nan')
        t = statistics.median(r.times) if r.times else float('nan')
        row = {'level': r.level, 'ops': ops, 'ops_ratio': ops / b_ops, 'host_reads': reads,
               'ms_per_step': 1e3 * t, 'throughput_ratio': b_t / t,
               'host_read_causes': r.read_names, 'ops_by_name': r.by_name}
        rows.append(row)
        print(f'{r.level:>6} | {ops:8.0f} {ops / b_ops:6.2f}x | {reads:10.0f} | {1e3 * t:8.1f} '
              f'{b_t / t:9.2f}x')
        if args.top:
            top = ', '.join(f'{k} {v}' for k, v in list(r.by_name.items())[:args.top])
            print(f'         top ops: {top}')
        if r.read_names:
            print(f'         host reads: {r.read_names}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
                       'device': dev_name, 'torch': torch.__version__, 'rows': rows}, f,
                      indent=1)


if __name__ == '__main__':
    main()
