"""Dispatch overhead of a training step: every op the dispatcher runs, and every host read.

Why count rather than time: on a GPU each dispatched op is a Python dispatch plus (usually) a
kernel launch, and each host read of a device value stalls the stream; both are independent of
how fast the kernels are, so a count says where launch overhead comes from on any machine.

:class:`OpCounter` is a ``TorchDispatchMode`` that counts

* compute ops: everything except views (ops whose outputs alias an input without writing it:
  ``view``, ``t``, ``select``, ``detach``, ``expand``, ...), metadata queries (``sym_size``,
  ``is_contiguous``...) and allocations that launch nothing (``empty``, ``empty_strided``,
  ``empty_like``, counted apart as ``allocs``);
* host reads: ``_local_scalar_dense`` (``item()``, ``int(t)``, ``bool(t)``; not a compute op),
  ops whose output size
  depends on the values (``nonzero``, ``unique``, ``masked_select``), ``equal``/``is_nonzero``,
  copies from an accelerator to the CPU, and ``Tensor.tolist()``/``Tensor.numpy()`` (which read
  CPU tensors without dispatching an op; patched while the counter is active).
"""
from __future__ import annotations

import collections
from typing import Any, Counter, Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['OpCounter']

#: Ops that only read metadata (no kernel).
METADATA_OPS = frozenset({
    'sym_size', 'sym_stride', 'sym_numel', 'sym_storage_offset', 'is_contiguous',
    'is_strides_like_format', 'is_non_overlapping_and_dense', 'size', 'stride', 'numel',
    'dim', 'is_same_size', 'lift_fresh', 'record_stream', 'set_', '_unsafe_view',
    '_reshape_alias'})
#: Allocations without a kernel launch.
ALLOC_OPS = frozenset({'empty', 'empty_strided', 'empty_like', 'new_empty',
                       'new_empty_strided'})
#: Ops that read device values on the host (or whose output size depends on them).
HOST_READ_OPS = frozenset({'_local_scalar_dense', 'item', 'nonzero', 'nonzero_static',
                           'unique', '_unique', '_unique2', 'unique_dim', 'unique_consecutive',
                           'masked_select', 'equal', 'is_nonzero', 'allclose'})


def _is_view(func: Any) -> bool:
    """Outputs alias an input without writing it (view ops, detach, alias)."""
    schema = func._schema
    rets = schema.returns
    if not rets:
        return False
    for r in rets:
        info = r.alias_info
        if info is None or info.is_write:
            return False
    return True


def _device_to_host(func: Any, args: Any, kwargs: Dict[str, Any], out: Any) -> bool:
    name = func._schema.name.split('::')[-1]
    if name not in ('_to_copy', 'copy_', '_copy_from', '_copy_from_and_resize'):
        return False
    src = args[1] if name == 'copy_' else args[0]
    dst = args[0] if name == 'copy_' else out
    return (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
            and src.device.type not in ('cpu', 'meta') and dst.device.type == 'cpu')


class OpCounter(TorchDispatchMode):
    """Counts compute ops, allocations and host reads while active (see the module docstring).

    ``ops``, ``allocs``, ``host_reads``: totals; ``by_name``: compute ops per op name;
    ``reads_by_name``: host reads per cause.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.allocs = 0
        self.host_reads = 0
        self.by_name: Counter[str] = collections.Counter()
        self.reads_by_name: Counter[str] = collections.Counter()
        self._patched: Optional[Dict[str, Any]] = None

    def _read(self, what: str) -> None:
        self.host_reads += 1
        self.reads_by_name[what] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name.split('::')[-1]
        if name in HOST_READ_OPS:
            self._read(name)
        elif _device_to_host(func, args, kwargs, out):
            self._read(f'{name} to cpu')
        if name in METADATA_OPS or name in ('_local_scalar_dense', 'item') or _is_view(func):
            return out
        if name in ALLOC_OPS:
            self.allocs += 1
            return out
        self.ops += 1
        self.by_name[str(func.overloadpacket)] += 1
        return out

    def __enter__(self) -> 'OpCounter':
        counter = self
        originals = {'tolist': torch.Tensor.tolist, 'numpy': torch.Tensor.numpy}

        def tolist(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            counter._read('tolist')
            return originals['tolist'](t, *a, **k)

        def numpy(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            counter._read('numpy')
            return originals['numpy'](t, *a, **k)

        torch.Tensor.tolist = tolist
        torch.Tensor.numpy = numpy
        self._patched = originals
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._patched is not None:
                torch.Tensor.tolist = self._patched['tolist']
                torch.Tensor.numpy = self._patched['numpy']
                self._patched = None
