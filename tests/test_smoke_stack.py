"""The pinned OpenMMLab stack works on this torch: compiled mmcv ops, the three model families
built from the installed packages' own configs, one CPU training step each, and our extension."""
from __future__ import annotations

import copy
from typing import Dict

import pytest
import torch
from mm_configs import load_package_config


def _total_loss(losses: Dict[str, object]) -> torch.Tensor:
    total = torch.zeros(())
    for name, value in losses.items():
        if 'loss' not in name:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        total = total + sum(v.sum() for v in values)
    return total


def _one_step(model: torch.nn.Module, data: dict) -> torch.Tensor:
    """A training step as mmengine runs it: preprocess, loss, backward, SGD update."""
    model.train()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    batch = model.data_preprocessor(data, True)
    loss = _total_loss(model(**batch, mode='loss'))
    assert torch.isfinite(loss), loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), 'no parameter was updated'
    return loss


def test_mmcv_compiled_ops_run() -> None:
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)

    feats = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    rois = torch.tensor([[0, 0, 0, 8, 8], [1, 4, 4, 12, 12]], dtype=torch.float32)
    out = RoIAlign(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(
        feats, rois)
    assert out.shape == (2, 3, 2, 2)
    # RoIAlign of a linear ramp is the ramp at the bin centres: check one value exactly.
    # roi 0 spans [0,8) (aligned: shift -0.5); bin (0,0) centre = (1.5, 1.5) -> 16*1.5 + 1.5
    assert out[0, 0, 0, 0].item() == pytest.approx(16 * 1.5 + 1.5, abs=1e-4)


def test_faster_rcnn_trains_one_step_on_cpu() -> None:
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = load_package_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    data = demo_mm_inputs(2, [(3, 128, 160)] * 2, num_items=[3, 2], num_classes=80)
    _one_step(model, data)


def test_fcn_trains_one_step_on_cpu() -> None:
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = load_package_config('mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py')
    # The base uses SyncBN in three places (a child's norm_cfg does not reach them): plain BN on
    # CPU.
    for part in (cfg.model.backbone, cfg.model.decode_head, cfg.model.auxiliary_head):
        part.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = (64, 64)
    model = MODELS.build(cfg.model)
    inputs, samples = [], []
    for i in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
        seg = torch.randint(0, 19, (1, 64, 64))
        seg[:, :4] = 255  # ignore label present, as in Cityscapes
        sample.gt_sem_seg = PixelData(data=seg)
        samples.append(sample)
    _one_step(model, dict(inputs=inputs, data_samples=samples))


def test_mocov2_trains_one_step_on_cpu() -> None:
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules

    register_all_modules()
    cfg = load_package_config('mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py')
    cfg.model.queue_len = 64  # must divide by the global batch
    model = MODELS.build(cfg.model)
    views = [[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
             for _ in range(2)]  # two augmented views of each of 2 images
    data = dict(inputs=[torch.stack([v[i] for v in views]) for i in range(2)],
                data_samples=[DataSample() for _ in range(2)])
    queue_before = copy.deepcopy(model.queue)
    _one_step(model, data)
    assert not torch.equal(model.queue, queue_before), 'MoCo did not enqueue its keys'


def test_actnn_mm_extension_loads() -> None:
    import actnn_mm._ext_loader as loader

    assert loader.is_built(), \
        'actnn_mm._C is not built: run `pip install --no-build-isolation -e .`'
    module = loader.load_extension()
    assert module.__name__ == 'actnn_mm._C'
    ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("actnn_mm::")]
    assert ops, 'the extension registered no torch.ops.actnn_mm operators'
