"""Helpers of the end-to-end tests: load a demo config the way ``tools/train.py`` does, train it
a few iterations in this process, and measure saved-activation bytes exact vs ActNN."""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from actnn_mm.layers import TWINS
from actnn_mm.saved_bytes import measure_saved_bytes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs/actnn/demo')


def short_schedule(iters: int = 2, validate: bool = True) -> Dict[str, Any]:
    """``--cfg-options`` for a short run: log every iteration, evaluate at the end, no files."""
    opts: Dict[str, Any] = {
        'train_cfg.max_iters': iters,
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.interval': 10**6,
        'default_hooks.checkpoint.save_last': False,
    }
    if validate:
        opts['train_cfg.val_interval'] = iters
    return opts


def load_demo_config(name: str, work_dir: str, options: Optional[Dict[str, Any]] = None) -> Config:
    """The config as ``tools/train.py`` sees it (``actnn`` section turned into ``ActNNHook``)."""
    from actnn_tools.runner import load_config  # tools/ (on sys.path via conftest)

    path = name if osp.isfile(name) else osp.join(DEMO, f'{name}.py')
    return load_config(path, options, work_dir=work_dir)


def train(cfg: Config) -> Runner:
    """Build the runner from ``cfg`` and train; returns the runner (model, hooks, logs)."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def actnn_hook(runner: Runner) -> Any:
    hooks = [h for h in runner.hooks if type(h).__name__ == 'ActNNHook']
    names = [type(h).__name__ for h in runner.hooks]
    assert len(hooks) == 1, f'expected one ActNNHook, got {names}'
    return hooks[0]


def scalar(runner: Runner, key: str) -> float:
    return float(runner.message_hub.get_scalar(key).current())


def bare_model(runner: Runner) -> nn.Module:
    model = runner.model
    return model.module if hasattr(model, 'module') else model


def q_and_plain(modules: Iterable[nn.Module], cls: type = _BatchNorm) -> Tuple[int, List[str]]:
    """How many ``cls`` modules are Q-layers, and the class names of those that are not."""
    q, plain = 0, []
    for m in modules:
        if isinstance(m, cls):
            if type(m) in TWINS:
                q += 1
            else:
                plain.append(type(m).__name__)
    return q, plain


def exact_copy(runner: Runner, cfg: Config) -> nn.Module:
    """The config's model built afresh (no ActNN), with the trained model's weights."""
    from mmengine.registry import MODELS

    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        exact = MODELS.build(cfg.model)
    exact.load_state_dict(bare_model(runner).state_dict())
    assert not any(type(m) in TWINS for m in exact.modules()), 'the reference must be exact'
    return exact


def loss_forward(data: Dict[str, Any]):
    def forward(model: nn.Module) -> Dict[str, Any]:
        return model(**model.data_preprocessor(data, True), mode='loss')
    return forward


def saved_bytes_exact_vs_actnn(runner: Runner, cfg: Config) -> Tuple[int, int]:
    """Bytes autograd keeps for backward on one training batch: exact model vs ActNN model.

    Same weights, same batch, same seed; counted by ``actnn_mm.saved_bytes.measure_saved_bytes``
    (each storage once, parameters excluded, compressed objects by their ``nbytes``).
    """
    data = next(iter(runner.train_dataloader))
    model = bare_model(runner)
    exact = exact_copy(runner, cfg)
    torch.manual_seed(0)
    got_exact = measure_saved_bytes(exact, forward=loss_forward(data)).total
    torch.manual_seed(0)
    got_actnn = measure_saved_bytes(model, forward=loss_forward(data)).total
    return got_exact, got_actnn


def scalars(work_dir: str) -> List[Dict[str, Any]]:
    """Rows of mmengine's ``vis_data/scalars.json`` (full-precision logged values)."""
    found = [osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs
             if f == 'scalars.json']
    assert found, f'no scalars.json under {work_dir}'
    with open(max(found, key=osp.getmtime)) as f:
        return [json.loads(line) for line in f if line.strip()]


def report(tag: str, **values: Any) -> None:
    """One line per measurement in the test output (``pytest -s``) for the record."""
    print(f'\n[e2e] {tag}: ' + '  '.join(f'{k}={v}' for k, v in values.items()), flush=True)
