"""Run a module's forward inside :class:`~actnn_mm.saved_tensors.compress_saved_tensors`.

What :func:`actnn_mm.convert` does by default: a forward pre-hook enters the module's context
when the forward will save tensors (training, grad enabled), a forward hook (``always_call``)
leaves it. The hooks are plain picklable objects, so ``copy.deepcopy`` and ``torch.save`` work.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .engine import CompressionConfig
from .keep_exact import remove_hooks, remove_keep_exact, run_eagerly
from .saved_tensors import compress_saved_tensors

__all__ = ['install', 'uninstall', 'installed']


class _EnterHook:
    """Forward pre-hook: enter the context when this forward will save tensors."""

    def __init__(self, ctx: compress_saved_tensors) -> None:
        self.ctx = ctx
        self.entered = threading.local()

    def __getstate__(self) -> Dict[str, Any]:
        return {'ctx': self.ctx}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state['ctx'])

    def _stack(self) -> List[bool]:
        stack = getattr(self.entered, 'stack', None)
        if stack is None:
            stack = self.entered.stack = []
        return stack

    @run_eagerly
    def __call__(self, module: nn.Module, args: Any) -> None:
        enter = module.training and torch.is_grad_enabled()
        if enter:
            self.ctx.enter([module])
        self._stack().append(enter)


class _ExitHook:
    """Forward hook (``always_call``): leave the context entered by the matching pre-hook."""

    def __init__(self, enter_hook: _EnterHook) -> None:
        self.enter_hook = enter_hook

    @run_eagerly
    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self.enter_hook._stack()
        if stack and stack.pop():
            self.enter_hook.ctx.exit()


def install(module: nn.Module, config: Optional[CompressionConfig] = None,
            allocator: Optional[Any] = None) -> compress_saved_tensors:
    """Run ``module``'s forward inside :class:`compress_saved_tensors` (training + grad only).

    Idempotent: a module that has it keeps its context (returned). Nothing is added to the
    module's parameters, buffers or ``state_dict``; :func:`uninstall` removes it. The hooks are
    plain picklable objects, so ``copy.deepcopy`` (MoCo's key encoder) and ``torch.save`` work.
    """
    ctx = installed(module)
    if ctx is not None:
        return ctx
    ctx = compress_saved_tensors(config, allocator=allocator)
    enter = _EnterHook(ctx)
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(_ExitHook(enter), always_call=True)
    return ctx


def uninstall(module: nn.Module) -> bool:
    """Undo :func:`install` and :func:`~actnn_mm.keep_exact.keep_exact`; returns whether
    something was installed."""
    found = remove_hooks(module, (_EnterHook, _ExitHook))
    return remove_keep_exact(module) or found


def installed(module: nn.Module) -> Optional[compress_saved_tensors]:
    """The context installed on ``module``, if any."""
    for h in module._forward_pre_hooks.values():
        if isinstance(h, _EnterHook):
            return h.ctx
    return None
