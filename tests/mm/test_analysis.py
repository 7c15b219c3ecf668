"""tools/analyze_memory.py's measurements on configs this project does not ship.

Detection, segmentation, classification and self-supervised, CNN and transformer, each at a
small size: what it reports per part and per module type adds up, and equals what
``measure_saved_bytes`` counts for the same model, weights, batch and step; the optimizer state
it measures is the config's optimizer's (SGD momentum 1x, AdamW 2x); the input size and batch
come from the full configs' pipelines and loaders.
"""
from __future__ import annotations

from typing import Any, Dict

import pytest

from actnn_mm import measure_saved_bytes
from actnn_mm.mm.analysis.estimate import optimizer_state_factor, peak_estimate
from actnn_mm.mm.analysis.input_size import train_batch_size, train_input_spec
from actnn_mm.mm.analysis.level_run import LevelSpec, forward_loss, prepare, run_level, train_step
from actnn_mm.mm.analysis.model_build import load_config

# config, task, test input size, expected full-size input (h, w) per view, min exact/L3 ratio
CONFIGS = [
    ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'detection', 128,
     [(800, 1344)], 3.0),
    ('mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py', 'detection', 128,
     [(800, 1344)], 3.0),
    ('mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py', 'segmentation', 64,
     [(512, 1024)], 3.0),
    ('mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', 'segmentation', 64,
     [(512, 512)], 3.0),
    ('mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', 'classification', 64,
     [(224, 224)], 3.0),
    ('mmpretrain::deit/deit-tiny_4xb256_in1k.py', 'classification', 64, [(224, 224)], 3.0),
    ('mmpretrain::simclr/simclr_resnet50_16xb256-coslr-200e_in1k.py', 'selfsup', 64,
     [(224, 224)] * 2, 3.0),
    ('mmpretrain::mocov3/mocov3_vit-small-p16_16xb256-amp-coslr-300e_in1k.py', 'selfsup', 64,
     [(224, 224)] * 2, 3.0),
]
IDS = [c[0].split('/')[-1][:-3] for c in CONFIGS]
#: One detector and the two classifiers are quick; the other five (larger models) are marked
#: ``slow`` (left out by ``pytest -m "not slow"``).
FAST = ('fcos_r50-caffe_fpn_gn-head_1x_coco', 'mobilenet-v2_8xb32_in1k', 'deit-tiny_4xb256_in1k')
CONFIGS = [pytest.param(*c, marks=() if i in FAST else (pytest.mark.slow, ))
           for c, i in zip(CONFIGS, IDS)]


def _spec(config: str, level: str, size: int) -> LevelSpec:
    return LevelSpec(config=config, level=level, batch=2, input_size=[size, size])


def _check_sums(res: Dict[str, Any]) -> None:
    assert res['saved_bytes'] > 0
    assert sum(res['saved_by_part'].values()) == res['saved_bytes']
    assert sum(res['saved_by_type'].values()) == res['saved_bytes']
    assert sum(res['saved_by_module'].values()) == res['saved_bytes']
    assert sum(res['exact_by_type'].values()) == res['saved_by_kind'].get('exact', 0)
    assert res['loss_finite'], res['loss']


@pytest.mark.parametrize('config,task,size,full,min_ratio', CONFIGS, ids=IDS)
def test_analysis_cross_checked(config: str, task: str, size: int, full, min_ratio: float
                                ) -> None:
    cfg = load_config(config)
    assert train_input_spec(cfg).sizes == full
    assert train_batch_size(cfg) >= 1
    exact = run_level(_spec(config, 'exact', size))
    l3 = run_level(_spec(config, 'L3', size))
    for res in (exact, l3):
        assert res['task'] == task
        assert res['batch'] == 2 and all(s == [size, size] for s in res['input_sizes'])
        assert len(res['input_sizes']) == len(full)
        _check_sums(res)
    assert exact['param_bytes'] == l3['param_bytes']
    assert set(exact['saved_by_part']) >= set(l3['saved_by_part']) - {'(model)'}
    assert exact['saved_bytes'] / l3['saved_bytes'] >= min_ratio, \
        (exact['saved_bytes'], l3['saved_bytes'])
    assert l3['conversion'], 'L3 converted nothing'
    # the same model, batch and warm-up step, counted by measure_saved_bytes
    prep = prepare(_spec(config, 'L3', size))
    train_step(prep)
    counted = measure_saved_bytes(prep.model, prep.data,
                                  forward=lambda m, d: forward_loss(m, d)[0])
    assert counted.total == l3['saved_bytes']
    # optimizer state: what the config's optimizer type implies, as measured after the step
    opt = dict(cfg.optim_wrapper.optimizer)
    factor = optimizer_state_factor(opt)
    assert exact['optimizer_state_bytes'] == pytest.approx(
        factor * exact['trainable_param_bytes'], rel=0.01, abs=4096)
    est = peak_estimate(l3, factor)
    assert est['total'] == est['params'] + est['grads'] + est['optimizer_state'] + \
        est['activations'] + est['transient']


CUSTOM_MODULE = '''
import torch
from torch import nn
from mmpretrain.registry import MODELS


@MODELS.register_module(force=True)
class TinyUserNet(nn.Module):
    """A user's own backbone: conv, BN, ReLU, and a gate the saved-tensor path compresses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.conv2(x * torch.sigmoid(x))
        return (x, )
'''

USER_CONFIG = '''
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']
custom_imports = dict(imports=['{module}'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='TinyUserNet'),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(in_channels=32, num_classes=10))
'''


def test_users_own_config_with_custom_imports(tmp_path, monkeypatch) -> None:
    """A config the user wrote, whose backbone comes from their own module through
    ``custom_imports``: the analysis builds it, converts it and counts its saved bytes."""
    module = 'user_tiny_net_for_analysis'
    (tmp_path / f'{module}.py').write_text(CUSTOM_MODULE)
    config = tmp_path / 'my_classifier.py'
    config.write_text(USER_CONFIG.format(module=module))
    monkeypatch.syspath_prepend(str(tmp_path))
    exact = run_level(_spec(str(config), 'exact', 32))
    l3 = run_level(_spec(str(config), 'L3', 32))
    assert exact['model'] == l3['model'] == 'ImageClassifier'
    for res in (exact, l3):
        _check_sums(res)
        assert res['input_sizes'] == [[32, 32]]
        assert 'backbone' in res['saved_by_part']
    assert l3['conversion']['model']['converted']['Conv2d -> QConv2d'] == 2
    assert exact['saved_bytes'] / l3['saved_bytes'] >= 4, (exact['saved_bytes'],
                                                           l3['saved_bytes'])
