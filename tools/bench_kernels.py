#!/usr/bin/env python
"""Throughput of the compression kernels against a plain device copy of the same tensor.

    python tools/bench_kernels.py                         # CPU, small sizes
    python tools/bench_kernels.py --device cuda --sizes-mb 256 1024

For every dtype, bits and size it prints the memory traffic of compress (read x, write payload
+ metadata) and decompress (read payload + metadata, write x) in GB/s, and that bandwidth as a
percentage of ``y.copy_(x)`` (read x, write x) on the same device. The GPU target is >= 70% of
copy bandwidth for 2-bit fp32 at >= 256 MB. Decompress returns a new tensor, so on CPU it also
pays for fresh pages (the OS zeroes them on first touch); ``torch.empty_like(x).copy_(x)`` is
printed beside it as what torch itself pays for a new tensor of the same size.

``--masks`` adds the ReLU and statistics ops each converted layer runs beside them, timed
against what torch runs for the same job: ``pack_nonzero`` (forward: the 1-bit mask) against
``x > 0``, ``mask_grad`` (backward) against ``threshold_backward``, ``accumulate_sq_norm`` (the
gradient statistic of L3's allocator) against ``g.pow(2).sum()``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from actnn_mm.engine import compress, decompress  # noqa: E402
from actnn_mm.engine.mask import masked_grad, pack_nonzero  # noqa: E402

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def _time(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median seconds per call (after two warm-up calls)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--sizes-mb', type=float, nargs='+', default=[4.0, 32.0])
    ap.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument('--bits', type=int, nargs='+', default=[1, 2, 4, 8])
    ap.add_argument('--group-size', type=int, default=256)
    ap.add_argument('--samples', type=int, default=64, help='batch dimension of the tensor')
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--masks', action='store_true',
                    help='also time the ReLU mask and gradient-norm ops against torch\'s')
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f'device={dev} ({torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"}, '
          f'{torch.get_num_threads()} threads), torch {torch.__version__}, '
          f'group_size={args.group_size}')
    print(f'{"dtype":>5} {"MB":>7} {"bits":>4} | {"copy GB/s":>9} {"new+copy":>8} | '
          f'{"compress GB/s":>13} {"% copy":>7} | {"decompress GB/s":>15} {"% copy":>7} | '
          f'{"ratio":>6}')
    for name in args.dtypes:
        dtype = DTYPES[name]
        esize = torch.finfo(dtype).bits // 8
        for mb in args.sizes_mb:
            numel = int(mb * 2**20) // esize
            d = max(1, numel // args.samples)
            x = torch.randn(args.samples, d, device=dev, dtype=dtype)
            nbytes = x.numel() * esize
            y = torch.empty_like(x)
            t_copy = _time(lambda: y.copy_(x), dev, args.iters)
            bw_copy = 2 * nbytes / t_copy / 1e9
            bw_new = 2 * nbytes / _time(lambda: torch.empty_like(x).copy_(x), dev,
                                        args.iters) / 1e9
            for bits in args.bits:
                c = compress(x, bits, group_size=args.group_size)
                t_c = _time(lambda: compress(x, bits, group_size=args.group_size), dev, args.iters)
                t_d = _time(lambda: decompress(c), dev, args.iters)
                bw_c = (nbytes + c.nbytes) / t_c / 1e9
                bw_d = (nbytes + c.nbytes) / t_d / 1e9
                print(f'{name:>5} {nbytes / 2**20:7.1f} {bits:4d} | {bw_copy:9.2f} {bw_new:8.2f} | '
                      f'{bw_c:13.2f} '
                      f'{100 * bw_c / bw_copy:6.1f}% | {bw_d:15.2f} {100 * bw_d / bw_copy:6.1f}% | '
                      f'{nbytes / c.nbytes:5.1f}x', flush=True)
    if args.masks:
        _bench_masks(args, dev)


def _bench_masks(args: argparse.Namespace, dev: torch.device) -> None:
    """ms per call of the mask / statistics ops and of torch's op for the same job."""
    print(f'{"dtype":>5} {"MB":>7} | {"pack_nonzero":>12} {"x > 0":>7} | {"mask_grad":>9} '
          f'{"threshold_bw":>12} | {"sq_norm":>7} {"pow.sum":>7}   (ms)')
    ops = torch.ops.actnn_mm
    for name in args.dtypes:
        dtype = DTYPES[name]
        esize = torch.finfo(dtype).bits // 8
        for mb in args.sizes_mb:
            numel = int(mb * 2**20) // esize
            x = torch.randn(numel, device=dev, dtype=dtype)
            g = torch.randn_like(x)
            acc = torch.zeros(2, device=dev)
            packed = pack_nonzero(x, True)
            times = [_time(f, dev, args.iters) * 1e3 for f in (
                lambda: pack_nonzero(x, True), lambda: x > 0,
                lambda: masked_grad(packed, g),
                lambda: torch.ops.aten.threshold_backward(g, x, 0.0),
                lambda: ops.accumulate_sq_norm(g, acc, 1, 1.0), lambda: g.pow(2).sum())]
            print(f'{name:>5} {numel * esize / 2**20:7.1f} | {times[0]:12.3f} {times[1]:7.3f} | '
                  f'{times[2]:9.3f} {times[3]:12.3f} | {times[4]:7.3f} {times[5]:7.3f}',
                  flush=True)


if __name__ == '__main__':
    main()
