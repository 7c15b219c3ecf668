"""This process's resident memory: now, and its peak since the last reset (Linux /proc); and
whether an error is an out-of-memory one."""
from __future__ import annotations

import resource
from typing import Optional

import torch

__all__ = ['rss_bytes', 'reset_peak_rss', 'peak_rss_bytes', 'is_oom']


def is_oom(exc: BaseException) -> bool:
    """Out-of-memory errors, including those cuDNN/cuBLAS raise as plain RuntimeErrors."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ('out of memory', 'CUBLAS_STATUS_ALLOC_FAILED',
                           'CUDNN_STATUS_ALLOC_FAILED', 'std::bad_alloc'))


def _status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident set size now (``VmRSS``)."""
    kib = _status_kib('VmRSS')
    if kib is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False if unsupported
    (then :func:`peak_rss_bytes` is the peak since the process started)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (``VmHWM``)."""
    kib = _status_kib('VmHWM')
    if kib is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kib * 1024
