"""The largest working set of one op in a training step: the transient a peak has on top of
the weights, optimizer state and saved activations.

Every op dispatched in forward and backward (Q-layers' decompression and gradient ops included)
is sized as the bytes of its tensor inputs that are not parameters, plus its outputs: what has
to exist at once while it runs. The largest is taken; it grows linearly with the batch.
"""
from __future__ import annotations

from typing import Any, Set, Tuple

from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ['LargestOpTracker']


def _key(t: Tensor) -> Tuple:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        ptr = id(t)
    return (ptr, t.storage_offset(), tuple(t.shape), t.dtype)


class LargestOpTracker(TorchDispatchMode):
    """``with LargestOpTracker(model) as t: step()`` then ``t.bytes``, ``t.op``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._params: Set[int] = set()
        for p in list(model.parameters()) + list(model.buffers()):
            self._params.add(p.untyped_storage().data_ptr())
        self.bytes = 0
        self.op = ''

    def _size(self, tensors: Any, seen: Set[Tuple]) -> int:
        n = 0
        for t in tensors:
            if not isinstance(t, Tensor) or t.device.type == 'meta':
                continue
            key = _key(t)
            if key in seen or key[0] in self._params:
                continue
            seen.add(key)
            n += t.numel() * t.element_size()
        return n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen: Set[Tuple] = set()
        n = self._size(tree_flatten((args, kwargs))[0], seen)
        inputs = {k[0] for k in seen}  # outputs that view or update an input add nothing
        n += self._size([t for t in tree_flatten(out)[0] if not isinstance(t, Tensor)
                         or _key(t)[0] not in inputs], seen)
        if n > self.bytes:
            self.bytes, self.op = n, str(func)
        return out
