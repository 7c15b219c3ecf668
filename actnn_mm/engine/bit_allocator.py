"""``BitAllocator``: average bits per layer, re-solved across layers every K steps.

Why every K steps from cached statistics: the cross-layer solve needs every layer's
sensitivity on the host (a greedy over L x 7 items); reading them is one device-to-host transfer
for all layers together, done once per ``realloc_interval`` steps (GACT re-solves every 1000),
instead of ActNN's one synchronisation per layer per step. Between solves each layer keeps its
average and still allocates per sample on device every step (``LayerScheme.compress``).

Why it steps itself: a ``step()`` the training loop has to remember is one that gets forgotten,
and the layers then keep their first bits forever without an error. Every backward that
decompresses one of the allocator's tensors queues one ``step()`` for the end of that backward,
after the gradient statistics the solve reads are in: once per backward, however many layers and
converted parts share the allocator (:meth:`BitAllocator.step_at_end_of_backward`).
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Optional

import torch

from .bit_solver import allocate_layers
from .config import CompressionConfig
from .scheme import WEIGHT_ONLY_KINDS, LayerScheme


class BitAllocator:
    """Owns the schemes of one model (one config); stepped once per training backward by its
    schemes (``step()`` by hand only where no backward runs through them)."""

    def __init__(self, config: CompressionConfig, interval: Optional[int] = None) -> None:
        if not isinstance(config, CompressionConfig):
            raise ValueError(f'config must be a CompressionConfig, got {type(config).__name__}')
        interval = config.realloc_interval if interval is None else interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be an int >= 1, got {interval!r}')
        self.config = config
        self.interval = interval
        self.steps = 0
        self.solves = 0
        self._schemes: List[weakref.ref] = []
        # State loaded for schemes that did not exist yet (layers build theirs lazily, at their
        # first forward; a resumed run loads the checkpoint before that): applied on register.
        self._pending: Dict[str, dict] = {}
        self._stepped_task: Optional[int] = None  # autograd graph task that queued the last step

    def register(self, scheme: LayerScheme) -> LayerScheme:
        if not isinstance(scheme, LayerScheme):
            raise ValueError(f'scheme must be a LayerScheme, got {type(scheme).__name__}')
        if scheme.allocator is not self:
            scheme.allocator = self
            self._schemes.append(weakref.ref(scheme))
            if scheme.name in self._pending:
                _load_scheme_state(scheme, self._pending[scheme.name])
        return scheme

    def scheme(self, kind: str = 'conv', kernel_area: int = 1, groups: int = 1,
               name: str = '') -> LayerScheme:
        """A new registered ``LayerScheme`` with this allocator's config."""
        return LayerScheme(self.config, kind, kernel_area, groups, name, allocator=self)

    @property
    def schemes(self) -> List[LayerScheme]:
        alive = [s for s in (r() for r in self._schemes) if s is not None]
        self._schemes = [weakref.ref(s) for s in alive]
        return alive

    def step_at_end_of_backward(self) -> None:
        """Queue ``step()`` for the end of the running backward, once per backward (autograd's
        graph task tells them apart); a no-op outside backward. Called by the schemes'
        ``decompress``, which only backward does."""
        task = torch._C._current_graph_task_id()
        if task < 0 or task == self._stepped_task:
            return
        self._stepped_task = task
        torch.autograd.Variable._execution_engine.queue_callback(self.step)

    def step(self) -> bool:
        """Count one iteration; re-solve after the first and then every ``interval``. True if
        it solved (the only place that reads device statistics on the host)."""
        self.steps += 1
        cfg = self.config
        if not (cfg.enabled and cfg.per_layer):
            return False
        if self.steps == 1 or self.steps % self.interval == 0:
            return self.solve()
        return False

    def solve(self) -> bool:
        """Cross-layer greedy on the statistics cached since the last solve."""
        ready = [s for s in self.schemes if s.enabled and s.has_stats() and s.samples > 0]
        if not ready:
            return False
        # One stacked transfer for all layers: the only host read of device statistics.
        sens = [s.sensitivity_tensor().float().reshape(()) for s in ready]
        if len({t.device for t in sens}) > 1:  # model split over devices: one read per device
            sens = [t.cpu() for t in sens]
        values = torch.stack(sens).cpu().tolist()
        cfg = self.config
        # ActNN's sensitivity is the variance a layer's saved input adds to *its own* weight
        # gradient: right for conv/linear inputs, which nothing else reads. What a norm, an
        # activation or a generic op saves enters the input gradient instead, and its error
        # reaches every layer below; the estimate misses that, so pooling them starved them of
        # bits (EfficientNet-B0: 13x the error of uniform bits). Those layers keep the average;
        # conv/linear layers with a gradient estimate share their own budget at that average.
        # So no layer's saved tensor gets fewer bits than uniform unless the estimate covers it.
        pool = [i for i, s in enumerate(ready) if s.kind in WEIGHT_ONLY_KINDS and
                s._grad_count > 0]
        for s in ready:
            s.layer_bits = float(cfg.bits)
        if pool:
            bits = allocate_layers([values[i] for i in pool], [ready[i].features for i in pool],
                                   [ready[i].samples for i in pool], float(cfg.bits),
                                   cfg.min_bits, cfg.max_bits)
            for i, b in zip(pool, bits):
                ready[i].layer_bits = b
        for s in ready:
            s.reset_stats()
        self._pending.clear()  # a solve supersedes any loaded state
        self.solves += 1
        return True

    def layer_bits(self) -> Dict[str, float]:
        """Current average bits per layer, by scheme name."""
        return {s.name: s.layer_bits for s in self.schemes}

    def state_dict(self) -> dict:
        """Steps, solves, each layer's bits and the statistics cached since the last solve
        (host floats: one read per layer, at checkpoint time only)."""
        return {'steps': self.steps, 'solves': self.solves, 'layer_bits': self.layer_bits(),
                'stats': {s.name: _scheme_stats(s) for s in self.schemes if s.has_stats()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; schemes registered later (built at their layer's first
        forward) get their state when they register, matched by name."""
        self.steps = int(state.get('steps', 0))
        self.solves = int(state.get('solves', 0))
        stats = state.get('stats', {})
        self._pending = {name: {'layer_bits': float(bits), **stats.get(name, {})}
                         for name, bits in state.get('layer_bits', {}).items()}
        for s in self.schemes:
            if s.name in self._pending:
                _load_scheme_state(s, self._pending[s.name])


def _scheme_stats(scheme: LayerScheme) -> dict:
    rsq, grad = scheme._rsq_acc, scheme._grad_acc
    return {'rsq': None if rsq is None else float(rsq), 'rsq_count': scheme._rsq_count,
            'grad': None if grad is None else float(grad), 'grad_count': scheme._grad_count}


def _load_scheme_state(scheme: LayerScheme, state: dict) -> None:
    scheme.layer_bits = float(state['layer_bits'])
    if state.get('rsq') is None:
        scheme.reset_stats()
        return
    scheme.load_stats(state['rsq'], state['rsq_count'], state.get('grad'),
                      state.get('grad_count', 0))
