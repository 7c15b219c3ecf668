"""One level of an analysis: build the model, train two steps on a synthetic batch, measure.

Run in a fresh process per level by ``tools/analyze_memory.py`` (``python -m
actnn_mm.mm.analysis.level_run SPEC.json RESULT.json``), so each level's peak memory is its own;
:func:`run_level` is the same in-process (tests). The first step is a warm-up (optimizer state
allocated, bits allocated across layers as after a training iteration, the largest op's working
set recorded); the second is measured: what autograd keeps for backward per module, and the
peak. On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: the parameters, buffers and
optimizer state (their exact sizes, resident between steps) plus the step's peak-RSS increase
over the RSS just before it, with gradients freed as ``OptimWrapper.zero_grad`` leaves them,
``VmHWM`` reset and glibc set to return freed memory
(``engine.allocator_settings.return_freed_cpu_memory``). The raw peak RSS and the RSS of the
bare interpreter are in the result too; their difference is the libraries and code loaded to
build and run the model, which no batch size changes.
"""
from __future__ import annotations

import gc
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ['LevelSpec', 'Prepared', 'prepare', 'train_step', 'run_level', 'forward_loss',
           'optimizer_state_bytes', 'part_of']

EXACT = 'exact'


@dataclass
class LevelSpec:
    """What to run: a config, a level (``'exact'`` or ``'L0'``...``'L5'``) and the sizes."""

    config: str
    level: str
    batch: Optional[int] = None              # None: the config's train_dataloader.batch_size
    input_size: Optional[List[int]] = None   # None: from the train pipeline
    device: str = 'cpu'
    cfg_options: Optional[dict] = None
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Prepared:
    """A built model with its batch, optimizer and (for ActNN levels) hook."""

    cfg: Any
    model: nn.Module
    data: Dict[str, Any]
    optimizer: torch.optim.Optimizer
    task: str
    batch: int
    sizes: List[Tuple[int, int]]
    size_source: List[str]
    module_types: Dict[str, str]
    parts: List[str]
    hook: Any = None
    reports: Dict[str, Any] = field(default_factory=dict)
    removed_pretrained: List[str] = field(default_factory=list)


def part_of(module_name: str) -> str:
    """The model part a module belongs to: its first name component (``backbone``...)."""
    return module_name.split('.')[0] if module_name else '(model)'


def _actnn_options(cfg: Any) -> Dict[str, Any]:
    """The config's own ActNN settings (an ``actnn`` section or an ``ActNNHook`` entry)."""
    section = cfg.get('actnn')
    if isinstance(section, dict):
        return dict(section)
    for hook in cfg.get('custom_hooks') or []:
        if isinstance(hook, dict) and hook.get('type') == 'ActNNHook':
            return {k: v for k, v in hook.items() if k not in ('type', 'priority')}
    return {}


def _build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    from mmengine.registry import OPTIMIZERS
    wrapper = cfg.get('optim_wrapper') or {}
    opt_cfg = dict(wrapper.get('optimizer') or dict(type='SGD', lr=0.01, momentum=0.9))
    opt_cfg.pop('_scope_', None)
    opt_cfg['params'] = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.build(opt_cfg)


