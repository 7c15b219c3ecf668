"""L5: allocator defragmentation without a patched PyTorch, on CUDA and on CPU.

CUDA: the original L5 needed a patched PyTorch to defragment the CUDA caching allocator. Today
the allocator's ``expandable_segments`` mode serves the same purpose (segments grow in place
instead of leaving unusable holes). It is switched on at run time the first time an L5 scheme
sees a CUDA tensor; it then applies to memory allocated from then on, so setting
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` before the process starts is equivalent and
covers every allocation.

CPU: torch's CPU tensors come from glibc ``malloc``. Its mmap threshold is *dynamic*: freeing a
large mmapped block raises the threshold to that block's size (up to 32 MiB), so later
activations of that size come from the heap, and freed heap memory mostly stays with the process.
The peak RSS of a step then stays near the exact model's even when compression keeps 10x fewer
bytes. :func:`return_freed_cpu_memory` fixes the threshold (``M_MMAP_THRESHOLD`` = 64 KiB, which
also switches the dynamic adjustment off) and the trim threshold, so every large tensor is its
own mapping and goes back to the system when freed. Same as starting the process with
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=1048576``. It is applied the first time an
L5 scheme (``defrag=True``) sees a CPU tensor, and by ``tools/analyze_memory.py`` in every run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Optional

import torch

_LOCK = threading.Lock()
_ENABLED = False
_CPU_STATE: dict = {'applied': None}  # None: not tried; True/False: result

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks from this size on are mmapped (and unmapped on free); glibc's static default is 128 KiB.
CPU_MMAP_THRESHOLD = 64 * 1024
#: Free heap top above this is given back by ``free`` itself.
CPU_TRIM_THRESHOLD = 1024 * 1024


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


def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library('c')
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, 'mallopt') or not hasattr(libc, 'gnu_get_libc_version'):
        return None  # musl and others: no glibc mallopt semantics to rely on
    return libc


def return_freed_cpu_memory() -> bool:
    """Make glibc give freed large CPU blocks back to the system (once per process).

    Returns True when the settings are in effect (glibc found and both ``mallopt`` calls
    accepted), False elsewhere (another C library: nothing is changed).
    """
    if _CPU_STATE['applied'] is not None:
        return bool(_CPU_STATE['applied'])
    with _LOCK:
        if _CPU_STATE['applied'] is None:
            libc = _glibc()
            ok = libc is not None and \
                libc.mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD) == 1 and \
                libc.mallopt(M_TRIM_THRESHOLD, CPU_TRIM_THRESHOLD) == 1
            _CPU_STATE['applied'] = ok
    return bool(_CPU_STATE['applied'])


def trim_cpu_heap() -> bool:
    """``malloc_trim(0)``: hand free heap pages back now (after a step); False without glibc."""
    libc = _glibc()
    if libc is None or not hasattr(libc, 'malloc_trim'):
        return False
    libc.malloc_trim(0)
    return True


def cpu_memory_returned() -> bool:
    """Whether :func:`return_freed_cpu_memory` is in effect in this process."""
    return bool(_CPU_STATE['applied'])
