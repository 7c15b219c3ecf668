"""``LayerScheme``: how one layer compresses what it saves for backward.

Q-layers call ``compress`` in forward and ``decompress`` in backward, and ``observe_grad`` with
the gradient of their output. With mixed precision the scheme chooses bits per sample on device
every step (sensitivity from the current batch's group ranges) within the layer's average bits,
which a ``BitAllocator`` re-solves across layers every K steps from statistics the schemes
accumulate on device. Nothing here reads a device value on the host, and one compressed tensor
costs one dispatched op in forward (``actnn_mm::compress``: ranges, sensitivity, bits, offsets,
statistics, quantization) and one in backward (``dequantize``); the gradient statistic is one
more (``accumulate_sq_norm``) for layers with per-layer allocation.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _ops
from .compressed import (
    PASSTHROUGH_BITS,
    Affine,
    CompressedTensor,
    _compress_impl,
    compress_fused,
    decompress,
)
from .config import CompressionConfig
from .layout import FLOAT_DTYPES, num_samples_of

KINDS = ('conv', 'linear', 'norm', 'generic')
#: Kinds whose saved tensor is read by their own weight gradient only: the ones the allocator
#: re-allocates across layers, and the only ones whose gradient statistic it reads.
WEIGHT_ONLY_KINDS = ('conv', 'linear')


class LayerScheme:
    """Per-layer compression policy and statistics.

    kind: 'conv' | 'linear' | 'norm' | 'generic' (what the layer is; norm inputs follow
        ``config.compress_norm``). kernel_area / groups: the conv's kernel size product and
        groups (sensitivity = kernel_area / groups / 4 * sum of squared group ranges
        * group_size / pixels * grad scale; norm layers use the ranges alone).
    """

    def __init__(self, config: CompressionConfig, kind: str = 'conv', kernel_area: int = 1,
                 groups: int = 1, name: str = '', allocator: Optional['object'] = None) -> None:
        if not isinstance(config, CompressionConfig):
            raise ValueError(f'config must be a CompressionConfig, got {type(config).__name__}')
        if kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
        if not isinstance(kernel_area, int) or kernel_area < 1:
            raise ValueError(f'kernel_area must be an int >= 1, got {kernel_area!r}')
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f'groups must be an int >= 1, got {groups!r}')
        self.config = config
        self.kind = kind
        self.kernel_area = kernel_area
        self.groups = groups
        self.name = name
        # Average bits of this layer; the allocator overwrites it when it re-solves (host float).
        self.layer_bits: float = float(config.bits)
        # Cached statistics: one float32 device tensor [range sum, gradient sum] that the ops
        # accumulate into (no host reads, no extra ops), and host counters.
        self._stats: Optional[torch.Tensor] = None
        self._rsq_count = 0
        self._grad_count = 0
        self.features = 0   # packed elements per sample (last seen), for the allocator
        self.samples = 0    # samples per batch (last seen)
        self.allocator = None
        if allocator is not None:
            allocator.register(self)

    # ---- policy ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        cfg = self.config
        return bool(cfg.enabled) and (self.kind != 'norm' or cfg.compress_norm)

    @property
    def coefficient(self) -> float:
        return 1.0 if self.kind == 'norm' else self.kernel_area / self.groups / 4.0

    def _pixels(self, x: torch.Tensor, d: int) -> int:
        if self.kind in ('conv', 'norm') and x.dim() >= 3:
            return max(1, d // int(x.shape[1]))
        if self.kind == 'linear' and x.dim() >= 2:
            return max(1, d // int(x.shape[-1]))
        return 1

    def _worth_it(self, x: torch.Tensor, n: int, avg_bits: float) -> bool:
        """Compressed size (payload + metadata) below the original size?"""
        d = x.numel() // n
        gs = -(-d // self.config.group_size)
        est = n * gs * (self.config.group_size / 8 * avg_bits + 8)
        if self.config.per_sample:
            est += 12 * n
        return est < x.numel() * x.element_size()

    def _skip(self, x: torch.Tensor) -> bool:
        return (not self.enabled or not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES
                or x.numel() == 0 or x.numel() < self.config.min_numel
                or isinstance(x, torch.nn.Parameter))

    # ---- forward / backward ---------------------------------------------------------------
    def compress(self, x: torch.Tensor,
                 affine: Optional[Affine] = None) -> Union[CompressedTensor, torch.Tensor]:
        """Compressed form of ``x`` (or ``x`` itself when disabled / not worth it: exact).

        ``affine``: quantize ``(x - shift) * scale`` instead (a norm layer's normalised input,
        computed inside the kernel); when the result is ``x`` itself, x was kept exact as is."""
        if self._skip(x):
            return x
        cfg = self.config
        n = num_samples_of(x)
        avg = self.layer_bits if cfg.per_layer else float(cfg.bits)
        if not self._worth_it(x, n, avg if cfg.mixed else float(cfg.bits)):
            return x
        if cfg.defrag:
            from .allocator_settings import enable_expandable_segments, return_freed_cpu_memory
            if x.is_cuda:
                enable_expandable_segments()
            elif x.device.type == 'cpu':
                return_freed_cpu_memory()
        g = cfg.group_size
        self.samples = n
        self.features = -(-(x.numel() // n) // g) * g
        stats = self._stats_for(x) if cfg.per_layer else None
        factor = g / self._pixels(x, x.numel() // n)
        if cfg.per_sample:
            total = min(max(int(round(avg * n)), cfg.min_bits * n), cfg.max_bits * n)
            c = compress_fused(x, 0, total_bits=total, min_bits=cfg.min_bits,
                               max_bits=cfg.max_bits, group_size=g, stochastic=cfg.stochastic,
                               affine=affine, stats=stats, stats_factor=factor)
        else:
            b = int(min(max(round(avg), cfg.min_bits), cfg.max_bits)) if cfg.mixed \
                else int(cfg.bits)
            if b in PASSTHROUGH_BITS:
                if affine is not None:
                    return x  # kept exact: the caller saves x itself, not normalised
                c = _compress_impl(x, b, group_size=g, stochastic=cfg.stochastic)
                stats = None
            else:
                c = compress_fused(x, b, group_size=g, stochastic=cfg.stochastic, affine=affine,
                                   stats=stats, stats_factor=factor)
        if stats is not None:
            self._rsq_count += 1
        if cfg.swap:
            from .swap import default_swapper
            default_swapper().offload(c)
        return c

    def decompress(self, saved: Union[CompressedTensor, torch.Tensor]) -> torch.Tensor:
        """Inverse of ``compress`` (identity for a tensor kept exact). In a backward it also
        has the allocator step at that backward's end (``BitAllocator.step_at_end_of_backward``)."""
        self.note_backward()
        if isinstance(saved, CompressedTensor):
            return decompress(saved)
        return saved

    def note_backward(self) -> None:
        """A backward reads what this scheme saved: the allocator steps at that backward's end
        (``BitAllocator.step_at_end_of_backward``). ``decompress`` calls it; so does any op that
        reads the compressed form directly."""
        if self.allocator is not None:
            self.allocator.step_at_end_of_backward()

    def observe_grad(self, grad_output: Optional[torch.Tensor]) -> None:
        """Accumulate the layer's gradient scale (mean squared norm per sample) on device; only
        for the kinds the allocator re-allocates (:data:`WEIGHT_ONLY_KINDS`): the others keep the
        average bits, so their statistic would be computed for nothing."""
        if grad_output is None or not self.enabled or not self.config.per_layer or \
                self.kind not in WEIGHT_ONLY_KINDS:
            return
        g = grad_output.detach()
        n = max(1, num_samples_of(g))
        _ops.accumulate_sq_norm(g, self._stats_for(g), 1, 1.0 / n)
        self._grad_count += 1

    # ---- statistics for the allocator -----------------------------------------------------
    def _stats_for(self, x: torch.Tensor) -> torch.Tensor:
        """The statistics tensor, on x's device (created once; moved if the model moved)."""
        st = self._stats
        if st is None:
            st = self._stats = torch.zeros(2, dtype=torch.float32, device=x.device)
        elif st.device != x.device:
            st = self._stats = st.to(x.device)
        return st

    @property
    def _rsq_acc(self) -> Optional[torch.Tensor]:
        """Sum of the per-step range statistics since the last solve (device scalar)."""
        return None if self._rsq_count == 0 or self._stats is None else self._stats[0]

    @property
    def _grad_acc(self) -> Optional[torch.Tensor]:
        """Sum of the per-backward gradient scales since the last solve (device scalar)."""
        return None if self._grad_count == 0 or self._stats is None else self._stats[1]

    def load_stats(self, rsq: Optional[float], rsq_count: int, grad: Optional[float],
                   grad_count: int, device: Optional[torch.device] = None) -> None:
        """Restore accumulated statistics (from a checkpoint)."""
        dev = device if device is not None else (
            self._stats.device if self._stats is not None else torch.device('cpu'))
        self._stats = torch.tensor([0.0 if rsq is None else rsq, 0.0 if grad is None else grad],
                                   dtype=torch.float32, device=dev)
        self._rsq_count = int(rsq_count) if rsq is not None else 0
        self._grad_count = int(grad_count) if grad is not None else 0

    def has_stats(self) -> bool:
        return self._rsq_count > 0

    def sensitivity_tensor(self) -> torch.Tensor:
        """Per-sample sensitivity averaged since the last solve (a device scalar, no sync)."""
        rsq = self._rsq_acc / self._rsq_count
        if self.kind == 'norm' or self._grad_count == 0:
            return rsq * self.coefficient
        return rsq * self.coefficient * (self._grad_acc / self._grad_count)

    def reset_stats(self) -> None:
        if self._stats is not None:
            self._stats.zero_()
        self._rsq_count = 0
        self._grad_count = 0

    def __repr__(self) -> str:
        return (f'LayerScheme(name={self.name!r}, kind={self.kind!r}, level={self.config.level}, '
                f'layer_bits={self.layer_bits:.3g})')
