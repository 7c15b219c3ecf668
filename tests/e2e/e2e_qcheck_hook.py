"""A test-only hook, imported by configs through ``custom_imports``: after every training
iteration it checks, inside the real (possibly distributed) run, that every ``_BatchNorm`` of a
model part is still an ActNN Q-layer and that it compressed what it saved in that iteration,
then writes what it saw to ``<work_dir>/qcheck_rank<rank>.json``.

Why inside the run: after ``tools/dist_train.sh`` returns, the processes and their models are
gone; what DDP, ``convert_sync_batchnorm`` or the hook did to the modules is only visible there.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Dict, List, Tuple

from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.nn.modules.batchnorm import _BatchNorm

from actnn_mm.layers import TWINS


@HOOKS.register_module()
class QNormCheckHook(Hook):
    """Fail the run unless every ``_BatchNorm`` in ``part`` is a Q-layer that compressed."""

    priority = 'LOW'  # after ActNNHook (VERY_HIGH) has adopted this iteration's schemes

    def __init__(self, part: str = 'backbone') -> None:
        self.part = part
        self.seen: List[Dict[str, Any]] = []

    def _norms(self, runner) -> List[Tuple[str, _BatchNorm]]:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return [(n, m) for n, m in getattr(model, self.part).named_modules()
                if isinstance(m, _BatchNorm)]

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        for _, m in self._norms(runner):  # so that after the iteration `samples` is fresh
            scheme = m.__dict__.get('actnn_scheme')
            if scheme is not None:
                scheme.samples = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        norms = self._norms(runner)
        plain = [f'{n}: {type(m).__name__}' for n, m in norms if type(m) not in TWINS]
        assert norms and not plain, f'{self.part} norms that are not Q-layers: {plain}'
        # A scheme sets `samples` only when it compresses an activation (reset before the iter).
        idle = [n for n, m in norms
                if not getattr(m.__dict__.get('actnn_scheme'), 'samples', 0)]
        assert not idle, f'{self.part} Q norms that compressed nothing: {idle}'
        self.seen.append(dict(iter=runner.iter + 1, q_norms=len(norms),
                              classes=sorted({type(m).__name__ for _, m in norms}),
                              wrapper=type(runner.model).__name__))
        path = osp.join(runner.work_dir, f'qcheck_rank{get_rank()}.json')
        with open(path, 'w') as f:
            json.dump(dict(rank=get_rank(), world_size=get_world_size(), iters=self.seen), f)
