"""The stack's known breakages on current tooling stay fixed (see actnn_mm/compat.py)."""
from __future__ import annotations

import importlib.util
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.model import BaseModel
from torch import nn

import actnn_mm  # noqa: F401  (applies the fixes)


class _ToyModel(BaseModel):
    """The smallest mmengine model: a linear regressor with its own loss."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        if mode == 'loss':
            return dict(loss=((out - 1.0) ** 2).mean())
        return out


class _ToyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=torch.full((2,), float(i)), data_samples=None)


def _runner(work_dir: str, **kwargs):
    from mmengine.runner import Runner
    return Runner(
        model=_ToyModel(), work_dir=work_dir,
        train_dataloader=dict(dataset=_ToyData(),
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        env_cfg=dict(dist_cfg=dict(backend='gloo')), **kwargs)


def test_mmengine_checkpoint_resumes_and_loads_under_safe_loading(tmp_path) -> None:
    from mmengine.logging import HistoryBuffer

    work = str(tmp_path / 'run')
    runner = _runner(work)
    runner.train()
    ckpt = osp.join(work, 'iter_4.pth')
    # What mmengine writes really needs the allowed types: a HistoryBuffer full of numpy arrays.
    raw = torch.load(ckpt, weights_only=True)
    assert any(isinstance(v, HistoryBuffer) for v in raw['message_hub']['log_scalars'].values())
    assert raw['meta']['iter'] == 4

    # --resume: the runner continues from iteration 4 with the saved optimizer state.
    resumed = _runner(str(tmp_path / 'resume'), resume=True, load_from=ckpt)
    resumed._train_loop = resumed.build_train_loop(resumed._train_loop)
    resumed.load_or_resume()
    assert resumed.iter == 4
    assert resumed.optim_wrapper.optimizer.state_dict()['state'], 'optimizer state not restored'

    # load_from (weights only, no resume) goes through mmengine.runner.load_checkpoint.
    from mmengine.runner import load_checkpoint
    fresh = _ToyModel()
    load_checkpoint(fresh, ckpt, map_location='cpu')
    assert torch.equal(fresh.linear.weight, runner.model.linear.weight.detach())


class _Payload:
    """Any class that is not on the allow list must still be refused."""

    def __reduce__(self):
        return (print, ('this must never run',))


def test_unexpected_pickled_objects_are_still_refused(tmp_path) -> None:
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': {'x': _Payload()}}, path)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(path)  # torch's default is weights_only=True
    from mmengine.runner import CheckpointLoader
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_numpy_is_below_2_so_mmcv_adjust_hue_works() -> None:
    """numpy 2 makes mmcv.image.adjust_hue raise on negative hue (MoCo v2's ColorJitter)."""
    import mmcv

    assert int(np.__version__.split('.')[0]) < 2, 'requirements pin numpy<2; see compat.py'
    img = (np.random.RandomState(0).rand(8, 8, 3) * 255).astype(np.uint8)
    for factor in (-0.1, -0.03, 0.0, 0.07):
        out = mmcv.adjust_hue(img, factor)
        assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(mmcv.adjust_hue(img, -0.1), img)


def test_package_base_configs_resolve() -> None:
    """mmengine needs pkg_resources (setuptools < 82) to resolve `mmdet::` style bases."""
    from mm_configs import load_package_config

    assert importlib.util.find_spec('pkg_resources') is not None
    for base in ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                 'mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'):
        cfg = load_package_config(base)
        assert 'model' in cfg, base


class _Sneaky:
    """Uses the allowed `getattr` name to reach something other than HistoryBuffer statistics."""

    def __reduce__(self):
        return (getattr, (np.ndarray, 'tofile'))


def test_getattr_allowance_is_limited_to_history_buffer_statistics(tmp_path) -> None:
    path = tmp_path / 'sneaky.pth'
    torch.save({'x': _Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError, match='only HistoryBuffer statistics'):
        torch.load(path)
