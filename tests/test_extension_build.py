"""How the compiled extension is found: never at import, JIT-built when missing, clear errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Make the subprocess import actnn_mm from its working directory, not from this checkout's
# editable install (whose import hook would find this checkout's built extension).
_ISOLATE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path.insert(0, '.')\n")


def _run(code: str, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', _ISOLATE + textwrap.dedent(code)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _copy_checkout_without_binary(dst: Path) -> Path:
    """An editable checkout moved to another machine: sources, but no built ``_C*.so``."""
    shutil.copytree(REPO / 'actnn_mm', dst / 'actnn_mm',
                    ignore=shutil.ignore_patterns('_C*.so', '__pycache__'))
    shutil.copytree(REPO / 'csrc', dst / 'csrc')
    return dst


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env.update(extra)
    return env


def test_import_does_not_load_or_build_the_extension() -> None:
    proc = _run("""
        import sys, actnn_mm
        assert 'actnn_mm._C' not in sys.modules, 'import actnn_mm loaded the extension'
        print('ok')
    """, cwd=REPO, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'ok'


def test_missing_extension_is_jit_built_into_the_user_cache(tmp_path: Path) -> None:
    checkout = _copy_checkout_without_binary(tmp_path / 'checkout')
    cache = tmp_path / 'cache'
    proc = _run("""
        import torch, actnn_mm, actnn_mm._ext_loader as loader
        assert not loader.is_built()
        mod = loader.load_extension()
        ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith('actnn_mm::')]
        assert ops, 'JIT-built module registered no operators'
        print(mod.__file__)
    """, cwd=checkout, env=_env(ACTNN_MM_CACHE=str(cache), ACTNN_MM_NO_CUDA='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = Path(proc.stdout.strip().splitlines()[-1])
    assert cache in built.parents, f'built outside the cache: {built}'
    assert 'JIT-building' in proc.stderr


def test_no_compiler_gives_an_error_saying_what_to_install(tmp_path: Path) -> None:
    checkout = _copy_checkout_without_binary(tmp_path / 'checkout')
    proc = _run("""
        import actnn_mm._ext_loader as loader
        try:
            loader.load_extension()
        except RuntimeError as err:
            print('ERROR:', err)
        else:
            raise SystemExit('built without a compiler?')
    """, cwd=checkout, env=_env(PATH=str(tmp_path / 'empty'), CXX='no-such-c++',
                                  ACTNN_MM_CACHE=str(tmp_path / 'cache')))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'no C++ compiler was found' in proc.stdout
    assert 'apt-get install g++' in proc.stdout


def test_no_jit_flag_refuses_to_build(tmp_path: Path) -> None:
    checkout = _copy_checkout_without_binary(tmp_path / 'checkout')
    proc = _run("""
        import actnn_mm._ext_loader as loader
        try:
            loader.load_extension()
        except RuntimeError as err:
            print('ERROR:', err)
    """, cwd=checkout, env=_env(ACTNN_MM_NO_JIT='1'))
    assert 'ACTNN_MM_NO_JIT=1' in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize('flag', ['FORCE_CUDA'])
def test_forced_cuda_without_toolkit_is_a_clear_error(flag: str, tmp_path: Path) -> None:
    """``FORCE_CUDA=1`` with no findable toolkit must say how to point at one."""
    proc = _run("""
        import sys
        sys.path.insert(0, 'actnn_mm')
        import torch, _build_info
        from torch.utils import cpp_extension
        cpp_extension.CUDA_HOME = None
        try:
            _build_info.want_cuda()
        except RuntimeError as err:
            print('ERROR:', err)
    """, cwd=REPO, env=_env(**{flag: '1'}))
    assert 'set CUDA_HOME' in proc.stdout or 'CPU-only' in proc.stdout, proc.stderr[-2000:]
