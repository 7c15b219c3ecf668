"""The models benchmarked, each with its inputs and loss: torchvision ResNet-50 (ImageNet-style
classification) and mmdet's Faster R-CNN R50-FPN (its COCO training resolution).

A workload owns one model on one device and one fixed batch; ``forward()`` returns what the
training step produces (outputs and loss), so the caller can time the step and subtract the
outputs from the memory figure, as ActNN's own benchmark did.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from actnn_mm import saved_bytes

__all__ = ['Workload', 'ResNet50Workload', 'FasterRCNNWorkload', 'WORKLOADS', 'build_workload',
           'default_image_size', 'default_batch']

#: Default image size (H, W) and batch per model and device type.
_DEFAULTS: Dict[str, Dict[str, Tuple[Tuple[int, int], int]]] = {
    'resnet50': {'cuda': ((224, 224), 128), 'cpu': ((224, 224), 2)},
    # mmdet's 1x schedule resizes to 1333x800 (keep ratio); CPU: reduced.
    'faster_rcnn': {'cuda': ((800, 1333), 8), 'cpu': ((320, 480), 1)},
}


def default_image_size(model: str, device: str) -> Tuple[int, int]:
    return _DEFAULTS[model]['cuda' if device.startswith('cuda') else 'cpu'][0]


def default_batch(model: str, device: str) -> int:
    return _DEFAULTS[model]['cuda' if device.startswith('cuda') else 'cpu'][1]


def _record_input(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: report a checkpointed segment's input to the saved-bytes counter.

    Non-reentrant checkpointing keeps each segment's input alive through a closure, not through
    saved-tensor hooks, so the CPU counter would not see it otherwise.
    """
    if args and isinstance(args[0], Tensor):
        saved_bytes.record(args[0])


class _CheckpointBlock(nn.Module):
    """Runs ``block`` under ``torch.utils.checkpoint`` (non-reentrant); keeps only its input."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        saved_bytes.record(x)
        if not (self.training and torch.is_grad_enabled()):
            return self.block(x)
        return checkpoint(self.block, x, use_reentrant=False)


def _to_float(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if type(obj) in (list, tuple):  # exact types: configs and data samples pass unchanged
        return type(obj)(_to_float(o) for o in obj)
    if type(obj) is dict:
        return {k: _to_float(v) for k, v in obj.items()}
    return obj


def _fp32_island(fn: Any, device_type: str) -> Any:
    """``fn`` run with autocast off on fp32 copies of its half-precision tensor arguments (what
    mmdet 2.x's ``force_fp32`` did for ops that have no half kernels)."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return fn(*_to_float(args), **_to_float(kwargs))
    return wrapped


class Workload:
    """One model, its fixed input batch and its loss."""

    name = ''

    def __init__(self, batch: int, image_size: Tuple[int, int], device: torch.device) -> None:
        self.batch = batch
        self.image_size = image_size
        self.device = device
        self.model: nn.Module = nn.Identity()
        self.checkpoint_note = ''

    def forward(self) -> Tuple[Any, Tensor]:
        """One training forward: (outputs to subtract from the memory figure, scalar loss)."""
        raise NotImplementedError

    def actnn_parts(self) -> List[nn.Module]:
        """The modules ActNN converts (sharing one bit allocator)."""
        return [self.model]

    def apply_checkpoint(self, segments: int) -> None:
        raise NotImplementedError

    def prepare_autocast(self) -> None:
        """Called before training under bf16 autocast (e.g. to keep ops without bf16 kernels
        in fp32)."""

    def describe(self) -> str:
        return self.name


class ResNet50Workload(Workload):
    """torchvision ResNet-50, random images and labels, cross-entropy over 1000 classes."""

    name = 'resnet50'

    def __init__(self, batch: int, image_size: Tuple[int, int], device: torch.device) -> None:
        super().__init__(batch, image_size, device)
        import torchvision
        self.net = torchvision.models.resnet50(weights=None).to(device)
        self.model = self.net
        h, w = image_size
        self.x = torch.randn(batch, 3, h, w, device=device)
        self.y = torch.randint(0, 1000, (batch, ), device=device)
        self._segments: List[nn.Module] = []
        self._nseg = 0

    def forward(self) -> Tuple[Any, Tensor]:
        if self._nseg:
            out = checkpoint_sequential(self._segments, self._nseg, self.x, use_reentrant=False)
        else:
            out = self.net(self.x)
        loss = nn.functional.cross_entropy(out, self.y)
        return out, loss

    def apply_checkpoint(self, segments: int) -> None:
        """``checkpoint_sequential`` over 18 units: the stem, the 16 bottlenecks, the head.

        Segments start only at unit boundaries: the stem's in-place ReLU must not begin a
        segment (it would modify the previous segment's output, which checkpointing keeps).
        """
        net = self.net
        units: List[nn.Module] = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)]
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            units += list(stage)
        units.append(nn.Sequential(net.avgpool, nn.Flatten(1), net.fc))
        segments = max(1, min(segments, len(units)))
        size = len(units) // segments
        for start in range(0, size * (segments - 1), size):  # checkpoint_sequential's partition
            units[start].register_forward_pre_hook(_record_input)
        self._segments, self._nseg = units, segments
        self.checkpoint_note = (f'checkpoint_sequential over {len(units)} units (stem, 16 '
                                f'bottlenecks, head) in {segments} segments, use_reentrant=False')

    def describe(self) -> str:
        h, w = self.image_size
        return f'torchvision resnet50, {h}x{w}, 1000 classes, SGD momentum 0.9'


