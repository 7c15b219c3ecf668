"""Per-interval figures for the training log: bytes kept for backward and average bits."""
from __future__ import annotations

from typing import List, Optional

from torch import nn

from ..engine import CompressionConfig, LayerScheme
from ..saved_bytes import SavedBytesCounter, SavedBytesReport


class IterationStats:
    """Counts what the converted parts keep for backward during one forward.

    The counter is entered by a forward pre-hook on each part and left by its forward hook, so
    it sees the forward only (nothing is held through backward) and only on logging iterations.
    """

    def __init__(self) -> None:
        self._counter: Optional[SavedBytesCounter] = None
        self._handles: List = []
        self._depth = 0

    def start(self, parts: List[nn.Module]) -> None:
        self.stop()
        if not parts:
            return
        self._counter = SavedBytesCounter(parts[0] if len(parts) == 1 else nn.ModuleList(parts))
        self._reports: List[SavedBytesReport] = []
        for part in parts:
            # Prepended: the counter's saved-tensor hooks must sit *below* the part's
            # compression context (torch applies only the innermost pair); entered after it,
            # they would shadow it and the logged iteration would keep its activations exact.
            self._handles.append(part.register_forward_pre_hook(self._enter, prepend=True))
            self._handles.append(part.register_forward_hook(self._exit, always_call=True))

    def _enter(self, module: nn.Module, args) -> None:
        if self._depth == 0 and module.training:
            self._counter.__enter__()
            self._depth = 1
        elif self._depth:
            self._depth += 1

    def _exit(self, module: nn.Module, args, output) -> None:
        if self._depth:
            self._depth -= 1
            if self._depth == 0:
                self._counter.__exit__(None, None, None)

    def stop(self) -> Optional[SavedBytesReport]:
        """Remove the hooks; the report of what was counted since ``start`` (None if nothing)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        counter, self._counter = self._counter, None
        if counter is None:
            return None
        if self._depth:
            counter.__exit__(None, None, None)
            self._depth = 0
        return counter.report if counter.report.count else None


def average_bits(schemes: List[LayerScheme], config: CompressionConfig) -> float:
    """Average bits per compressed element, weighted by each layer's size."""
    if not config.enabled:
        return 32.0
    weights = [(s.layer_bits if config.per_layer else float(config.bits), s.features * s.samples)
               for s in schemes if s.enabled and s.features]
    total = sum(w for _, w in weights)
    if not total:
        return float(config.bits)
    return sum(b * w for b, w in weights) / total
