"""One configuration (model, method, batch): activation memory, peak memory, throughput.

Activation memory is measured as the ActNN paper did, on CUDA: ``torch.cuda.memory_allocated``
just before backward minus just before forward, minus the bytes of the outputs and the loss.
Peak is ``torch.cuda.max_memory_allocated`` over the iterations after warm-up (stats reset then,
so cudnn.benchmark's algorithm search in the first iteration does not count).
nvidia-smi is never used: it shows the caching allocator's reserve, not what training needs.
On CPU there is no allocator to ask, so the figure is the bytes autograd keeps for backward,
counted by :class:`actnn_mm.saved_bytes.SavedBytesCounter` (also reported on CUDA as a cross-check).
Throughput: batch / median seconds of the timed iterations (after warm-up, synchronised).
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import Tensor

from actnn_mm.conversion import convert
from actnn_mm.engine import BitAllocator, CompressionConfig
from actnn_mm.mm.analysis.process_memory import is_oom
from actnn_mm.saved_bytes import SavedBytesCounter

from .methods import Method, parse_method
from .workloads import Workload, build_workload

__all__ = ['ConfigResult', 'run_config', 'apply_method', 'tensor_bytes', 'is_oom', 'MB']

MB = 2 ** 20  # "MB" in the tables is MiB, as in ActNN's benchmark


@dataclass
class ConfigResult:
    """What one configuration measured. Memory in MB (2^20 bytes), per sample where named so."""

    model: str
    method: str
    batch: int
    device: str
    status: str = 'ok'                  # ok | oom | error
    error: str = ''
    saved_mb_per_sample: Optional[float] = None   # headline: allocator (CUDA) / counter (CPU)
    saved_source: str = ''
    counted_mb_per_sample: Optional[float] = None  # SavedBytesCounter, both devices
    static_mb: Optional[float] = None   # allocated before forward: weights, grads, state, input
    peak_mb: Optional[float] = None     # CUDA only
    images_per_s: Optional[float] = None
    iter_s: List[float] = field(default_factory=list)
    avg_bits: Optional[float] = None    # ActNN: average bits per compressed element
    last_loss: Optional[float] = None
    loss_finite: Optional[bool] = None  # every iteration's loss finite (read once, at the end)
    model_state_mb: Optional[float] = None  # parameters x 3 (weights, grads, momentum)
    note: str = ''
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct storages of the tensors in ``obj`` (nested dicts/lists/tuples)."""
    seen, total = set(), 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, Tensor):
            st = o.untyped_storage()
            key = (o.device, st.data_ptr())
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return total


def apply_method(method: Method, wl: Workload) -> Optional[BitAllocator]:
    """Change ``wl``'s model for ``method``; returns the ActNN bit allocator (step it per
    iteration, as ``ActNNHook`` does), else None."""
    if method.kind == 'ckpt':
        wl.apply_checkpoint(method.segments)
        return None
    if method.kind == 'actnn':
        cfg = CompressionConfig.from_level(method.level)
        alloc = BitAllocator(cfg)
        for part in wl.actnn_parts():
            convert(part, cfg, allocator=alloc)
        return alloc
    return None


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _settled_allocated(device: torch.device) -> int:
    """``memory_allocated`` after pending frees settle: blocks released with ``record_stream``
    (L4 swap) return to the allocator only once their events are processed, which the caching
    allocator does on its next allocation."""
    torch.cuda.synchronize(device)
    torch.empty(1, device=device)
    return torch.cuda.memory_allocated(device)


def _avg_bits(alloc: Optional[BitAllocator]) -> Optional[float]:
    if alloc is None:
        return None
    from actnn_mm.mm.stats import average_bits
    return round(average_bits(alloc.schemes, alloc.config), 3)


def run_config(model: str, method_name: str, batch: int, image_size: Sequence[int],
               device: torch.device, iters: int, warmup: int, measure_memory: bool = True,
               count_saved: bool = True,
               progress: Optional[Callable[[str], None]] = None) -> ConfigResult:
    """Build, convert, warm up, measure and time one configuration; never raises for OOM or a
    method failing (the result says so), so one bad method does not end a run."""
    t_start = time.perf_counter()
    method = parse_method(method_name)
    res = ConfigResult(model, method_name, batch, str(device))
    cuda = device.type == 'cuda'
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _run(res, method, model, batch, image_size, device, iters, warmup, measure_memory,
             count_saved)
    except Exception as exc:  # noqa: BLE001 (reported in the result)
        res.status = 'oom' if is_oom(exc) else 'error'
        lines = traceback.format_exception_only(type(exc), exc)
        res.error = lines[-1].strip()[:500]
        if res.status == 'error' and progress is not None:
            progress(''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:])
        del exc
    gc.collect()
    if cuda:
        if res.status == 'ok':
            res.peak_mb = round(torch.cuda.max_memory_allocated(device) / MB, 1)
        torch.cuda.empty_cache()
    res.seconds = round(time.perf_counter() - t_start, 2)
    return res


def _run(res: ConfigResult, method: Method, model: str, batch: int, image_size: Sequence[int],
         device: torch.device, iters: int, warmup: int, measure_memory: bool,
         count_saved: bool) -> None:
    cuda = device.type == 'cuda'
    wl = build_workload(model, batch, image_size, device)
    alloc = apply_method(method, wl)
    if method.bf16:
        wl.prepare_autocast()
    res.note = wl.checkpoint_note
    params = [p for p in wl.model.parameters() if p.requires_grad]
    res.model_state_mb = round(3 * sum(p.numel() * p.element_size() for p in params) / MB, 2)
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if method.bf16
           else contextlib.nullcontext())

    def forward() -> Any:
        with amp if method.bf16 else contextlib.nullcontext():
            return wl.forward()

    losses: List[Tensor] = []

    def finish(loss: Tensor) -> None:
        losses.append(loss.detach())
        loss.backward()  # also steps the bit allocator, at its end
        opt.step()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _, loss = forward()
        finish(loss)

    for _ in range(warmup):
        step()
    if cuda and warmup:
        # Steady-state peak: cudnn.benchmark's first-iteration algorithm search is left out.
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    if measure_memory and cuda:
        opt.zero_grad(set_to_none=True)
        before = _settled_allocated(device)
        out, loss = forward()  # autocast's weight-cast cache is freed on leaving the context
        after = _settled_allocated(device)
        held = after - before - tensor_bytes((out, loss))
        res.saved_mb_per_sample = round(held / batch / MB, 3)
        res.saved_source = 'cuda memory_allocated (before backward - before forward - outputs)'
        res.static_mb = round(before / MB, 1)
        del out
        finish(loss)
        del loss
    if count_saved:
        opt.zero_grad(set_to_none=True)
        with SavedBytesCounter(wl.model) as counter:
            _, loss = forward()
        res.counted_mb_per_sample = round(counter.total / batch / MB, 3)
        finish(loss)
        del loss
        if not cuda:
            res.saved_mb_per_sample = res.counted_mb_per_sample
            res.saved_source = 'SavedBytesCounter (bytes autograd keeps for backward)'
    times: List[float] = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if times:
        res.iter_s = [round(t, 5) for t in times]
        res.images_per_s = float(f'{batch / statistics.median(times):.4g}')
    res.avg_bits = _avg_bits(alloc)
    if losses:
        vals = torch.stack([v.float().reshape(()) for v in losses]).cpu()
        res.loss_finite = bool(torch.isfinite(vals).all())
        res.last_loss = round(float(vals[-1]), 5)
