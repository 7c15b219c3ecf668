"""Models beyond the paper's five take ActNN from ``custom_imports`` and the
``actnn`` section alone: Mask R-CNN R50-FPN (mmdet's config) and Mask R-CNN Swin-T, whose
attention is functional code compressed through the saved-tensor (generic) path.

Trained 2 iterations on the synthetic COCO data (it has polygon masks) at 160 px to keep CPU
time down; evaluated with bbox and segm mAP; saved bytes compared with the exact model.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import pytest
from e2e_helpers import (
    DEMO,
    actnn_hook,
    bare_model,
    load_demo_config,
    report,
    saved_bytes_exact_vs_actnn,
    scalar,
    short_schedule,
    train,
)
from mmengine.config import Config

from actnn_mm.forward_context import installed
from actnn_mm.layers import QLAYERS

OTHER = ('mask_rcnn_r50_fpn_demo', 'mask_rcnn_swin-t_fpn_demo')
SMALL = {'train_dataloader.dataset.pipeline.2.scale': (160, 160),
         'val_dataloader.dataset.pipeline.1.scale': (160, 160)}
Q_NAMES = {q.__name__ for q in QLAYERS.values()} | {'QConv', 'QBN', 'QSyncBN', 'QReLU'}


def _types(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if 'type' in obj:
            yield str(obj['type'])
        for v in obj.values():
            yield from _types(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _types(v)


@pytest.mark.parametrize('name', OTHER)
def test_config_switches_actnn_on_with_custom_imports_and_the_section_only(name: str) -> None:
    cfg = Config.fromfile(f'{DEMO}/{name}.py')
    assert cfg.custom_imports == dict(imports=['actnn_mm'], allow_failed_imports=False)
    assert cfg.actnn == dict(level='L3', parts=['backbone', 'neck', 'rpn_head', 'roi_head'])
    used = set(_types(cfg.model))
    assert not used & Q_NAMES, f'the model itself names ActNN layers: {used & Q_NAMES}'
    assert 'ActNNHook' not in str(cfg.get('custom_hooks', ''))
    assert cfg.model.backbone.init_cfg is None  # offline


@pytest.mark.parametrize('name', OTHER)
def test_other_model_trains_with_actnn_and_keeps_fewer_bytes(name: str, in_demo_cwd: str,
                                                             tmp_path) -> None:
    cfg = load_demo_config(name, str(tmp_path / 'work'), {**short_schedule(2), **SMALL})
    runner = train(cfg)
    assert runner.iter == 2
    hook = actnn_hook(runner)
    backbone = bare_model(runner).backbone
    converted = {type(m).__name__ for m in backbone.modules() if type(m) in QLAYERS.values()}
    if 'swin' in name:
        assert {'QLinear', 'QLayerNorm', 'QGELU'} <= converted, converted
        ctx = installed(backbone)  # the generic path: per-site schemes of functional ops
        assert ctx is not None and ctx._schemes, 'saved-tensor compression never engaged'
    else:
        assert {'QConv2d', 'QBatchNorm2d', 'QReLU'} <= converted, converted
    assert sum(r.num_converted for r in hook.reports.values()) > 50
    values = {k: scalar(runner, f'val/coco/{k}') for k in ('bbox_mAP', 'segm_mAP')}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in values.values()), values

    exact, actnn = saved_bytes_exact_vs_actnn(runner, cfg)
    report(name, **values, saved_exact_MiB=round(exact / 2**20, 2),
           saved_actnn_MiB=round(actnn / 2**20, 2), ratio=round(exact / actnn, 1))
    assert actnn * 4 < exact, f'ActNN kept {actnn} bytes, exact {exact}: less than 4x smaller'
