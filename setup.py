"""Build actnn_mm and its compiled quantization extension ``actnn_mm._C``.

CPU kernels are always built. CUDA kernels are added when a CUDA toolkit is asked for or usable:
``FORCE_CUDA=1``, or ``CUDA_HOME`` set, or a visible GPU (``ACTNN_MM_NO_CUDA=1`` turns them off).
Architectures come from ``TORCH_CUDA_ARCH_LIST``; without it, the visible GPU's, else ``8.0;9.0``.

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the torch
already in the environment (any torch >= 2.4). The project's metadata is in ``pyproject.toml``;
the version is read from ``actnn_mm/version.py``, the one place it is written.
"""
from __future__ import annotations

import os
import re
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, 'actnn_mm'))
import _build_info  # noqa: E402  (shared with the JIT loader; imports no torch at module level)


def _extensions() -> list:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = _build_info.want_cuda()
    if with_cuda:
        _build_info.default_cuda_arch_list()
    sources = _build_info.sources(ROOT, with_cuda)
    kwargs = dict(
        name='actnn_mm._C',
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=[os.path.join(ROOT, 'csrc')] +
        (_build_info.cuda_include_dirs() if with_cuda else []),
        extra_compile_args=_build_info.compile_args(with_cuda),
        define_macros=[('ACTNN_MM_WITH_CUDA', '1')] if with_cuda else [],
    )
    print(f'actnn_mm: building {"CPU + CUDA" if with_cuda else "CPU"} kernels '
          f'({len(sources)} sources)', flush=True)
    return [CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs)]


def _version() -> str:
    with open(os.path.join(ROOT, 'actnn_mm', 'version.py')) as f:
        match = re.search(r"^__version__ = '([^']+)'", f.read(), re.M)
    if match is None:
        raise RuntimeError("actnn_mm/version.py must define __version__ = '<version>'")
    return match.group(1)


def _cmdclass() -> dict:
    from torch.utils.cpp_extension import BuildExtension
    return {'build_ext': BuildExtension.with_options(use_ninja=True)}


setup(
    version=_version(),
    packages=find_packages(include=['actnn_mm', 'actnn_mm.*']),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
