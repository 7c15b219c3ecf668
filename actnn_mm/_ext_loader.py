"""Load the compiled kernels (``actnn_mm._C``), JIT-building them on first use if missing.

``import actnn_mm`` never calls this: it runs the first time a kernel is needed, so importing the
package never compiles anything and never fails because CUDA is absent.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import threading
from types import ModuleType
from typing import Optional

from . import _build_info

_LOCK = threading.Lock()
_MODULE: Optional[ModuleType] = None
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jit_cache_dir() -> str:
    """Per-user build cache, keyed by torch and python versions."""
    import torch
    base = os.environ.get('ACTNN_MM_CACHE', os.path.join(os.path.expanduser('~'), '.cache',
                                                          'actnn_mm'))
    tag = f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}'
    return os.path.join(base, 'jit', tag.replace('+', '_'))


def _check_compiler() -> None:
    cxx = os.environ.get('CXX', 'c++')
    if shutil.which(cxx) is None and shutil.which('g++') is None:
        raise RuntimeError(
            'actnn_mm: the compiled extension actnn_mm._C is not installed and no C++ compiler was '
            f'found to build it ({cxx!r} / g++ not on PATH). Install one (Debian/Ubuntu: '
            '`apt-get install g++`), or build ahead of time with `pip install --no-build-isolation '
            '-e .` in the repository.')
    if shutil.which('ninja') is None:
        try:
            import ninja  # noqa: F401  (the pip package puts ninja on PATH via its bin dir)
        except ImportError:
            raise RuntimeError('actnn_mm: building the extension needs ninja: `pip install ninja`.')


def _jit_build() -> ModuleType:
    from torch.utils import cpp_extension
    srcdir = _build_info.csrc_dir(_REPO_ROOT)
    if not os.path.isdir(srcdir):
        raise RuntimeError(
            'actnn_mm: the compiled extension actnn_mm._C is missing and the C++ sources '
            f'({srcdir}) are not beside the package to build it; reinstall actnn_mm.')
    _check_compiler()
    with_cuda = _build_info.want_cuda()
    if with_cuda:
        _build_info.default_cuda_arch_list()
    build_dir = jit_cache_dir() + ('-cuda' if with_cuda else '-cpu')
    os.makedirs(build_dir, exist_ok=True)
    args = _build_info.compile_args(with_cuda)
    print(f'actnn_mm: JIT-building the extension into {build_dir} (first use only)',
          file=sys.stderr, flush=True)
    return cpp_extension.load(
        name='actnn_mm_C', sources=_build_info.sources(_REPO_ROOT, with_cuda),
        extra_include_paths=[srcdir] + (_build_info.cuda_include_dirs() if with_cuda else []),
        extra_cflags=args['cxx'],
        extra_cuda_cflags=args.get('nvcc', []), build_directory=build_dir,
        extra_ldflags=[], with_cuda=with_cuda, is_python_module=True, verbose=False)


def load_extension() -> ModuleType:
    """Return the extension module, importing (or JIT-building) it once per process."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    with _LOCK:
        if _MODULE is None:
            import torch  # noqa: F401  (the extension links against libtorch)
            try:
                _MODULE = importlib.import_module('actnn_mm._C')
            except ImportError as err:
                if os.environ.get('ACTNN_MM_NO_JIT', '0') == '1':
                    raise RuntimeError('actnn_mm._C is not built and ACTNN_MM_NO_JIT=1 forbids '
                                       'building it now') from err
                _MODULE = _jit_build()
    return _MODULE


def is_built() -> bool:
    """True when the extension is importable without building (used by tests and tools)."""
    try:
        importlib.import_module('actnn_mm._C')
        return True
    except ImportError:
        return False
