"""actnn_mm: activation-compressed training (ActNN) as a plugin for OpenMMLab 2.x.

The public API is what ``__all__`` lists (see docs/api.md):

* the config: :class:`CompressionConfig` (immutable; ``from_level``, ``replace``,
  ``to_dict``/``from_dict``), :data:`LEVELS`, ``get_default_config``/``set_default_config``;
* conversion: :func:`convert` (returns a :class:`Conversion`, which owns the model's
  :class:`BitAllocator` and steps it from every training backward) and :func:`revert`;
* the mmengine hook :class:`ActNNHook` (``custom_hooks = [dict(type='ActNNHook', ...)]``);
* the saved-tensor context :class:`compress_saved_tensors`;
* memory measurement: :func:`measure_saved_bytes`, :class:`SavedBytesCounter`.

Importing this package registers its layers and hook in the OpenMMLab registries and applies the
small compatibility fixes the pinned stack needs (see ``actnn_mm.compat``). It never compiles
anything: the kernels are loaded (or JIT-built) on first use.
"""
# compat first: it applies the stack fixes before anything imports the packages it fixes.
from . import compat, engine, layers, registry  # noqa: F401  (submodules; compat patches)
from .conversion import Conversion, ConversionReport, convert, get_allocator, is_converted, revert
from .engine import LEVELS, BitAllocator, CompressionConfig, get_default_config, set_default_config
from .mm import ActNNHook  # registers ActNNHook in mmengine's HOOKS
from .saved_bytes import SavedBytesCounter, SavedBytesReport, measure_saved_bytes
from .saved_tensors import compress_saved_tensors
from .version import __version__

registry._register_on_import()  # the Q-layers in mmengine's MODELS

__all__ = [
    '__version__',
    # config
    'CompressionConfig', 'LEVELS', 'get_default_config', 'set_default_config',
    # conversion
    'convert', 'revert', 'Conversion', 'ConversionReport', 'BitAllocator', 'get_allocator',
    'is_converted',
    # OpenMMLab hook
    'ActNNHook',
    # saved-tensor compression
    'compress_saved_tensors',
    # memory measurement
    'measure_saved_bytes', 'SavedBytesCounter', 'SavedBytesReport',
]
