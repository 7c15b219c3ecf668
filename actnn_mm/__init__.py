"""actnn_mm: activation-compressed training (ActNN) as a plugin for OpenMMLab 2.x.

Importing this package registers its layers, hooks and wrappers in the OpenMMLab registries and
applies the small compatibility fixes the pinned stack needs (see ``actnn_mm.compat``). It never
compiles anything: the kernels are loaded (or JIT-built) on first use.
"""
from . import compat  # noqa: F401  (applies the stack fixes on import)

__version__ = '0.1.0'

from . import engine  # noqa: F401,E402  (compression engine; cheap: kernels load on first use)

from . import layers, registry  # noqa: E402  (Q-layers; registry registers them in MODELS)
from .convert import ConversionReport, convert, get_allocator, revert  # noqa: E402
from .memory import SavedBytesCounter, measure_saved_bytes  # noqa: E402
from .saved_tensors import compress_saved_tensors  # noqa: E402

registry._register_on_import()
from . import mm  # noqa: F401,E402  (registers ActNNHook in mmengine's HOOKS)
