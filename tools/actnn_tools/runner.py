"""What tools/train.py, tools/test.py and tools/demo.py share: config loading, the data check,
the CPU fallback for distributed runs, and runner construction.

Kept out of the ``actnn_mm`` package on purpose: it is command-line glue, not library API.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import subprocess
import sys
from typing import Optional, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import actnn_mm  # noqa: E402,F401  (registrations and stack compat fixes)
from actnn_tools.demo_data import missing_data, missing_data_message  # noqa: E402


def setup_cache_size_limit_of_dynamo() -> None:
    """Honour ``DYNAMO_CACHE_SIZE_LIMIT`` as mmdet's tools do (detection recompiles a lot)."""
    if 'DYNAMO_CACHE_SIZE_LIMIT' in os.environ:
        import torch._dynamo
        limit = int(os.environ['DYNAMO_CACHE_SIZE_LIMIT'])
        torch._dynamo.config.cache_size_limit = limit
        print_log(f'torch._dynamo.config.cache_size_limit is force set to {limit}.',
                  logger='current', level=logging.WARNING)


def load_config(path: str, cfg_options: Optional[dict] = None, launcher: str = 'none',
                work_dir: Optional[str] = None) -> Config:
    """Read a config (``custom_imports`` are imported) and apply the CLI overrides.

    ``work_dir`` priority: CLI > config > ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(path)
    drop_collate_fn_scope(cfg)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    # `actnn = dict(...)` -> the ActNNHook that does it (checked now, before any training).
    from actnn_mm.mm import apply_actnn_section
    apply_actnn_section(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def drop_collate_fn_scope(cfg: Config) -> None:
    """Remove the ``_scope_`` that ``pkg::`` inheritance adds to ``collate_fn`` dicts.

    mmengine tags every typed dict of a ``mmpretrain::``/``mmdet::`` base with ``_scope_``, but
    ``Runner.build_dataloader`` passes the rest of ``collate_fn`` as keyword arguments:
    ``default_collate() got an unexpected keyword argument '_scope_'`` (MoCo v2's config).
    """
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        collate = loader.get('collate_fn') if isinstance(loader, dict) else None
        if isinstance(collate, dict):
            collate.pop('_scope_', None)


def ensure_data_exists(cfg: Config, splits: Sequence[str]) -> None:
    """Stop with a clear message (and the command that makes demo data) if data is missing."""
    missing = missing_data(cfg, splits)
    if missing:
        sys.exit(missing_data_message(missing))


def _init_gloo(launcher: str) -> None:
    """Start the process group on CPU; mmengine's ``init_dist`` calls ``torch.cuda.set_device``."""
    import torch.distributed as dist
    if dist.is_initialized():
        return
    if launcher == 'slurm':
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {os.environ["SLURM_NODELIST"]} | head -n1')
    elif launcher == 'mpi':
        os.environ.setdefault('RANK', os.environ['OMPI_COMM_WORLD_RANK'])
        os.environ.setdefault('WORLD_SIZE', os.environ['OMPI_COMM_WORLD_SIZE'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'))
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')
    dist.init_process_group(backend='gloo', init_method='env://')


def setup_cpu_distributed(cfg: Config) -> None:
    """Without CUDA, run a distributed launch on gloo with CPU DDP (no ``device_ids``)."""
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    wrapper_type = MODEL_WRAPPERS.get(cfg.model_wrapper_cfg.get('type',
                                                                'MMDistributedDataParallel'))
    if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
        cfg.model_wrapper_cfg.device_ids = None  # CPU modules take no device ids
    _init_gloo(cfg.launcher)


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``, or the registered runner named by ``runner_type``."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)
