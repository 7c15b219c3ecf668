"""ActNNHook against the traps mmengine 0.10.7 sets for module swapping (one test per trap).

The traps (mmengine 0.10.7): the optimizer is built before ``before_run``;
weights load after it; ``model_wrapper_cfg`` is ignored without distribution;
``revert_sync_batchnorm``/``convert_sync_batchnorm`` replace Q norm classes with plain ones;
MoCo deep-copies its encoder and pairs EMA buffers by position; ``init_cfg`` matches direct bases.
"""
from __future__ import annotations

import copy
import os.path as osp
from typing import List

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import actnn_mm  # noqa: F401
from actnn_mm.layers import TWINS
from actnn_mm.saved_bytes import measure_saved_bytes


class _Classifier(BaseModel):
    """An mmdet ResNet-18 backbone (built through mmcv's registries) and a linear head."""

    def __init__(self, norm_type: str = 'BN', backbone_init_cfg=None) -> None:
        super().__init__()
        from mmdet.models.backbones import ResNet
        self.backbone = ResNet(depth=18, norm_cfg=dict(type=norm_type, requires_grad=True),
                               frozen_stages=-1, norm_eval=False, init_cfg=backbone_init_cfg)
        self.head = nn.Linear(512, 3)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        logits = self.head(self.backbone(x)[-1].mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, torch.stack(data_samples)))
        return logits


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 64, 64, generator=g), data_samples=torch.tensor(i % 3))


def _runner(tmp_path, model: nn.Module, lr: float = 0.01, iters: int = 2, **kwargs) -> Runner:
    return Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_Images(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        custom_hooks=[dict(type='ActNNHook', level='L3', parts=['backbone'], log_interval=1)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=iters,
                                           by_epoch=False)),
        env_cfg=dict(dist_cfg=dict(backend='gloo')), **kwargs)


def _norms(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def test_optimizer_built_before_conversion_still_updates_the_converted_model(tmp_path) -> None:
    model = _Classifier()
    runner = _runner(tmp_path, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runner.train()
    opt_params = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert opt_params == {id(p) for p in model.parameters()}
    assert all(type(m) in TWINS for m in _norms(model.backbone)), 'backbone BN not converted'
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith('backbone.conv1') for n in changed), 'converted layers did not train'
    # Per-interval figures reached mmengine's logger.
    hub = runner.message_hub
    assert hub.get_scalar('train/actnn_kept_MB').current() > 0
    assert 1 <= hub.get_scalar('train/actnn_avg_bits').current() <= 8


def test_runner_reverting_sync_bn_does_not_drop_compression(tmp_path) -> None:
    """Without distribution the runner turns (Q)SyncBN into plain BN; the hook runs after."""
    model = _Classifier(norm_type='QSyncBN')
    runner = _runner(tmp_path, model)
    # The trap itself: the runner has already replaced the Q norm layers by a plain BN class.
    from mmengine.model.utils import _BatchNormXd
    assert all(type(m) is _BatchNormXd for m in _norms(model.backbone))
    runner.train()
    norms = _norms(model.backbone)
    assert norms and all(type(m) in TWINS for m in norms)
    exact = _Classifier()
    exact.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 64, 64)
    kept = measure_saved_bytes(model.backbone, x).total
    assert kept * 4 < measure_saved_bytes(exact.backbone, x).total


def test_weights_loaded_after_conversion_land_in_the_q_layers(tmp_path) -> None:
    source = _Classifier()
    ckpt = osp.join(str(tmp_path), 'exact.pth')
    torch.save(dict(state_dict=source.state_dict(), meta=dict()), ckpt)
    model = _Classifier()
    runner = _runner(tmp_path / 'run', model, lr=0.0, load_from=ckpt)
    runner.train()
    for name, tensor in source.state_dict().items():
        if 'num_batches_tracked' in name or 'running' in name:
            continue  # BN statistics move in training even with lr 0
        assert torch.equal(model.state_dict()[name], tensor), name
    assert any(type(m) in TWINS for m in model.modules())