def _stand_in_for_the_loop(cfg: Any) -> None:
    """Give the message hub what a Runner's train loop puts there before the first step:
    models read it in ``loss`` (MoCo v3's cosine EMA momentum divides by ``max_iters``)."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    train_cfg = cfg.get('train_cfg') or {}
    max_iters = int(train_cfg.get('max_iters') or train_cfg.get('max_epochs') or 1)
    if hub.get_info('max_iters') is None:
        hub.update_info('max_iters', max_iters)
    if hub.get_info('iter') is None:
        hub.update_info('iter', 0)
    if hub.get_info('epoch') is None:
        hub.update_info('epoch', 0)


def prepare(spec: LevelSpec) -> Prepared:
    """Build the model (seeded: every level has the same weights), its batch and optimizer;
    convert the ActNN parts for ActNN levels."""
    from .input_size import override_input_size, train_batch_size, train_input_spec
    from .model_build import build_model, load_config, strip_pretrained, task_of
    from .synthetic import make_batch

    cfg = load_config(spec.config, spec.cfg_options)
    removed = strip_pretrained(cfg.model)
    _stand_in_for_the_loop(cfg)
    inputs = train_input_spec(cfg, spec.input_size)
    if spec.input_size:
        override_input_size(cfg, inputs.sizes[0])
    batch = int(spec.batch or train_batch_size(cfg))
    torch.manual_seed(spec.seed)
    model = build_model(cfg)
    device = torch.device(spec.device)
    model.to(device)
    model.train()
    task = task_of(model)
    data = make_batch(model, task, batch, inputs.sizes)
    module_types = {name: type(m).__name__ for name, m in model.named_modules()}
    optimizer = _build_optimizer(cfg, model)
    options = _actnn_options(cfg)
    parts = options.pop('parts', None) or ['model']
    parts = [parts] if isinstance(parts, str) else list(parts)
    prep = Prepared(cfg, model, data, optimizer, task, batch, list(inputs.sizes),
                    list(inputs.source), module_types, parts, removed_pretrained=removed)
    if spec.level != EXACT:
        from ..hook import ActNNHook
        options.pop('level', None)
        hook = ActNNHook(level=spec.level, parts=parts, **options)
        hook._model = model
        prep.reports = hook.convert(model)
        prep.hook = hook
    return prep


def forward_loss(model: nn.Module, data: Dict[str, Any]) -> Tuple[Dict[str, Any], Any]:
    """The training forward: the data preprocessor, then ``mode='loss'``; (losses, loss)."""
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    return losses, loss


def train_step(prep: Prepared, counter: Any = None) -> float:
    """One training iteration as mmengine's ``OptimWrapper`` runs it; returns the loss.

    ``counter`` (a ``SavedBytesCounter``) is entered around the model's forward only.
    """
    prep.optimizer.zero_grad(set_to_none=True)
    batch = prep.model.data_preprocessor(prep.data, True)
    if counter is not None:
        with counter:
            losses = prep.model(**batch, mode='loss')
    else:
        losses = prep.model(**batch, mode='loss')
    loss, _ = prep.model.parse_losses(losses)
    del losses, batch
    loss.backward()
    prep.optimizer.step()
    return float(loss.detach())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors the optimizer keeps per parameter (momentum, Adam moments)."""
    seen, n = set(), 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                key = (v.device, v.untyped_storage().data_ptr())
                if key not in seen:
                    seen.add(key)
                    n += v.untyped_storage().nbytes()
    return n


def _conversion(prep: Prepared) -> Dict[str, Any]:
    out = {}
    for part, rep in prep.reports.items():
        out[part] = dict(converted=rep.converted_types(), left=rep.skipped_reasons(),
                         functional=list(rep.functional), text=str(rep))
    return out


def _by(report: Any, key: Any) -> Dict[str, int]:
    return _by_names(report.by_module, key)


