"""The ops of ``torch.ops.actnn_mm``, with the PyTorch reference as their default kernel.

The extension is loaded on the first call, never at import. Loading it registers, next to its
compiled CPU (and CUDA) kernels, each op's pure-PyTorch reference as the op's
``CompositeExplicitAutograd`` kernel: the dispatcher itself sends devices without compiled
kernels (MPS, XPU, a CPU-only build used with CUDA tensors) to the reference, which warns once
per device type, never silently. Only two cases are routed here by hand: an extension that
cannot be loaded (then no op exists: the reference runs directly, with the same warning naming
the load error) and ``ACTNN_MM_REFERENCE=1``, which forces the reference everywhere (debugging).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Optional, Tuple

import torch

from . import reference

_LOCK = threading.Lock()
_STATE: dict = {'loaded': False, 'error': None}
_WARNED: set = set()
_LIBRARY: list = []  # the torch.library.Library holding the default kernels (kept alive)
_OPS = ('quantize', 'dequantize', 'group_minmax', 'pack_bits', 'unpack_bits', 'compress',
        'accumulate_sq_norm', 'pack_nonzero', 'unpack_mask', 'mask_grad', 'bn_backward')


def _register_fakes() -> None:
    """Fake (meta) implementations: shapes only, so the ops trace under torch.compile/FakeTensor."""

    @torch.library.register_fake('actnn_mm::quantize')
    def _quantize_fake(x, num_samples, group_size, bits, sample_bits, sample_offsets,
                       payload_bytes, stochastic, seed, offset, use_generator, generator):
        d = x.numel() // num_samples if num_samples else 0
        gs = -(-d // group_size)
        return (x.new_empty(payload_bytes, dtype=torch.uint8),
                x.new_empty(num_samples * gs * 2, dtype=torch.float32))

    @torch.library.register_fake('actnn_mm::compress')
    def _compress_fake(x, num_samples, group_size, bits, total_bits, min_bits, max_bits, shift,
                       scale, affine_inner, affine_period, stats, stats_factor, stochastic, seed,
                       offset, use_generator, generator):
        d = x.numel() // num_samples if num_samples else 0
        gs = -(-d // group_size)
        per_bit = gs * (group_size // 8)
        nbytes = per_bit * (total_bits if bits == 0 else num_samples * bits)
        n = num_samples if bits == 0 else 0
        return (x.new_empty(nbytes, dtype=torch.uint8),
                x.new_empty(num_samples * gs * 2, dtype=torch.float32),
                x.new_empty(n, dtype=torch.int32), x.new_empty(n, dtype=torch.int64))

    @torch.library.register_fake('actnn_mm::accumulate_sq_norm')
    def _accumulate_fake(g, acc, index, scale):
        return None

    @torch.library.register_fake('actnn_mm::pack_nonzero')
    def _pack_nonzero_fake(x, positive):
        return x.new_empty((x.numel() + 7) // 8, dtype=torch.uint8)

    @torch.library.register_fake('actnn_mm::unpack_mask')
    def _unpack_mask_fake(packed, numel, dtype):
        return packed.new_empty(numel, dtype=dtype)

    @torch.library.register_fake('actnn_mm::mask_grad')
    def _mask_grad_fake(grad, packed):
        return torch.empty_like(grad)

    @torch.library.register_fake('actnn_mm::dequantize')
    def _dequantize_fake(payload, meta, num_samples, numel_per_sample, group_size, bits,
                         sample_bits, sample_offsets, dtype):
        return payload.new_empty(num_samples * numel_per_sample, dtype=dtype)

    @torch.library.register_fake('actnn_mm::bn_backward')
    def _bn_backward_fake(grad, payload, meta, num_samples, numel_per_sample, group_size, bits,
                          sample_bits, sample_offsets, scale, channel_inner, channels,
                          input_grad):
        gx = grad.new_empty(grad.numel() if input_grad else 0)
        return (gx, grad.new_empty(channels, dtype=torch.float32),
                grad.new_empty(channels, dtype=torch.float32))

    @torch.library.register_fake('actnn_mm::group_minmax')
    def _minmax_fake(x, num_samples, group_size):
        d = x.numel() // num_samples if num_samples else 0
        return x.new_empty(num_samples * (-(-d // group_size)) * 2, dtype=torch.float32)

    @torch.library.register_fake('actnn_mm::pack_bits')
    def _pack_fake(values, nbits):
        return values.new_empty((values.numel() + 7) // 8 * nbits, dtype=torch.uint8)

    @torch.library.register_fake('actnn_mm::unpack_bits')
    def _unpack_fake(packed, numel, nbits):
        return packed.new_empty(numel, dtype=torch.uint8)


def _default_kernel(name: str):
    """The reference of op ``name`` as a dispatcher kernel, warning once per device type."""
    fn = getattr(reference, name)

    def kernel(*args, **kwargs):
        t = next(a for a in args if isinstance(a, torch.Tensor))
        _warn_fallback(t.device)
        return fn(*args, **kwargs)

    kernel.__name__ = f'{name}_reference'
    return kernel


def _register_defaults() -> None:
    """Each op's reference as its ``CompositeExplicitAutograd`` (default backend) kernel."""
    lib = torch.library.Library('actnn_mm', 'IMPL')
    for name in _OPS:
        lib.impl(name, _default_kernel(name), 'CompositeExplicitAutograd')
    _LIBRARY.append(lib)


