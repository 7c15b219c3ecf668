"""mmengine's ``compile`` (the Runner compiles ``train_step`` after ``before_run``) with
ActNNHook: compression stays on, measured by the kept bytes the hook logs; ``fullgraph=True``,
which cannot be combined with the Q-layers' graph breaks, stops in ``before_run``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import actnn_mm  # noqa: F401  (registers ActNNHook)


class _Net(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                      nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        logits = self.head(self.backbone(x).mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, torch.stack(data_samples)))
        return logits


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 32, 32, generator=g), data_samples=torch.tensor(i % 3))


def _train(tmp_path, level: str, compile_cfg) -> float:
    torch.manual_seed(0)
    runner = Runner(
        model=_Net(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_Images(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        custom_hooks=[dict(type='ActNNHook', level=level, parts=['backbone'], log_interval=1)],
        default_hooks=dict(checkpoint=None), randomness=dict(seed=0),
        env_cfg=dict(dist_cfg=dict(backend='gloo')), cfg=dict(compile=compile_cfg))
    runner.train()
    return runner.message_hub.get_scalar('train/actnn_kept_MB').current()


def test_compile_true_keeps_compressing(tmp_path) -> None:
    eager = _train(tmp_path / 'eager', 'L3', False)
    compiled = _train(tmp_path / 'compiled', 'L3', dict(backend='aot_eager'))
    exact = _train(tmp_path / 'exact', 'L0', dict(backend='aot_eager'))
    assert compiled == pytest.approx(eager, rel=1e-9)
    assert compiled < exact / 4, (compiled, exact)


def test_fullgraph_compile_stops_in_before_run(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r'fullgraph=True\) cannot be combined with ActNN'):
        _train(tmp_path, 'L3', dict(backend='aot_eager', fullgraph=True))