def _by_names(by_module: Dict[str, int], key: Any) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for name, n in by_module.items():
        k = key(name)
        out[k] = out.get(k, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_level(spec: LevelSpec) -> Dict[str, Any]:
    """Prepare, warm up, measure; a JSON-able dict of what was measured (bytes)."""
    from ...engine.allocator_settings import return_freed_cpu_memory, trim_cpu_heap
    from ...saved_bytes import SavedBytesCounter
    from .process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from .transient import LargestOpTracker

    t0 = time.perf_counter()
    device = torch.device(spec.device)
    cuda = device.type == 'cuda'
    returned = return_freed_cpu_memory() if not cuda else False
    gc.collect()
    rss_base = rss_bytes()
    prep = prepare(spec)
    model = prep.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    gc.collect()
    trim_cpu_heap()
    if cuda:
        torch.cuda.synchronize(device)
    # warm-up: optimizer state exists from here on, bits allocated across layers
    tracker = LargestOpTracker(model)
    with tracker:
        train_step(prep)
    # the measured step starts as a training iteration does: gradients freed (mmengine's
    # ``OptimWrapper.zero_grad``), so they are counted as they are allocated in backward
    prep.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    trim_cpu_heap()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        static_measured = torch.cuda.memory_allocated(device)
    peak_reset = reset_peak_rss() if not cuda else False
    rss_before_step = rss_bytes()
    counter = SavedBytesCounter(model)
    loss = train_step(prep, counter)
    if cuda:
        torch.cuda.synchronize(device)
    rep = counter.report
    types = prep.module_types
    result: Dict[str, Any] = dict(
        spec=spec.to_dict(), level=spec.level, task=prep.task, model=type(model).__name__,
        batch=prep.batch, input_sizes=[list(s) for s in prep.sizes],
        input_size_source=prep.size_source, parts_converted=prep.parts,
        removed_pretrained=prep.removed_pretrained,
        optimizer=type(prep.optimizer).__name__,
        optim_wrapper=str((prep.cfg.get('optim_wrapper') or {}).get('type', 'OptimWrapper')),
        param_bytes=param_bytes, trainable_param_bytes=grad_bytes, buffer_bytes=buffer_bytes,
        optimizer_state_bytes=optimizer_state_bytes(prep.optimizer),
        saved_bytes=rep.total, saved_by_part=_by(rep, part_of),
        saved_by_type=_by(rep, lambda n: types.get(n, '?')),
        saved_by_kind=dict(rep.by_kind), saved_objects=rep.count,
        exact_by_part=_by_names(rep.exact_by_module, part_of),
        exact_by_type=_by_names(rep.exact_by_module, lambda n: types.get(n, '?')),
        saved_by_module={k: v for k, v in sorted(rep.by_module.items(), key=lambda kv: -kv[1])},
        transient_bytes=tracker.bytes, transient_op=tracker.op,
        loss=loss, loss_finite=math.isfinite(loss), conversion=_conversion(prep),
        device=str(device), torch=torch.__version__)
    if cuda:
        result.update(cuda_static_bytes=static_measured,
                      cuda_peak_bytes=torch.cuda.max_memory_allocated(device),
                      cuda_device=torch.cuda.get_device_name(device))
    else:
        peak = peak_rss_bytes()
        resident = param_bytes + buffer_bytes + result['optimizer_state_bytes']
        result.update(rss_base_bytes=rss_base, rss_before_step_bytes=rss_before_step,
                      rss_peak_bytes=peak, rss_peak_above_base_bytes=peak - rss_base,
                      rss_step_increase_bytes=peak - rss_before_step,
                      # the measured step's RSS increase (activations, gradients as backward
                      # allocates them, transients) on top of what is resident between steps
                      # whatever the batch (weights, buffers, optimizer state)
                      rss_measured_peak_bytes=resident + peak - rss_before_step,
                      rss_peak_is_step=peak_reset, cpu_memory_returned=returned,
                      threads=torch.get_num_threads())
    result['seconds'] = round(time.perf_counter() - t0, 2)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print('usage: python -m actnn_mm.mm.analysis.level_run SPEC.json RESULT.json',
              file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = LevelSpec(**json.load(f))
    try:
        result = run_level(spec)
    except Exception as exc:  # noqa: BLE001  (reported to the parent with the traceback)
        from .process_memory import is_oom
        result = dict(level=spec.level, status='oom' if is_oom(exc) else 'error',
                      error=''.join(traceback.format_exception(type(exc), exc,
                                                               exc.__traceback__))[-4000:])
    else:
        result['status'] = 'ok'
    with open(args[1], 'w') as f:
        json.dump(result, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
