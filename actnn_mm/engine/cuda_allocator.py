"""L5: allocator defragmentation without a patched PyTorch.

The original L5 needed a patched PyTorch to defragment the CUDA caching allocator. Today the
allocator's ``expandable_segments`` mode serves the same purpose (segments grow in place instead
of leaving unusable holes). It is switched on at run time the first time an L5 scheme sees a
CUDA tensor; it then applies to memory allocated from then on, so setting
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` before the process starts is equivalent and
covers every allocation. Without CUDA it is a no-op.
"""
from __future__ import annotations

import threading

import torch

_LOCK = threading.Lock()
_ENABLED = False


def enable_expandable_segments() -> bool:
    """Turn on ``expandable_segments`` once per process; True if it is (now) on."""
    global _ENABLED
    if _ENABLED:
        return True
    if not torch.cuda.is_available():
        return False
    with _LOCK:
        if not _ENABLED:
            torch.cuda.memory._set_allocator_settings('expandable_segments:True')
            _ENABLED = True
    return True


def expandable_segments_enabled() -> bool:
    return _ENABLED