def test_init_cfg_reaches_q_layers_through_their_direct_torch_base(tmp_path) -> None:
    init = [dict(type='Constant', layer='Conv2d', val=0.5),
            dict(type='Constant', layer=['_BatchNorm'], val=0.25)]
    model = _Classifier(backbone_init_cfg=init)
    runner = _runner(tmp_path, model, lr=0.0)
    runner.train()  # before_run converts, then init_weights() runs on the Q-layers
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) in TWINS for m in convs)
    assert all(torch.all(m.weight == 0.5) for m in convs)
    assert all(torch.all(m.weight == 0.25) for m in _norms(model.backbone))


def test_without_distribution_the_hook_converts_no_wrapper_needed(tmp_path) -> None:
    """``model_wrapper_cfg`` is ignored unless distributed: conversion must not rely on it."""
    model = _Classifier()
    runner = _runner(tmp_path, model,
                     cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel')))
    runner.train()
    assert not runner.distributed
    assert sum(type(m) in TWINS for m in model.backbone.modules()) > 20


def test_mocov2_ema_key_encoder_stays_paired_after_conversion() -> None:
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules

    register_all_modules()
    model = MODELS.build(dict(
        type='MoCo', queue_len=16, feat_dim=8, momentum=0.01,
        backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='BN')),
        neck=dict(type='MoCoV2Neck', in_channels=512, hid_channels=64, out_channels=8,
                  with_avg_pool=True),
        head=dict(type='ContrastiveHead', loss=dict(type='CrossEntropyLoss'), temperature=0.2),
        data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1])))
    buffers_before = [n for n, _ in model.backbone.named_buffers()]
    hook = HOOKS.build(dict(type='ActNNHook', level='L3', parts=['backbone', 'neck']))
    hook.convert(model)
    assert [n for n, _ in model.backbone.named_buffers()] == buffers_before
    assert sum(type(m) in TWINS for m in model.backbone.modules()) > 10
    key_encoder = model.encoder_k.module
    assert len(list(key_encoder.buffers())) == len(list(nn.Sequential(
        model.backbone, model.neck).buffers())), 'EMA pairs buffers by position'
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    data = dict(inputs=[torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
                        for _ in range(2)], data_samples=[DataSample() for _ in range(4)])
    model.train()
    losses = model.train_step(data, wrapper)
    assert torch.isfinite(losses['loss'])
    online = nn.Sequential(model.backbone, model.neck)
    assert [n for n, _ in key_encoder.named_buffers()] == [n for n, _ in online.named_buffers()]
    # The EMA step MoCo runs: parameters averaged by name, buffers copied by position.
    k_before = copy.deepcopy(key_encoder.state_dict())
    model.encoder_k.update_parameters(online)
    for (name, b_key), (_, b_online) in zip(key_encoder.named_buffers(), online.named_buffers()):
        assert torch.equal(b_key, b_online), name
    moved = [n for n, p in key_encoder.named_parameters() if not torch.equal(p, k_before[n])]
    assert moved, 'EMA did not update the key encoder'


def test_bad_options_fail_before_training_with_the_valid_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bitz'\].*valid options"):
        HOOKS.build(dict(type='ActNNHook', bitz=2))
    with pytest.raises(ValueError, match=r"unknown level 'L9'.*'L0', 'L1'"):
        HOOKS.build(dict(type='ActNNHook', level='L9'))
    runner = _runner(tmp_path, _Classifier())
    hook = next(h for h in runner.hooks if type(h).__name__ == 'ActNNHook')
    hook.options.parts = ('backbone', 'nekc')
    with pytest.raises(ValueError, match=r"no part 'nekc'.*\['backbone', 'data_preprocessor', "
                                         r"'head'\]"):
        runner.train()