def _package_config(name: str) -> Any:
    """Load ``'mmdet::path.py'`` the way a user's config inherits it (a one-line child)."""
    from mmengine.config import Config
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'child.py')
        with open(path, 'w') as f:
            f.write(f'_base_ = [{name!r}]\n')
        return Config.fromfile(path)


class FasterRCNNWorkload(Workload):
    """mmdet 3.x Faster R-CNN R50-FPN 1x (COCO, 80 classes), random weights (backbone
    ``init_cfg=None``), backbone fully trained as in the paper (``frozen_stages=-1``,
    ``norm_eval=False``); inputs from ``mmdet.testing.demo_mm_inputs``."""

    name = 'faster_rcnn'
    CONFIG = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
    PARTS = ('backbone', 'neck', 'rpn_head', 'roi_head')
    BOXES_PER_IMAGE = 8

    def __init__(self, batch: int, image_size: Tuple[int, int], device: torch.device) -> None:
        super().__init__(batch, image_size, device)
        import numpy as np
        from mmdet.registry import MODELS
        from mmdet.testing import demo_mm_inputs
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=True)
        cfg = _package_config(self.CONFIG)
        cfg.model.backbone.init_cfg = None
        cfg.model.backbone.frozen_stages = -1
        cfg.model.backbone.norm_eval = False
        self.model = MODELS.build(cfg.model)
        self.model.init_weights()
        self.model.to(device)
        np.random.seed(0)
        h, w = image_size
        packed = demo_mm_inputs(batch_size=batch, image_shapes=[(3, h, w)] * batch,
                                num_items=[self.BOXES_PER_IMAGE] * batch, num_classes=80)
        self.data = self.model.data_preprocessor(packed, True)

    def forward(self) -> Tuple[Any, Tensor]:
        losses = self.model(**self.data, mode='loss')
        loss, _ = self.model.parse_losses(losses)
        return losses, loss

    def actnn_parts(self) -> List[nn.Module]:
        return [getattr(self.model, p) for p in self.PARTS]

    def prepare_autocast(self) -> None:
        """mmcv 2.1's nms and RoIAlign have no bf16 kernels: proposal post-processing and RoI
        feature extraction run in fp32, as mmdet 2.x's ``force_fp32`` arranged."""
        dev = self.device.type
        head = self.model.rpn_head
        head.predict_by_feat = _fp32_island(head.predict_by_feat, dev)
        extractor = self.model.roi_head.bbox_roi_extractor
        extractor.forward = _fp32_island(extractor.forward, dev)

    def apply_checkpoint(self, segments: int) -> None:
        """Every backbone bottleneck checkpointed (what mmdet's ``with_cp`` does), non-reentrant;
        ``segments`` does not apply."""
        backbone = self.model.backbone
        for name in backbone.res_layers:
            stage = getattr(backbone, name)
            for i, block in enumerate(list(stage)):
                stage[i] = _CheckpointBlock(block)
        self.checkpoint_note = ('each backbone bottleneck checkpointed (as mmdet with_cp), '
                                'use_reentrant=False; neck and heads exact')

    def describe(self) -> str:
        h, w = self.image_size
        return (f'mmdet faster-rcnn_r50_fpn_1x_coco, random init, backbone fully trained, '
                f'{h}x{w} images, {self.BOXES_PER_IMAGE} boxes each, SGD momentum 0.9')


WORKLOADS = {'resnet50': ResNet50Workload, 'faster_rcnn': FasterRCNNWorkload}


def build_workload(name: str, batch: int, image_size: Sequence[int],
                   device: torch.device) -> Workload:
    """Build a workload with a fixed seed (same weights and inputs for every method)."""
    if name not in WORKLOADS:
        raise ValueError(f'unknown model {name!r}; choose from {sorted(WORKLOADS)}')
    torch.manual_seed(0)
    if device.type == 'cuda':
        torch.cuda.manual_seed_all(0)
    h, w = (image_size[0], image_size[0]) if len(image_size) == 1 else image_size[:2]
    return WORKLOADS[name](batch, (int(h), int(w)), device)
