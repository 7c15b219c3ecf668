"""actnn_mm: activation-compressed training (ActNN) as a plugin for OpenMMLab 2.x.

Importing this package registers its layers, hooks and wrappers in the OpenMMLab registries and
applies the small compatibility fixes the pinned stack needs (see ``actnn_mm.compat``). It never
compiles anything: the kernels are loaded (or JIT-built) on first use.
"""
from . import compat  # noqa: F401  (applies the stack fixes on import)

__version__ = '0.1.0'

from . import engine  # noqa: F401,E402  (compression engine; cheap: kernels load on first use)
