"""What the compiled extension is built from, shared by ``setup.py`` and the JIT loader.

Kept free of module-level torch imports so ``setup.py`` can import it before torch is needed.
"""
from __future__ import annotations

import glob
import os
from typing import List

TRUE = ('1', 'true', 'yes', 'on')


def _env_flag(name: str) -> bool:
    return os.environ.get(name, '0').strip().lower() in TRUE


def want_cuda() -> bool:
    """Whether to compile the CUDA kernels.

    ``ACTNN_MM_NO_CUDA=1`` wins; else ``FORCE_CUDA=1``, an explicit ``CUDA_HOME``, or a visible
    GPU with a toolkit that torch can find.
    """
    if _env_flag('ACTNN_MM_NO_CUDA'):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    if torch.version.cuda is None:  # a CPU-only torch cannot host CUDA kernels
        if _env_flag('FORCE_CUDA'):
            raise RuntimeError('actnn_mm: FORCE_CUDA=1 but the installed torch is a CPU-only '
                               'build; install a CUDA build of torch.')
        return False
    if _env_flag('FORCE_CUDA') or os.environ.get('CUDA_HOME'):
        if CUDA_HOME is None:
            raise RuntimeError('actnn_mm: CUDA kernels requested but no CUDA toolkit was found; '
                               'set CUDA_HOME to the toolkit root (the folder with bin/nvcc).')
        return True
    return CUDA_HOME is not None and torch.cuda.is_available()


def default_cuda_arch_list() -> str:
    """Set ``TORCH_CUDA_ARCH_LIST`` if unset: the visible GPU's arch, else ``8.0;9.0``."""
    archs = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if not archs:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            archs = f'{major}.{minor}'
        else:
            archs = '8.0;9.0'
        os.environ['TORCH_CUDA_ARCH_LIST'] = archs
    return archs


def csrc_dir(root: str) -> str:
    return os.path.join(root, 'csrc')


def sources(root: str, with_cuda: bool) -> List[str]:
    """C++ sources always; ``.cu`` files only when building CUDA kernels."""
    cdir = csrc_dir(root)
    found = sorted(glob.glob(os.path.join(cdir, '**', '*.cpp'), recursive=True))
    if with_cuda:
        found += sorted(glob.glob(os.path.join(cdir, '**', '*.cu'), recursive=True))
    if not found:
        raise RuntimeError(f'actnn_mm: no C++ sources under {cdir}')
    return found


def cuda_include_dirs() -> List[str]:
    """Headers of the CUDA libraries torch's wheels bring (``nvidia/*/include``).

    A bare toolkit (nvcc + runtime) may lack cuSPARSE/cuBLAS headers that ATen's CUDA headers
    include; pip-installed torch ships them in the ``nvidia`` namespace package.
    """
    try:
        import nvidia  # namespace package from the nvidia-* wheels torch depends on
    except ImportError:
        return []
    found: List[str] = []
    for base in getattr(nvidia, '__path__', []):
        found += sorted(glob.glob(os.path.join(base, '*', 'include')))
        found += sorted(glob.glob(os.path.join(base, '*', '*', 'include')))
    return [d for d in found if os.path.isdir(d)]


def compile_args(with_cuda: bool) -> dict:
    """C++20 (torch >= 2.5 headers need it), optimised, vectorisable loops."""
    # -ffp-contract=off: the quantization arithmetic must round every operation separately (no
    # fused multiply-add) to stay bit-identical to the CUDA kernels and the PyTorch reference.
    cxx = ['-O3', '-std=c++20', '-fopenmp', '-ffp-contract=off']
    args = {'cxx': cxx}
    if with_cuda:
        # -ftz=false after --use_fast_math: the kernels' __f*_rn arithmetic and min/max must keep
        # subnormals like the CPU does, or the packed bytes differ between devices.
        args['nvcc'] = ['-O3', '-std=c++20', '--use_fast_math', '-ftz=false', '-lineinfo',
                        '--expt-relaxed-constexpr']
    return args