def _ensure_loaded() -> bool:
    """Load (or JIT-build) the extension once; False (with the reason kept) if impossible."""
    if _STATE['loaded']:
        return _STATE['error'] is None
    with _LOCK:
        if not _STATE['loaded']:
            try:
                from .._ext_loader import load_extension
                load_extension()
                _register_fakes()
                _register_defaults()
            except Exception as err:  # noqa: BLE001  (reported through the fallback warning)
                _STATE['error'] = err
            _STATE['loaded'] = True
    return _STATE['error'] is None


def has_kernels(device: torch.device) -> bool:
    """Whether compiled kernels exist for ``device`` (loads the extension on first use)."""
    if os.environ.get('ACTNN_MM_REFERENCE', '0') == '1' or not _ensure_loaded():
        return False
    if device.type == 'cpu':
        return True
    if device.type == 'cuda':
        return torch._C._dispatch_has_kernel_for_dispatch_key('actnn_mm::quantize', 'CUDA')
    return False


def _warn_fallback(device: torch.device) -> None:
    key = device.type
    if key in _WARNED:
        return
    _WARNED.add(key)
    why = (f'the extension could not be loaded ({_STATE["error"]!r})' if _STATE['error']
           else f'no compiled kernels for device type {device.type!r}')
    if os.environ.get('ACTNN_MM_REFERENCE', '0') == '1':
        why = 'ACTNN_MM_REFERENCE=1'
    warnings.warn(f'actnn_mm: using the slow pure-PyTorch compression path on {device} ({why}); '
                  'results are identical but much slower and use more temporary memory.',
                  RuntimeWarning, stacklevel=3)


def _forced_reference() -> bool:
    return os.environ.get('ACTNN_MM_REFERENCE', '0') == '1'


_OVERLOADS: dict = {}


def _impl(name: str, device: torch.device):
    """The dispatcher's op (compiled kernel, or the reference as its default kernel), unless
    the extension is missing or the reference is forced. The op's overload is looked up once
    (calling the packet would resolve it again on every call)."""
    if not _forced_reference() and _ensure_loaded():
        op = _OVERLOADS.get(name)
        if op is None:
            op = _OVERLOADS[name] = getattr(torch.ops.actnn_mm, name).default
        return op
    _warn_fallback(device)
    return getattr(reference, name)


def quantize(x: torch.Tensor, num_samples: int, group_size: int, bits: int,
             sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
             payload_bytes: int, stochastic: bool, seed: int, offset: int, use_generator: bool,
             generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
    return _impl('quantize', x.device)(x, num_samples, group_size, bits, sample_bits,
                                       sample_offsets, payload_bytes, stochastic, seed, offset,
                                       use_generator, generator)


def dequantize(payload: torch.Tensor, meta: torch.Tensor, num_samples: int,
               numel_per_sample: int, group_size: int, bits: int,
               sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    return _impl('dequantize', payload.device)(payload, meta, num_samples, numel_per_sample,
                                               group_size, bits, sample_bits, sample_offsets,
                                               dtype)


def group_minmax(x: torch.Tensor, num_samples: int, group_size: int) -> torch.Tensor:
    return _impl('group_minmax', x.device)(x, num_samples, group_size)


def pack_bits(values: torch.Tensor, nbits: int) -> torch.Tensor:
    return _impl('pack_bits', values.device)(values, nbits)


def unpack_bits(packed: torch.Tensor, numel: int, nbits: int) -> torch.Tensor:
    return _impl('unpack_bits', packed.device)(packed, numel, nbits)


def compress(x: torch.Tensor, num_samples: int, group_size: int, bits: int, total_bits: int,
             min_bits: int, max_bits: int, shift: Optional[torch.Tensor],
             scale: Optional[torch.Tensor], affine_inner: int, affine_period: int,
             stats: Optional[torch.Tensor], stats_factor: float, stochastic: bool, seed: int,
             offset: int, use_generator: bool, generator: Optional[torch.Generator]
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _impl('compress', x.device)(x, num_samples, group_size, bits, total_bits, min_bits,
                                       max_bits, shift, scale, affine_inner, affine_period,
                                       stats, stats_factor, stochastic, seed, offset,
                                       use_generator, generator)


def accumulate_sq_norm(g: torch.Tensor, acc: torch.Tensor, index: int, scale: float) -> None:
    _impl('accumulate_sq_norm', g.device)(g, acc, index, scale)


def pack_nonzero(x: torch.Tensor, positive: bool) -> torch.Tensor:
    return _impl('pack_nonzero', x.device)(x, positive)


def unpack_mask(packed: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return _impl('unpack_mask', packed.device)(packed, numel, dtype)


def mask_grad(grad: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return _impl('mask_grad', grad.device)(grad, packed)


def bn_backward(grad: torch.Tensor, payload: torch.Tensor, meta: torch.Tensor, num_samples: int,
                numel_per_sample: int, group_size: int, bits: int,
                sample_bits: Optional[torch.Tensor], sample_offsets: Optional[torch.Tensor],
                scale: Optional[torch.Tensor], channel_inner: int, channels: int,
                input_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _impl('bn_backward', grad.device)(grad, payload, meta, num_samples, numel_per_sample,
                                             group_size, bits, sample_bits, sample_offsets,
                                             scale, channel_inner, channels, input_grad)
