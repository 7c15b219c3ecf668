"""Compatibility fixes for the pinned OpenMMLab stack on current PyTorch, applied on import.

1. **Checkpoints** (torch >= 2.6 loads with ``weights_only=True`` by default). mmengine 0.10.7
   calls ``torch.load`` without ``weights_only`` and its checkpoints carry a few non-tensor
   objects: ``HistoryBuffer`` (message hub state), numpy arrays, scalars and dtypes inside it, and
   the buffer's statistics methods, pickled as ``getattr(HistoryBuffer, 'mean')``. We allow
   exactly those in torch's safe unpickler (``add_safe_globals``); ``getattr`` is replaced by a
   function that only looks up HistoryBuffer's statistics methods. Safe loading stays on, so a
   checkpoint carrying any other pickled object is still refused by torch.
2. **pkg_resources**: mmengine 0.10.7 resolves ``mmdet::``/``mmseg::`` base configs through
   ``pkg_resources``, which setuptools >= 82 no longer ships; we warn early with the fix.

The numpy 2 breakage of ``mmcv.image.adjust_hue`` is handled by pinning ``numpy<2``
(``requirements/stack.txt``); ``tests/test_compat.py`` checks the pin still holds.
"""
from __future__ import annotations

import importlib
import importlib.util
import pickle
import warnings
from typing import List

import numpy as np
import torch

_APPLIED = False


def mmengine_checkpoint_globals() -> List[object]:
    """The classes and functions an mmengine 0.10.7 checkpoint needs to unpickle."""
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed: List[object] = [HistoryBuffer, np.ndarray, np.dtype]
    # numpy arrays and scalars pickle through these reconstructors; the module is
    # numpy.core.multiarray in numpy 1.x and numpy._core.multiarray in numpy 2.
    for modname in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            multiarray = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(multiarray, '_reconstruct'):
            allowed += [multiarray._reconstruct, multiarray.scalar]
            break
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (np.dtypes.Float64DType...).
    dtypes_mod = getattr(np, 'dtypes', None)
    if dtypes_mod is not None:
        allowed += [getattr(dtypes_mod, name) for name in dir(dtypes_mod)
                    if name.endswith('DType') and isinstance(getattr(dtypes_mod, name), type)]
    return allowed


def _history_buffer_getattr(owner: object, name: str) -> object:
    """Stand-in for ``builtins.getattr`` while unpickling: only HistoryBuffer's statistics."""
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if owner is not HistoryBuffer or name not in allowed:
        raise pickle.UnpicklingError(
            f'actnn_mm: refusing getattr({owner!r}, {name!r}) while loading a checkpoint: only '
            f'HistoryBuffer statistics methods {sorted(allowed)} are allowed')
    return getattr(owner, name)


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine-written checkpoints, nothing more."""
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4: no safe default
        return
    torch.serialization.add_safe_globals(
        mmengine_checkpoint_globals() + [(_history_buffer_getattr, 'builtins.getattr')])


def warn_if_pkg_resources_missing() -> None:
    if importlib.util.find_spec('pkg_resources') is None:
        warnings.warn(
            "actnn_mm: 'pkg_resources' is missing (setuptools >= 82), so mmengine 0.10.7 cannot "
            "resolve 'mmdet::'/'mmseg::'/'mmpretrain::' base configs. Fix: "
            "pip install 'setuptools<82'", RuntimeWarning, stacklevel=3)


def apply() -> None:
    """Apply every fix once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    if importlib.util.find_spec('mmengine') is not None:
        allow_mmengine_checkpoints()
        warn_if_pkg_resources_missing()
    _APPLIED = True


apply()
