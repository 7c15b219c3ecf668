"""Compression engine: per-group stochastic quantization, bit allocation, levels L0-L5.

Importing is cheap: the compiled kernels load on the first call. See docs/engine.md.
"""
from .allocator_settings import enable_expandable_segments
from .bit_allocator import BitAllocator
from .bit_solver import allocate_layers, allocate_per_sample, variance_bound
from .compressed import CompressedTensor, compress, decompress, rounding_generator
from .config import LEVELS, CompressionConfig, get_default_config, set_default_config
from .mask import PackedIndex, PackedMask, pack_index, pack_mask, unpack_index, unpack_mask
from .scheme import LayerScheme
from .swap import Swapper, default_swapper

__all__ = [
    'CompressionConfig', 'CompressedTensor', 'compress', 'decompress', 'PackedMask', 'pack_mask',
    'unpack_mask', 'PackedIndex', 'pack_index', 'unpack_index', 'LayerScheme', 'BitAllocator',
    'LEVELS', 'get_default_config', 'set_default_config', 'allocate_per_sample',
    'allocate_layers', 'variance_bound', 'enable_expandable_segments', 'Swapper',
    'default_swapper', 'rounding_generator',
]
