#!/usr/bin/env python
"""Memory and speed of exact, bf16-autocast, checkpointed and ActNN (L0-L5) training.

    python tools/bench_memory.py                                   # ResNet-50, every method
    python tools/bench_memory.py --device cuda --batch 128 --max-batch-search 16384
    python tools/bench_memory.py --model faster_rcnn --methods exact L3 --device cpu

For each method (exact, exact-bf16, ckpt[N], L0..L5, L0-bf16..L5-bf16) and batch it prints a
progress line, then writes ``<out>/bench_<model>_<device>.json`` and a batch-size vs throughput
plot (``.png``, out of memory marked with a red x), and prints the table last.

Memory as the ActNN paper measured it: on CUDA, ``torch.cuda.memory_allocated`` before backward
minus before forward, minus outputs and loss (per sample), and ``max_memory_allocated`` for the
peak; on CPU, the bytes autograd keeps for backward (``actnn_mm.saved_bytes.SavedBytesCounter``).
Throughput is the median of timed iterations after warm-up (informative only on CPU). The
largest batch is searched in subprocesses (doubling, then bisection; out of memory recorded)
with ``--max-batch-search CAP`` and a time bound per method (``--time-limit``).
See docs/benchmarks.md.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actnn_tools.benchmark.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
