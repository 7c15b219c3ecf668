"""L4: compressed activations offloaded to pinned host memory, prefetched back for backward.

Forward: after a layer compresses, its payload/metadata are copied device -> pinned host on a side
stream (which first waits for the compute stream), and the device copies are released (their
memory is reused only after the side stream's copy, thanks to ``record_stream``).
Backward: ``decompress`` fetches the tensors back (host -> device on the side stream; the
compute stream waits on an event, never the host) and starts prefetching the next ones in
backward order (the most recent offloads still on the host), so copies overlap compute.
On CPU tensors the swapper does nothing: the payload already lives in host memory.
"""
from __future__ import annotations

import threading
import weakref
from typing import Dict, List, Optional

import torch

from .compressed import CompressedTensor


class _SwapState:
    __slots__ = ('host', 'device_tensors', 'd2h_event', 'h2d_event', '__weakref__')

    def __init__(self, host: List[Optional[torch.Tensor]], d2h_event: torch.cuda.Event) -> None:
        self.host = host
        self.device_tensors: Optional[List[Optional[torch.Tensor]]] = None
        self.d2h_event = d2h_event
        self.h2d_event: Optional[torch.cuda.Event] = None


class Swapper:
    """Offloads ``CompressedTensor`` payloads to pinned memory and prefetches them back."""

    def __init__(self, prefetch_depth: int = 2) -> None:
        self.prefetch_depth = prefetch_depth
        self._streams: Dict[int, torch.cuda.Stream] = {}
        self._pending: List[weakref.ref] = []  # offloaded tensors in forward order
        self._lock = threading.Lock()

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self._streams:
            self._streams[idx] = torch.cuda.Stream(device=idx)
        return self._streams[idx]

    def offload(self, c: CompressedTensor) -> CompressedTensor:
        """Move ``c``'s tensors to pinned host memory (no-op for CPU tensors or raw storage)."""
        if c.device.type != 'cuda' or c.is_raw or c.swap is not None:
            return c
        side = self._stream(c.device)
        side.wait_stream(torch.cuda.current_stream(c.device))
        host: List[Optional[torch.Tensor]] = []
        with torch.cuda.stream(side):
            for t in c.tensors():
                if t is None:
                    host.append(None)
                    continue
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                h.copy_(t, non_blocking=True)
                t.record_stream(side)
                host.append(h)
            ev = torch.cuda.Event()
            ev.record(side)
        state = _SwapState(host, ev)
        self._set(c, host)
        c.swap = self
        c._swap_state = state  # type: ignore[attr-defined]
        with self._lock:
            if len(self._pending) > 4096:  # forward passes without backward: drop dead entries
                self._pending = [r for r in self._pending if r() is not None]
            self._pending.append(weakref.ref(c))
        return c

    @staticmethod
    def _set(c: CompressedTensor, tensors: List[Optional[torch.Tensor]]) -> None:
        payload, meta, bits, offsets = tensors
        c.payload, c.meta, c.offsets = payload, meta, offsets
        if bits is not None:
            c.bits = bits

    def prefetch(self, c: CompressedTensor) -> None:
        """Start copying ``c`` back to its device (asynchronous, side stream)."""
        state: _SwapState = getattr(c, '_swap_state', None)
        if state is None or state.device_tensors is not None:
            return
        side = self._stream(c.device)
        side.wait_event(state.d2h_event)
        dev: List[Optional[torch.Tensor]] = []
        with torch.cuda.stream(side):
            for h in state.host:
                dev.append(None if h is None else h.to(c.device, non_blocking=True))
            ev = torch.cuda.Event()
            ev.record(side)
        state.device_tensors, state.h2d_event = dev, ev

    def fetch(self, c: CompressedTensor) -> None:
        """Make ``c``'s tensors device-resident for the current stream; prefetch the next ones."""
        state: _SwapState = getattr(c, '_swap_state', None)
        if state is None:
            c.swap = None
            return
        self.prefetch(c)
        cur = torch.cuda.current_stream(c.device)
        cur.wait_event(state.h2d_event)
        for t in state.device_tensors:
            if t is not None:
                t.record_stream(cur)  # allocated on the side stream, used and freed on this one
        self._set(c, state.device_tensors)
        c.swap = None
        c._swap_state = None  # type: ignore[attr-defined]
        self._prefetch_next(c)

    def _prefetch_next(self, done: CompressedTensor) -> None:
        with self._lock:
            alive = [r for r in self._pending if r() is not None and r() is not done
                     and getattr(r(), '_swap_state', None) is not None]
            self._pending = alive
            upcoming = [r() for r in alive[-self.prefetch_depth:]]
        for c in reversed(upcoming):
            if c is not None:
                self.prefetch(c)

    def prefetch_last(self) -> None:
        """Start fetching the most recent offloads (call at the start of backward)."""
        self._prefetch_next(None)  # type: ignore[arg-type]


_DEFAULT: Optional[Swapper] = None


def default_swapper() -> Swapper:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Swapper()
    return _DEFAULT
