"""Modules whose saved tensors saved-tensor compression must leave alone (e.g. the norm layers
a level keeps exact: L1), marked by a pair of forward hooks around their forward."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

import torch
from torch import nn

__all__ = ['keep_exact', 'remove_keep_exact', 'in_exact_module', 'exact_scope', 'exact_reason',
           'run_eagerly', 'remove_hooks']

_EXACT = threading.local()


def _reasons() -> List[str]:
    """The open exact scopes and modules, innermost last: why saves stay exact now."""
    reasons = getattr(_EXACT, 'reasons', None)
    if reasons is None:
        reasons = _EXACT.reasons = []
    return reasons


def run_eagerly(fn: Any) -> Any:
    """A forward (pre-)hook run eagerly under ``torch.compile``: entering and leaving the
    compression context or an exact scope (thread-local state, saved-tensor hooks) happens at
    run time, between the compiled graphs, whose saved tensors then go through the pack hook
    like eager ones."""
    return torch.compiler.disable(fn, recursive=True)


class _ExactEnter:
    """Forward pre-hook of a module whose saved tensors must stay exact."""

    @run_eagerly
    def __call__(self, module: nn.Module, args: Any) -> None:
        _reasons().append(f'kept-exact module ({type(module).__name__})')


class _ExactExit:
    """Forward hook (``always_call``) closing :class:`_ExactEnter`."""

    @run_eagerly
    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        reasons = _reasons()
        if reasons:
            reasons.pop()


def keep_exact(module: nn.Module) -> None:
    """Let saved-tensor compression leave alone what ``module``'s forward saves (e.g. the norm
    layers a level keeps exact: L1). Idempotent; :func:`remove_keep_exact` removes it."""
    if any(isinstance(h, _ExactEnter) for h in module._forward_pre_hooks.values()):
        return
    module.register_forward_pre_hook(_ExactEnter())
    module.register_forward_hook(_ExactExit(), always_call=True)


def remove_hooks(module: nn.Module, kinds: Tuple[type, ...]) -> bool:
    """Remove ``module``'s forward (pre-)hooks that are instances of ``kinds``; whether any was."""
    found = False
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for hid in [k for k, h in hooks.items() if isinstance(h, kinds)]:
            del hooks[hid]
            getattr(module, '_forward_hooks_always_called', {}).pop(hid, None)
            found = True
    return found


def remove_keep_exact(module: nn.Module) -> bool:
    """Undo :func:`keep_exact`; whether it was there."""
    return remove_hooks(module, (_ExactEnter, _ExactExit))


def in_exact_module() -> bool:
    """Whether the forward running now is inside a module marked by :func:`keep_exact`."""
    return bool(_reasons())


def exact_reason() -> str:
    """Why what is saved now stays exact: the innermost exact scope's or module's reason."""
    reasons = _reasons()
    return reasons[-1] if reasons else 'kept-exact scope'


@contextmanager
def exact_scope(why: str = 'kept-exact scope') -> Iterator[None]:
    """What is saved inside stays exact, as inside a :func:`keep_exact` module; ``why`` is what
    the saved-bytes counters report it under."""
    reasons = _reasons()
    reasons.append(why)
    try:
        yield
    finally:
        reasons.pop()
