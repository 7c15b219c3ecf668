"""Count the bytes autograd keeps for backward, per module and in total, without a GPU.

``torch.cuda.memory_allocated`` is how ActNN measured activation memory; on CPU (and in unit
tests) we count instead what is *saved*: every tensor autograd saves (seen through
``saved_tensors_hooks``), each storage once, parameters and buffers excluded; plus every
compressed object the Q-layers and :class:`~actnn_mm.saved_tensors.compress_saved_tensors` keep
(their ``nbytes``), each object once. Run the same forward with an exact and a converted model to
get the compression ratio::

    exact = measure_saved_bytes(model, x)
    convert(model, config=CompressionConfig.from_level('L3'))
    compressed = measure_saved_bytes(model, x)
    print(exact.total / compressed.total, compressed.table())
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from .param_like import is_param_like, param_storages, storage_ptr

__all__ = ['SavedBytesCounter', 'SavedBytesReport', 'measure_saved_bytes', 'record']

_local = threading.local()


def _active() -> List['SavedBytesCounter']:
    stack = getattr(_local, 'counters', None)
    if stack is None:
        stack = _local.counters = []
    return stack


#: Why a plain tensor reached the counter's own hook: nothing compressed it.
OUTSIDE = 'saved outside a compression context'


def record(obj: Any, why: Optional[str] = None) -> None:
    """Report something kept for backward to the active counters (cheap no-op without one).

    Called by the Q-layers for what they keep on ``ctx`` and by the saved-tensor pack hook for
    what it returns; tensors saved through ``save_for_backward`` reach the counter's own hook.
    ``why``: for a tensor kept exact, the reason (``exact_by_reason``).
    """
    stack = getattr(_local, 'counters', None)
    if stack:
        for counter in stack:
            counter.add(obj, why)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.untyped_storage().nbytes()
    n = getattr(obj, 'nbytes', None)
    if n is None:
        raise TypeError(f'cannot size a saved object of type {type(obj).__name__}')
    return int(n() if callable(n) else n)


@dataclass
class SavedBytesReport:
    """Bytes kept for backward: ``total``, per module (innermost running module) and per kind;
    ``exact_by_module``: the part of ``by_module`` kept as plain (uncompressed) tensors;
    ``exact_by_reason``: the same bytes by why they stayed exact (the pack hook's reason, e.g.
    ``'exact op: div'`` or ``'no grad (data)'``)."""

    total: int = 0
    by_module: Dict[str, int] = field(default_factory=dict)
    by_kind: Dict[str, int] = field(default_factory=dict)
    count: int = 0
    exact_by_module: Dict[str, int] = field(default_factory=dict)
    exact_by_reason: Dict[str, int] = field(default_factory=dict)

    def mb(self) -> float:
        return self.total / 2**20

    def by_prefix(self, depth: int = 1) -> Dict[str, int]:
        """Totals aggregated over module-name prefixes of ``depth`` components."""
        out: Dict[str, int] = defaultdict(int)
        for name, n in self.by_module.items():
            out['.'.join(name.split('.')[:depth]) if name else '(root)'] += n
        return dict(out)

    def table(self, depth: int = 2, top: int = 20) -> str:
        rows = sorted(self.by_prefix(depth).items(), key=lambda kv: -kv[1])[:top]
        width = max([len(k) for k, _ in rows] + [6])
        lines = [f'{"module":<{width}}  {"MiB":>10}']
        lines += [f'{k:<{width}}  {v / 2**20:>10.3f}' for k, v in rows]
        lines.append(f'{"total":<{width}}  {self.mb():>10.3f}  ({self.count} objects; ' +
                     ', '.join(f'{k} {v / 2**20:.3f}' for k, v in sorted(self.by_kind.items()))
                     + ')')
        return '\n'.join(lines)


class SavedBytesCounter:
    """Context manager counting what autograd keeps for backward in the enclosed forward.

    Args:
        model: its parameters and buffers are not counted, and its submodules name the
            per-module entries (innermost module running when the tensor was saved).
        keep_objects: keep the compressed objects counted in ``objects`` after exit (to
            inspect bits or metadata; holds their memory).
    """

    def __init__(self, model: Optional[nn.Module] = None, keep_objects: bool = False) -> None:
        self.model = model
        self.keep_objects = keep_objects
        self.objects: List[Any] = []
        self.report = SavedBytesReport()
        self._seen: Dict[Any, Any] = {}
        self._stack: List[str] = []
        self._handles: List[Any] = []
        self._storages: set = set()
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    @property
    def total(self) -> int:
        return self.report.total

    @property
    def by_module(self) -> Dict[str, int]:
        return self.report.by_module

    @property
    def by_kind(self) -> Dict[str, int]:
        return self.report.by_kind

    def add(self, obj: Any, why: Optional[str] = None) -> None:
        if isinstance(obj, Tensor):
            if is_param_like(obj, self._storages):
                return
            storage = obj.untyped_storage()
            key = ('storage', obj.device, storage_ptr(obj))
            kind = 'exact'
            keep: Any = storage
        else:
            key = ('object', id(obj))
            kind = type(obj).__name__
            keep = obj
        if key in self._seen:
            return
        self._seen[key] = keep  # held until exit: addresses stay unique while counting
        if self.keep_objects and not isinstance(obj, Tensor):
            self.objects.append(obj)
        n = _nbytes(obj)
        rep = self.report
        name = self._stack[-1] if self._stack else ''
        rep.total += n
        rep.count += 1
        rep.by_module[name] = rep.by_module.get(name, 0) + n
        rep.by_kind[kind] = rep.by_kind.get(kind, 0) + n
        if kind == 'exact':
            rep.exact_by_module[name] = rep.exact_by_module.get(name, 0) + n
            why = why or OUTSIDE
            rep.exact_by_reason[why] = rep.exact_by_reason.get(why, 0) + n

    # -- hooks --------------------------------------------------------------------------------
    def _pack(self, t: Tensor) -> Tensor:
        self.add(t)
        return t

    def _push_hook(self, name: str) -> Callable[..., None]:
        def push(module: nn.Module, args: Any) -> None:
            self._stack.append(name)
        return push

    def _pop_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __enter__(self) -> 'SavedBytesCounter':
        if self.model is not None:
            self._storages = param_storages([self.model])
            for name, m in self.model.named_modules():
                self._handles.append(m.register_forward_pre_hook(self._push_hook(name)))
                self._handles.append(m.register_forward_hook(self._pop_hook, always_call=True))
        # Bottom of the saved-tensor hook stack: sees every saved tensor no other hook handles.
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        _active().append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _active().remove(self)
        self._hooks.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()
        self._stack.clear()


def measure_saved_bytes(model: nn.Module, *args: Any,
                        forward: Optional[Callable[..., Any]] = None,
                        backward: bool = True, **kwargs: Any) -> SavedBytesReport:
    """Run one training forward of ``model`` and count what autograd keeps for backward.

    ``forward(model, *args, **kwargs)`` defaults to ``model(*args, **kwargs)``; with
    ``backward=True`` a backward of the sum of the outputs follows (frees the graph and checks
    that what was kept is usable).
    """
    was_training = model.training
    model.train()
    try:
        with SavedBytesCounter(model) as counter:
            out = forward(model, *args, **kwargs) if forward else model(*args, **kwargs)
        if backward:
            loss = sum(t.float().sum() for t in _tensors(out) if t.requires_grad)
            if isinstance(loss, Tensor):
                loss.backward()
    finally:
        model.train(was_training)
    return counter.report


def _tensors(out: Any) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []
