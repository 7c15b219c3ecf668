"""Step a model's :class:`~actnn_mm.engine.BitAllocator` at the end of every backward through it.

Why from the backward: cross-layer mixed precision needs one ``step()`` per training iteration,
after the backward has added the gradient statistics the solve reads. A step the caller has to
remember is a step that gets forgotten (the layers then keep their initial bits forever, with
no error). Instead each converted part carries a forward hook; a training forward whose outputs
require grad registers a one-shot gradient hook on them, which queues ``allocator.step()`` to
run when that backward finishes. Several parts sharing one allocator (the hook's backbone and
neck), or a part run twice in one forward, step it once per backward: one step per graph task.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, List, Optional

import torch
from torch import Tensor, nn

from .engine import BitAllocator

__all__ = ['install_auto_step', 'remove_auto_step', 'auto_stepped']


class _BackwardStepper:
    """One per allocator: queues ``allocator.step()`` at the end of a backward, once per backward.

    The backward is told apart by autograd's graph-task id, so a backward that failed before its
    end leaves nothing behind that could block the next one's step.
    """

    def __init__(self, allocator: BitAllocator) -> None:
        self.allocator = allocator
        self._last_task: Optional[int] = None
        self._lock = threading.Lock()

    def on_grad(self, *_: Any) -> None:
        task = torch._C._current_graph_task_id()
        with self._lock:
            if task == self._last_task:
                return
            self._last_task = task
        torch.autograd.Variable._execution_engine.queue_callback(self.allocator.step)


_STEPPERS: 'weakref.WeakKeyDictionary[BitAllocator, _BackwardStepper]' = \
    weakref.WeakKeyDictionary()
_STEPPERS_LOCK = threading.Lock()


def _stepper(allocator: BitAllocator) -> _BackwardStepper:
    with _STEPPERS_LOCK:
        stepper = _STEPPERS.get(allocator)
        if stepper is None:
            stepper = _STEPPERS[allocator] = _BackwardStepper(allocator)
        return stepper


def _grad_outputs(out: Any) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _grad_outputs(o)]
    return []


class _StepAfterBackward:
    """Forward hook: the backward through this training forward's outputs steps the allocator.

    Pickled and deep-copied inert (``torch.save(model)``, MoCo's key encoder): a copy's
    Q-layers build fresh schemes that this allocator does not own.
    """

    def __init__(self, allocator: Optional[BitAllocator]) -> None:
        self.stepper = _stepper(allocator) if allocator is not None else None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.stepper = None

    @property
    def allocator(self) -> Optional[BitAllocator]:
        return self.stepper.allocator if self.stepper is not None else None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stepper is None or not module.training or not torch.is_grad_enabled():
            return
        outputs = _grad_outputs(output)
        if outputs:
            torch.autograd.graph.register_multi_grad_hook(outputs, self.stepper.on_grad,
                                                          mode='any')


def auto_stepped(module: nn.Module) -> Optional[BitAllocator]:
    """The allocator that backwards through ``module`` step, if any."""
    for hook in module._forward_hooks.values():
        if isinstance(hook, _StepAfterBackward):
            return hook.allocator
    return None


def install_auto_step(module: nn.Module, allocator: BitAllocator) -> None:
    """Make every training backward through ``module`` step ``allocator`` (idempotent; a module
    stepping another allocator is switched to this one)."""
    if not isinstance(allocator, BitAllocator):
        raise ValueError(f'allocator must be a BitAllocator, got {type(allocator).__name__}')
    if auto_stepped(module) is allocator:
        return
    remove_auto_step(module)
    module.register_forward_hook(_StepAfterBackward(allocator))


def remove_auto_step(module: nn.Module) -> bool:
    """Undo :func:`install_auto_step`; whether it was installed."""
    hooks = module._forward_hooks
    ids = [k for k, h in hooks.items() if isinstance(h, _StepAfterBackward)]
    for k in ids:
        del hooks[k]
    return bool(ids)
