"""Keep a tensor once for backward, however many savers of the same graph ask for it.

A tensor saved by several layers (ResNet's block input feeds ``conv1`` and ``downsample``) is
compressed once and the copy shared; one a layer keeps exact (L1 norms) is reused exactly by the
others, which then cost nothing. The cache that makes this possible is keyed by storage, geometry
and version, and its entries die with the tensor and with what kept it.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .param_like import storage_ptr

__all__ = ['share', 'mark_exact', 'sample_view', 'Saved', 'ShareCache', 'CACHE', 'EXACT',
           'MIN_SAMPLE_FEATURES']

#: Cache value meaning "a layer keeps this tensor exact": later savers reuse it for free.
EXACT = object()

def _key(t: Tensor) -> Tuple:
    return (storage_ptr(t), t.device, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype,
            t._version)


class ShareCache:
    """tensor -> what was kept of it, for as long as sharing it is valid and useful.

    The key holds the storage address, geometry and version counter; an entry is valid while
    its *anchor* (the tensor, or the base it views) lives, so the address cannot have been
    reused, and while its *holder* lives: the compressed object itself, or the autograd node that
    keeps the tensor exact. Once the graph that kept it is freed (after backward) the entry is
    gone: the next iteration compresses afresh even when the input tensor is the same object.
    """

    def __init__(self) -> None:
        self._entries: Dict[Tuple, Tuple[weakref.ref, Optional[weakref.ref], Any]] = {}
        self._lock = threading.Lock()

    def get(self, t: Tensor) -> Any:
        entry = self._entries.get(_key(t))
        if entry is None or entry[0]() is None:
            return None
        if entry[1] is not None:
            holder = entry[1]()
            if holder is None:
                return None
            return holder if entry[2] is None else entry[2]
        return entry[2]

    def put(self, t: Tensor, value: Any = None, holder: Any = None) -> None:
        """Share ``value`` (or, when None, ``holder`` itself) while ``t`` and ``holder`` live."""
        key = _key(t)
        entries, lock = self._entries, self._lock

        def drop(ref: weakref.ref, key: Tuple = key) -> None:
            with lock:
                current = entries.get(key)
                if current is not None and ref in (current[0], current[1]):
                    del entries[key]

        # A view made inside an op (matmul's flattening reshape) dies right after being saved:
        # anchor the entry to its base, which lives as long as the memory can be shared.
        anchor = t._base if t._base is not None else t
        holder_ref = weakref.ref(holder, drop) if holder is not None else None
        with lock:
            entries[key] = (weakref.ref(anchor, drop), holder_ref, value)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Saved:
    """A compressed tensor as kept for backward: the engine object, the scheme that made it (its
    ``decompress`` is the inverse) and, when it was compressed as a reshaped view, the shape."""

    __slots__ = ('packed', 'scheme', 'shape', '__weakref__')

    def __init__(self, packed: Any, scheme: Any, shape: Optional[torch.Size] = None) -> None:
        self.packed, self.scheme, self.shape = packed, scheme, shape

    def unpack(self) -> Tensor:
        if self.scheme is None:  # made exact by :meth:`keep_exact`
            return self.packed
        out = self.scheme.decompress(self.packed)
        return out if self.shape is None else out.reshape(self.shape)

    def keep_exact(self, t: Tensor) -> None:
        """Give up the compressed copy for ``t`` itself: another saver keeps ``t`` exact, so it
        stays in memory anyway, and an op whose backward is ill-conditioned in ``t``'s values
        (a sigmoid's ``p * (1 - p)`` before a cross-entropy that divides by it) must not see
        ``t`` rounded by one saver and exact by the other."""
        self.packed, self.scheme, self.shape = t, None, None


#: A sample (dim 0) holding fewer features than this is regrouped with the others: tensors that
#: matmul/linear save as flattened token matrices ``(B*L, C)`` would otherwise pad every row of
#: ``C < group_size`` features to a whole group and pay its metadata.
MIN_SAMPLE_FEATURES = 1024


def sample_view(t: Tensor) -> Tensor:
    """``t`` as the engine should see it: samples along dim 0, or one sample when rows are small."""
    if t.dim() >= 2 and t.shape[0] > 1 and t.numel() // t.shape[0] < MIN_SAMPLE_FEATURES:
        return t.reshape(1, -1)
    return t


#: The one cache of the process: Q-layers and saved-tensor contexts share through it.
CACHE = ShareCache()


def mark_exact(t: Tensor, holder: Any = None) -> None:
    """``t`` is kept exact (while ``holder`` lives, or ``t``): every other saver of it, earlier
    (its compressed copy is given up: :meth:`Saved.keep_exact`) or later, uses the exact
    tensor, which costs no more memory."""
    hit = CACHE.get(t)
    if isinstance(hit, Saved):
        hit.keep_exact(t)
    if hit is not EXACT or holder is not None:
        CACHE.put(t, EXACT, holder=holder)


def share(x: Tensor, scheme: Any, exact: Optional[bool] = None, owner: Any = None,
          regroup: bool = False, affine: Any = None) -> Any:
    """Keep ``x`` for backward once, however many savers of the same graph ask for it.

    Returns ``x`` (keep it exact: ``save_for_backward`` it) or a :class:`Saved` (``.unpack()`` in
    backward). ``scheme.compress(x)`` runs only when no live saver kept ``x``. A saver that must
    stay exact (``exact=True``; ``owner``: its autograd ctx, which bounds the sharing) keeps ``x``
    and later savers reuse it; one that would compress reuses an exact ``x`` kept by another
    saver (that costs no memory) or the compressed copy another saver made. With ``affine``
    the compressed copy is of the transformed x (a norm layer's normalised input): it is neither
    looked up nor offered to other savers.
    """
    if affine is not None and not exact:
        packed = scheme.compress(x, affine)
        if packed is x:
            if owner is not None:
                CACHE.put(x, EXACT, holder=owner)
            return x
        return Saved(packed, scheme)
    if exact:
        if owner is not None:
            mark_exact(x, owner)
        return x
    hit = CACHE.get(x)
    if hit is EXACT:
        return x
    if hit is not None:
        return hit
    view = sample_view(x) if regroup else x
    packed = scheme.compress(view)
    if packed is view:
        if owner is not None:
            CACHE.put(x, EXACT, holder=owner)
        return x
    saved = Saved(packed, scheme, None if view is x else x.shape)
    CACHE.put(x, holder=saved)
    return saved
