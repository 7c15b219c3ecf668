#!/usr/bin/env python
"""ActNN on the installed OpenMMLab model zoos: exact at L0, finite and close at L2/L3, fewer bytes.

    python tools/zoo_check.py                          # the whole zoo, writes docs/zoo.md
    python tools/zoo_check.py --subset ci --out none   # the test suite's subset, table only
    python tools/zoo_check.py --breakdown 5 \
        --configs deit-tiny_4xb256_in1k segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512

Each model is built from its package's own config (``<package>/.mim/configs/``) with random
initialisation (every ``Pretrained`` init and ``pretrained=`` removed; loading any checkpoint is
refused), SyncBN reverted to BN as mmengine's runner does without distribution, and fed
synthetic batches through its own data preprocessor: detection batches in the style of
``mmdet.testing.demo_mm_inputs`` (boxes, labels, bitmap masks), segmentation label maps,
classification labels, and for self-supervised models the views their pipeline makes. Then, at
batch ``--batch``, one training step (the sum of the model's losses):

* exact gradients on batch A, and on batch B of the same shape: the *noise*
  ``||g_B - g_A|| / ||g_A||``, how far SGD itself moves the gradient;
* the whole model converted with ``actnn_mm.convert`` at L0 (gradients must equal the exact ones
  bit for bit), L2 and L3: the *error* ``||g_L - g_A|| / ||g_A||`` over all parameters, same batch,
  same seed. L3 first takes ``--warmup`` steps on batch B with ``BitAllocator.step()`` after each,
  so its per-layer bit allocation is the one training uses from the second iteration on.
  Stochastic rounding draws from a generator of its own (``rounding_generator``), so the model's
  random ops (proposal sampling, dropout, masking) draw exactly as in the exact run;
* bytes autograd keeps for backward (``SavedBytesCounter``), exact (unconverted model, same
  weights) and L3.

Prints a progress line per model and the table, checks the targets, and writes the table to
``--out`` (default ``docs/zoo.md``) with the command, the machine and the torch version.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import os
import os.path as osp
import platform
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from actnn_mm import SavedBytesCounter, convert, revert  # noqa: E402
from actnn_mm.engine import CompressionConfig, rounding_generator  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The zoo

DET, SEG, CLS, SSL = 'mmdet', 'mmseg', 'mmpretrain', 'selfsup'


@dataclass(frozen=True)
class Entry:
    """One installed config: package, path under ``.mim/configs``, family, input size (px)."""

    package: str
    config: str
    family: str
    size: int

    @property
    def name(self) -> str:
        return osp.splitext(osp.basename(self.config))[0]


def _e(package: str, config: str, family: str, size: int) -> Entry:
    return Entry(package, config, family, size)


ZOO: Tuple[Entry, ...] = (
    # mmdet: two-stage, one-stage, DETR family, instance segmentation
    _e('mmdet', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'det two-stage', 96),
    _e('mmdet', 'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', 'det two-stage', 96),
    _e('mmdet', 'sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', 'det two-stage (query)', 96),
    _e('mmdet', 'retinanet/retinanet_r50_fpn_1x_coco.py', 'det one-stage', 96),
    _e('mmdet', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'det one-stage', 96),
    _e('mmdet', 'atss/atss_r50_fpn_1x_coco.py', 'det one-stage', 96),
    _e('mmdet', 'centernet/centernet_r18_8xb16-crop512-140e_coco.py', 'det one-stage', 96),
    _e('mmdet', 'yolox/yolox_tiny_8xb8-300e_coco.py', 'det one-stage real-time', 96),
    _e('mmdet', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py', 'det one-stage real-time', 96),
    _e('mmdet', 'ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', 'det one-stage mobile', 96),
    _e('mmdet', 'detr/detr_r50_8xb2-150e_coco.py', 'det DETR', 96),
    _e('mmdet', 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', 'det DETR', 96),
    # DINO selects its 900 queries among the encoder's tokens: >= 900 of them from 256 px on
    _e('mmdet', 'dino/dino-4scale_r50_8xb2-12e_coco.py', 'det DETR', 256),
    _e('mmdet', 'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py', 'det DETR', 96),
    _e('mmdet', 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'det instance seg', 96),
    _e('mmdet', 'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', 'det instance seg', 96),
    _e('mmdet', 'yolact/yolact_r50_1xb8-55e_coco.py', 'det instance seg', 96),
    _e('mmdet', 'solov2/solov2-light_r18_fpn_ms-3x_coco.py', 'det instance seg', 96),
    _e('mmdet', 'rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py', 'det instance seg', 96),
    # mmseg: CNNs, real-time and mobile nets, transformers
    _e('mmseg', 'fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'seg CNN', 96),
    _e('mmseg', 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py', 'seg CNN', 96),
    _e('mmseg', 'deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py',
       'seg CNN', 96),
    _e('mmseg', 'ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py', 'seg CNN', 96),
    _e('mmseg', 'bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py', 'seg real-time', 96),
    _e('mmseg', 'bisenetv1/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.py',
       'seg real-time', 96),
    _e('mmseg', 'stdc/stdc1_4xb12-80k_cityscapes-512x1024.py', 'seg real-time', 96),
    _e('mmseg', 'ddrnet/ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024.py',
       'seg real-time', 96),
    _e('mmseg', 'pidnet/pidnet-s_2xb6-120k_1024x1024-cityscapes.py', 'seg real-time', 96),
    _e('mmseg', 'fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py', 'seg mobile', 96),
    # LR-ASPP pools its 1/8 map with a 49 x 49 window, stride (16, 20)
    _e('mmseg', 'mobilenet_v3/mobilenet-v3-d8-scratch-s_lraspp_4xb4-320k_cityscapes-512x1024.py',
       'seg mobile', 416),
    _e('mmseg', 'erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py', 'seg mobile', 96),
    _e('mmseg', 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', 'seg transformer', 96),
    _e('mmseg', 'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
       'seg transformer', 96),
    _e('mmseg', 'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
       'seg transformer', 96),
    _e('mmseg', 'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
       'seg transformer', 96),
    # mmpretrain: classification CNNs, mobile nets, transformers
    _e('mmpretrain', 'resnet/resnet50_8xb32_in1k.py', 'cls CNN', 64),
    _e('mmpretrain', 'resnet/resnet18_8xb32_in1k.py', 'cls CNN', 64),
    _e('mmpretrain', 'convnext/convnext-tiny_32xb128_in1k.py', 'cls CNN', 64),
    _e('mmpretrain', 'mobilenet_v2/mobilenet-v2_8xb32_in1k.py', 'cls mobile', 64),
    _e('mmpretrain', 'mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py', 'cls mobile', 64),
    _e('mmpretrain', 'shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py', 'cls mobile', 64),
    _e('mmpretrain', 'efficientnet/efficientnet-b0_8xb32_in1k.py', 'cls mobile', 64),
    _e('mmpretrain', 'mobilevit/mobilevit-xxsmall_8xb128_in1k.py', 'cls mobile', 64),
    _e('mmpretrain', 'vision_transformer/vit-base-p16_64xb64_in1k.py', 'cls transformer', 64),
    _e('mmpretrain', 'deit/deit-tiny_4xb256_in1k.py', 'cls transformer', 64),
    # Swin's last stage (1/32) must hold its 7 x 7 window; MAE's position table is 14 x 14
    _e('mmpretrain', 'swin_transformer/swin-tiny_16xb64_in1k.py', 'cls transformer', 224),
    # mmpretrain: self-supervised
    _e('mmpretrain', 'mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py', 'self-sup', 64),
    _e('mmpretrain', 'simclr/simclr_resnet50_8xb32-coslr-200e_in1k.py', 'self-sup', 64),
    _e('mmpretrain', 'byol/byol_resnet50_16xb256-coslr-200e_in1k.py', 'self-sup', 64),
    _e('mmpretrain', 'barlowtwins/barlowtwins_resnet50_8xb256-coslr-300e_in1k.py', 'self-sup', 64),
    _e('mmpretrain', 'swav/swav_resnet50_8xb32-mcrop-coslr-200e_in1k-224px-96px.py',
       'self-sup', 64),
    _e('mmpretrain', 'mocov3/mocov3_vit-small-p16_16xb256-amp-coslr-300e_in1k.py', 'self-sup', 64),
    _e('mmpretrain', 'mae/mae_vit-base-p16_8xb512-amp-coslr-300e_in1k.py', 'self-sup', 224),
)

#: Named subsets. ``ci``: one small model per failure class once seen (in-place ops on a
#: QLinear output, LayerNorm rows of tiny variance, NaN, BN-heavy real-time net), run by tests.
SUBSETS: Dict[str, Tuple[str, ...]] = {
    'ci': ('deit-tiny_4xb256_in1k', 'segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512',
           'bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024', 'mobilenet-v3-small_8xb128_in1k',
           'detr_r50_8xb2-150e_coco', 'faster-rcnn_r50_fpn_1x_coco', 'yolact_r50_1xb8-55e_coco'),
}

LEVELS = ('L0', 'L2', 'L3')

# ---------------------------------------------------------------------------------------------
# Building a model from its config, offline


def quiet() -> None:
    """Only errors from mmengine's logger (init_weights logs every parameter) and no warnings."""
    import logging
    import warnings

    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine').setLevel(logging.ERROR)
    logging.getLogger('mmengine').setLevel(logging.ERROR)
    warnings.filterwarnings('ignore')


def config_path(entry: Entry) -> str:
    pkg = importlib.import_module(entry.package)
    return osp.join(osp.dirname(pkg.__file__), '.mim', 'configs', entry.config)


def _strip_pretrained(obj: Any) -> Any:
    """The config with every ``Pretrained`` init_cfg and ``pretrained=`` path removed."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == 'pretrained' and isinstance(value, str):
                out[key] = None
            elif key == 'init_cfg' and _loads_checkpoint(value):
                out[key] = None
            else:
                out[key] = _strip_pretrained(value)
        return type(obj)(out) if not hasattr(obj, 'to_dict') else out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip_pretrained(v) for v in obj)
    return obj


def _loads_checkpoint(init_cfg: Any) -> bool:
    items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(i, dict) and (i.get('type') == 'Pretrained' or 'checkpoint' in i)
               for i in items)


@contextlib.contextmanager
def no_checkpoint_loading() -> Iterator[None]:
    """Refuse any checkpoint load or download while a model is built and initialised."""
    from mmengine.runner import checkpoint as ckpt

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f'would load a checkpoint ({args[0] if args else kwargs})')

    saved = (ckpt.CheckpointLoader.load_checkpoint, torch.hub.load_state_dict_from_url,
             torch.hub.download_url_to_file)
    ckpt.CheckpointLoader.load_checkpoint = refuse
    torch.hub.load_state_dict_from_url = refuse
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        (ckpt.CheckpointLoader.load_checkpoint, torch.hub.load_state_dict_from_url,
         torch.hub.download_url_to_file) = saved


#: Batch augments that resize or pad the batch to a fixed (large) size: dropped, so the input
#: size stays the one in the table.
_SIZE_AUGMENTS = ('BatchSyncRandomResize', 'BatchFixedSizePad')


def build(entry: Entry, size: int) -> Tuple[nn.Module, Any]:
    """(model in train mode, its config) for ``entry``, randomly initialised, offline."""
    from mmengine.config import Config, ConfigDict
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    quiet()
    importlib.import_module(f'{entry.package}.utils').register_all_modules(False)
    cfg = Config.fromfile(config_path(entry))
    init_default_scope(cfg.get('default_scope', entry.package))
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
    if 'data_preprocessor' not in model_cfg and cfg.get('data_preprocessor') is not None:
        model_cfg['data_preprocessor'] = cfg.data_preprocessor.to_dict()  # what the runner does
    model_cfg = ConfigDict(_strip_pretrained(model_cfg))  # attribute access (train_cfg.rpn)
    pre = model_cfg.get('data_preprocessor') or {}
    if 'size' in pre and pre['size'] is not None:  # mmseg pads every batch to the crop size
        pre['size'] = (size, size)
    if pre.get('batch_augments'):
        pre['batch_augments'] = [a for a in pre['batch_augments']
                                 if a.get('type') not in _SIZE_AUGMENTS] or None
    registry = importlib.import_module(f'{entry.package}.registry').MODELS
    with no_checkpoint_loading():
        model = registry.build(model_cfg)
        if hasattr(model, 'init_weights'):
            model.init_weights()
    reset_zero_weights(model)
    model = revert_sync_batchnorm(model)
    return model.train(), cfg


def reset_zero_weights(model: nn.Module) -> List[str]:
    """Re-initialise (torch defaults) layers whose weight the config initialises to all zeros:
    a zero-initialised classifier (mmpretrain's ViT head) or residual-branch norm makes every
    gradient upstream of it exactly zero at the first step, which would compare nothing."""
    names = []
    for name, m in model.named_modules():
        w = getattr(m, 'weight', None)
        if isinstance(w, nn.Parameter) and w.numel() > 1 and hasattr(m, 'reset_parameters') \
                and not w.detach().any():
            m.reset_parameters()
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# Synthetic batches (raw, before the model's data preprocessor)


def _find(obj: Any, key: str) -> Optional[Any]:
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], (dict, list)):
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _image(rng: np.random.RandomState, size: int) -> torch.Tensor:
    """A uint8 (3, size, size) image: smooth random blobs plus noise (not pure noise)."""
    low = rng.rand(3, 8, 8).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=(size, size),
                                          mode='bilinear', align_corners=False)[0]
    img = img * 200 + torch.from_numpy(rng.rand(3, size, size).astype(np.float32)) * 55
    return img.clamp(0, 255).to(torch.uint8)


def det_batch(cfg: Any, size: int, batch: int, seed: int) -> dict:
    """``mmdet.testing.demo_mm_inputs``-style inputs, seeded: 1-6 boxes per image with labels,
    and bitmap masks where the config's training pipeline loads them (RTMDet's assigner reads
    masks when present, and only as a tensor)."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.RandomState(seed)
    num_classes = int(_find(cfg.model, 'num_classes') or 80)
    with_mask = bool(_find(cfg.get('train_dataloader', {}), 'with_mask'))
    inputs, samples = [], []
    for idx in range(batch):
        inputs.append(_image(rng, size))
        sample = DetDataSample()
        sample.set_metainfo(dict(img_id=idx, img_shape=(size, size), ori_shape=(size, size),
                                 scale_factor=(1.0, 1.0), flip=False, flip_direction=None,
                                 border=[0, size, 0, size], pad_shape=(size, size)))
        n = int(rng.randint(1, 7))
        cx, cy = rng.uniform(0.2, 0.8, (2, n)) * size
        w, h = rng.uniform(0.15, 0.6, (2, n)) * size
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clip(0, size)
        masks = np.zeros((n, size, size), dtype=np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            masks[i, y0:y1, x0:x1] = 1
        gt = InstanceData()
        gt.bboxes = torch.tensor(boxes, dtype=torch.float32)
        gt.labels = torch.tensor(rng.randint(0, num_classes, n), dtype=torch.long)
        if with_mask:
            gt.masks = BitmapMasks(masks, size, size)
        sample.gt_instances = gt
        ignored = InstanceData()
        ignored.bboxes = torch.zeros(0, 4)
        ignored.labels = torch.zeros(0, dtype=torch.long)
        sample.ignored_instances = ignored
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def seg_batch(cfg: Any, size: int, batch: int, seed: int) -> dict:
    """Images with blocky random label maps (and their edge maps, which PIDNet's loss reads)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    rng = np.random.RandomState(seed)
    num_classes = int(_find(cfg.model.get('decode_head', {}), 'num_classes') or 19)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(_image(rng, size))
        low = torch.from_numpy(rng.randint(0, num_classes, (1, 1, 8, 8))).float()
        label = torch.nn.functional.interpolate(low, size=(size, size), mode='nearest')[0]
        label = label.long()
        edge = torch.zeros_like(label)
        edge[:, 1:, :] |= (label[:, 1:, :] != label[:, :-1, :]).long()
        edge[:, :, 1:] |= (label[:, :, 1:] != label[:, :, :-1]).long()
        sample = SegDataSample()
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                                 pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=label)
        sample.gt_edge_map = PixelData(data=edge)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _view_sizes(cfg: Any, size: int) -> Optional[List[int]]:
    """Sizes of the views a self-supervised pipeline's ``MultiView`` makes (scaled so the first
    is ``size``), or None for a single-view pipeline."""
    pipeline = cfg.get('train_dataloader', {}).get('dataset', {}).get('pipeline', [])
    for t in pipeline:
        if t.get('type') != 'MultiView':
            continue
        nums = t['num_views'] if isinstance(t['num_views'], (list, tuple)) else [t['num_views']]
        crops = []
        for transforms in t['transforms']:
            scale = next((x.get('scale') for x in transforms
                          if x.get('type') == 'RandomResizedCrop'), None)
            crops.append(int(scale) if isinstance(scale, (int, float)) else 224)
        return [max(32, round(size * c / crops[0])) for n, c in zip(nums, crops)
                for _ in range(n)]
    return None


def cls_batch(cfg: Any, size: int, batch: int, seed: int, selfsup: bool) -> dict:
    from mmpretrain.structures import DataSample

    rng = np.random.RandomState(seed)
    num_classes = int(_find(cfg.model.get('head', {}), 'num_classes') or 1000)
    samples = []
    for _ in range(batch):
        sample = DataSample()
        if not selfsup:
            sample.set_gt_label(int(rng.randint(0, num_classes)))
        samples.append(sample)
    views = _view_sizes(cfg, size) if selfsup else None
    if views is None:
        inputs: Any = [_image(rng, size) for _ in range(batch)]
        if selfsup:
            inputs = torch.stack(inputs)
        return dict(inputs=inputs, data_samples=samples)
    inputs = [torch.stack([_image(rng, s) for _ in range(batch)]) for s in views]
    return dict(inputs=inputs, data_samples=samples)


def is_selfsup(cfg: Any) -> bool:
    return 'SelfSupDataPreprocessor' in str(cfg.get('data_preprocessor', cfg.model.get(
        'data_preprocessor', '')))


def make_batch(entry: Entry, cfg: Any, size: int, batch: int, seed: int) -> dict:
    if entry.package == DET:
        return det_batch(cfg, size, batch, seed)
    if entry.package == SEG:
        return seg_batch(cfg, size, batch, seed)
    return cls_batch(cfg, size, batch, seed, is_selfsup(cfg))


# ---------------------------------------------------------------------------------------------
# One training step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Step:
    """Gradients of one step (by parameter name), loss, bytes kept for backward."""

    grads: Dict[str, torch.Tensor]
    loss: float
    saved: Optional[Any] = None  # SavedBytesReport


class Runner:
    """Runs training steps of one model from one saved state (parameters and buffers restored
    before every step: MoCo's queue and key encoder, BN statistics), seeded alike."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state = copy.deepcopy(model.state_dict())

    def step(self, raw: dict, seed: int, count: bool = False) -> Step:
        model = self.model
        model.load_state_dict(self.state)
        model.train()
        seed_everything(seed)
        data = model.data_preprocessor(copy.deepcopy(raw), True)
        counter = SavedBytesCounter(model) if count else contextlib.nullcontext()
        gen = torch.Generator().manual_seed(seed + 12345)
        with rounding_generator(gen), counter:
            losses = model(**data, mode='loss') if isinstance(data, dict) else \
                model(*data, mode='loss')
        loss, _ = model.parse_losses(losses)
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                grads[name] = p.grad.detach().clone() if p.grad is not None else \
                    torch.zeros_like(p)
        model.zero_grad(set_to_none=True)
        return Step(grads, float(loss.detach()), counter.report if count else None)


def flat(grads: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads.values()])


def rel_error(a: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]) -> float:
    """||a - ref|| / ||ref|| over all parameters (inf when ``a`` is not finite)."""
    fa, fr = flat(a), flat(ref)
    if not torch.isfinite(fa).all():
        return math.inf
    return float((fa - fr).norm() / fr.norm())


def breakdown(a: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor],
              top: int) -> List[Tuple[str, float, float]]:
    """(parameter, share of the squared error, its own relative error), largest share first."""
    total = sum(float((a[k].double() - ref[k].double()).pow(2).sum()) for k in ref)
    rows = []
    for k in ref:
        d = float((a[k].double() - ref[k].double()).pow(2).sum())
        own = float(ref[k].double().norm())
        rows.append((k, d / total if total > 0 else 0.0,
                     math.sqrt(d) / own if own > 0 else math.inf))
    rows.sort(key=lambda r: -r[1] if math.isfinite(r[1]) else -math.inf)
    return rows[:top]


def exact_holders(report: Any, top: int = 3) -> List[Tuple[str, int]]:
    """Modules (two name levels) holding the most bytes kept exact, largest first."""
    out: Dict[str, int] = {}
    for name, n in report.exact_by_module.items():
        key = '.'.join(name.split('.')[:2]) if name else '(model)'
        out[key] = out.get(key, 0) + n
    return sorted(out.items(), key=lambda kv: -kv[1])[:top]


def exact_reasons(report: Any, top: int = 3) -> List[Tuple[str, int]]:
    """Why the bytes kept exact stayed exact (the pack hook's reasons), largest first."""
    return sorted(report.exact_by_reason.items(), key=lambda kv: -kv[1])[:top]


def level_config(text: str) -> CompressionConfig:
    """'L3' or 'L3,per_layer=False,bits=2' -> CompressionConfig."""
    level, *pairs = text.split(',')
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition('=')
        options[key] = {'True': True, 'False': False}.get(value)
        if options[key] is None:
            options[key] = float(value) if '.' in value else int(value)
    return CompressionConfig.from_level(level, **options)


# ---------------------------------------------------------------------------------------------
# Checking one model


@dataclass
class Result:
    entry: Entry
    size: int
    built: bool = False
    reason: str = ''
    l0_exact: Optional[bool] = None
    finite: Dict[str, bool] = field(default_factory=dict)
    noise: float = math.nan
    error: Dict[str, float] = field(default_factory=dict)
    bytes_exact: int = 0
    bytes_l3: int = 0
    exact_share_l3: float = math.nan  # share of the L3 bytes kept exact (uncompressed tensors)
    exact_top_l3: List[Tuple[str, int]] = field(default_factory=list)  # modules holding them
    exact_why_l3: List[Tuple[str, int]] = field(default_factory=list)  # why they stayed exact
    breakdowns: Dict[str, List[Tuple[str, float, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.entry.name

    def ratio(self, level: str) -> float:
        noise = self.noise
        return self.error.get(level, math.nan) / noise if noise > 0 else math.inf

    @property
    def bytes_ratio(self) -> float:
        return self.bytes_exact / self.bytes_l3 if self.bytes_l3 else math.nan


def check(entry: Entry, batch: int = 2, size: Optional[int] = None, warmup: int = 1,
          top: int = 0, levels: Sequence[str] = LEVELS) -> Result:
    """The zoo procedure (module docstring) on one config."""
    size = size or entry.size
    res = Result(entry, size)
    start = time.perf_counter()
    try:
        seed_everything(0)
        model, cfg = build(entry, size)
    except Exception as exc:  # noqa: BLE001 - reported in the table, never dropped
        res.reason = f'not built: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}'
        res.seconds = time.perf_counter() - start
        return res
    res.built = True
    try:
        raw_a = make_batch(entry, cfg, size, batch, seed=1)
        raw_b = make_batch(entry, cfg, size, batch, seed=2)
        runner = Runner(model)
        exact = runner.step(raw_a, seed=1, count=True)
        other = runner.step(raw_b, seed=1)
        res.noise = rel_error(other.grads, exact.grads)
        res.bytes_exact = exact.saved.total
        for level in levels:
            convert(model, level_config(level))
            try:
                if level_config(level).per_layer:
                    for _ in range(warmup):  # its backward steps the allocator: a solve
                        runner.step(raw_b, seed=2)
                got = runner.step(raw_a, seed=1, count=level == 'L3')
            finally:
                revert(model)
            g = flat(got.grads)
            res.finite[level] = bool(torch.isfinite(g).all())
            if level == 'L0':
                res.l0_exact = all(torch.equal(got.grads[k], exact.grads[k])
                                   for k in exact.grads)
            res.error[level] = rel_error(got.grads, exact.grads)
            if top and level != 'L0':
                res.breakdowns[level] = breakdown(got.grads, exact.grads, top)
            if level == 'L3':
                res.bytes_l3 = got.saved.total
                kept = got.saved.by_kind.get('exact', 0)
                res.exact_share_l3 = kept / max(1, got.saved.total)
                res.exact_top_l3 = exact_holders(got.saved)
                res.exact_why_l3 = exact_reasons(got.saved)
    except Exception as exc:  # noqa: BLE001
        res.reason = f'failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}'
        if os.environ.get('ZOO_CHECK_TRACEBACK'):
            traceback.print_exc()
    res.seconds = time.perf_counter() - start
    return res


# ---------------------------------------------------------------------------------------------
# Targets, table, report

L3_MAX, L2_MAX, L3_MEDIAN_MAX, BYTES_MEDIAN_MIN, BYTES_EXPLAIN_BELOW = 2.0, 1.0, 0.8, 10.0, 5.0


def ok(res: Result) -> bool:
    return res.built and not res.reason


def target_misses(results: Sequence[Result]) -> List[str]:
    """Every target of the zoo check that ``results`` miss (empty: all met)."""
    misses = []
    done = [r for r in results if ok(r)]
    for r in results:
        if r.built and r.reason:
            misses.append(f'{r.name}: {r.reason}')
    for r in done:
        if r.l0_exact is False:
            misses.append(f'{r.name}: L0 gradients differ from exact')
        for level, finite in r.finite.items():
            if not finite:
                misses.append(f'{r.name}: {level} gradients not finite')
        if 'L3' in r.error and not r.ratio('L3') <= L3_MAX:
            misses.append(f'{r.name}: L3 error/noise {r.ratio("L3"):.3g} > {L3_MAX}')
        if 'L2' in r.error and not r.ratio('L2') <= L2_MAX:
            misses.append(f'{r.name}: L2 error/noise {r.ratio("L2"):.3g} > {L2_MAX}')
    l3 = [r.ratio('L3') for r in done if 'L3' in r.error]
    if l3 and not statistics.median(l3) <= L3_MEDIAN_MAX:
        misses.append(f'median L3 error/noise {statistics.median(l3):.3g} > {L3_MEDIAN_MAX}')
    ratios = [r.bytes_ratio for r in done if r.bytes_l3]
    if ratios and not statistics.median(ratios) >= BYTES_MEDIAN_MIN:
        misses.append(f'median L3 saved-bytes ratio {statistics.median(ratios):.3g} < '
                      f'{BYTES_MEDIAN_MIN}')
    return misses


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or isinstance(x, float) and math.isnan(x):
        return '-'
    if math.isinf(x):
        return 'inf'
    return f'{x:.{digits}f}' if abs(x) < 100 else f'{x:.3g}'


HEADER = ('model', 'package', 'family', 'px', 'L0 = exact', 'finite L2/L3', 'noise',
          'L2 err/noise', 'L3 err/noise', 'exact MiB', 'L3 MiB', 'x smaller', 's')


def row(r: Result) -> List[str]:
    e = r.entry
    if not ok(r):
        return [r.name, e.package, e.family, str(r.size), '-', '-', '-', '-', '-', '-', '-', '-',
                f'{r.seconds:.0f}']
    finite = '/'.join('yes' if r.finite.get(lv) else 'NO' for lv in ('L2', 'L3'))
    return [r.name, e.package, e.family, str(r.size), 'yes' if r.l0_exact else 'NO', finite,
            _fmt(r.noise, 3), _fmt(r.ratio('L2')), _fmt(r.ratio('L3')),
            _fmt(r.bytes_exact / 2**20, 1), _fmt(r.bytes_l3 / 2**20, 2), _fmt(r.bytes_ratio, 1),
            f'{r.seconds:.0f}']


def summary(results: Sequence[Result]) -> Dict[str, Any]:
    done = [r for r in results if ok(r)]
    l3 = [r.ratio('L3') for r in done if 'L3' in r.error]
    l2 = [r.ratio('L2') for r in done if 'L2' in r.error]
    ratios = [r.bytes_ratio for r in done if r.bytes_l3]
    worst = max(done, key=lambda r: r.ratio('L3'), default=None)
    return dict(models=len(results), checked=len(done),
                not_built=[r for r in results if not r.built],
                median_l3=statistics.median(l3) if l3 else math.nan,
                median_l2=statistics.median(l2) if l2 else math.nan,
                max_l3=max(l3) if l3 else math.nan, worst=worst,
                median_ratio=statistics.median(ratios) if ratios else math.nan,
                min_ratio=min(ratios) if ratios else math.nan)


def text_table(results: Sequence[Result]) -> str:
    rows = [list(HEADER)] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(HEADER))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(x, widths)) for x in rows)


def markdown(results: Sequence[Result], command: str, wall: float) -> str:
    s = summary(results)
    misses = target_misses(results)
    lines = [
        '# ActNN on the installed model zoos',
        '',
        '`tools/zoo_check.py` builds models from the configs shipped inside the installed',
        'mmdet, mmsegmentation and mmpretrain packages (`<package>/.mim/configs/`), randomly',
        'initialised (no checkpoint is loaded or downloaded), and runs one training step at',
        'batch 2 exact and with the whole model converted by `actnn_mm.convert` at L0, L2 and',
        'L3 (L3 after one warm-up step that lets the bit allocator solve, as in training).',
        '',
        '* **error** = `||g_level - g_exact|| / ||g_exact||` over all parameter gradients, same',
        '  batch, same seed (compression rounds with a generator of its own, so the model\'s own',
        '  random ops draw as in the exact run);',
        '* **noise** = the same quantity between the exact gradients of two random batches of the',
        '  same shape (how far SGD itself moves the gradient); the table gives error / noise;',
        '* **saved bytes**: what autograd keeps for backward (`SavedBytesCounter`), exact (the',
        '  unconverted model, same weights) and L3; MiB = 2^20 bytes.',
        '',
        f'Command: `{command}`  ',
        f'Machine: {machine()}, torch {torch.__version__}; this run {wall / 60:.1f} min.',
        '',
        '## Targets',
        '',
        '| target | measured | |',
        '| --- | --- | --- |',
        f'| every model finite at L2 and L3, L0 bit-identical | '
        f'{sum(1 for r in results if ok(r) and all(r.finite.values()) and r.l0_exact)} of '
        f'{s["checked"]} checked | |',
        f'| L3 error <= {L3_MAX:g} x noise on every model | max {_fmt(s["max_l3"])}'
        f' ({s["worst"].name if s["worst"] else "-"}) | |',
        f'| L2 error <= {L2_MAX:g} x noise on every model | max '
        f'{_fmt(max([r.ratio("L2") for r in results if ok(r)] or [math.nan]))} | |',
        f'| median L3 error / noise <= {L3_MEDIAN_MAX:g} | {_fmt(s["median_l3"])} | |',
        f'| median L3 saved-bytes ratio >= {BYTES_MEDIAN_MIN:g}x | '
        f'{_fmt(s["median_ratio"], 1)}x | |',
        '',
        'All targets met.' if not misses else 'Missed: ' + '; '.join(misses),
        '',
        '## Models',
        '',
        '| ' + ' | '.join(HEADER) + ' |',
        '| ' + ' | '.join('---' for _ in HEADER) + ' |',
    ]
    lines += ['| ' + ' | '.join(row(r)) + ' |' for r in results]
    not_built = [r for r in results if not ok(r)]
    if not_built:
        lines += ['', '## Not checked', '']
        lines += [f'* `{r.name}` ({r.entry.package}): {r.reason}' for r in not_built]
    low = [r for r in results if ok(r) and r.bytes_ratio < BYTES_EXPLAIN_BELOW]
    if low:
        lines += ['', f'## Under {BYTES_EXPLAIN_BELOW:g}x fewer saved bytes', '']
        lines += ['What stays exact, by the reason the pack hook kept it (`no grad (data)`: a '
                  'tensor that does not require grad, never compressed; `exact op: f`: what '
                  'the op `f`, whose backward divides by or takes the log / root of a saved '
                  'value, saves), and the modules holding most of it:', '']
        for r in low:
            why = '; '.join(f'{w} {n / 2**20:.2f} MiB' for w, n in r.exact_why_l3)
            where = ', '.join(f'`{m}` {n / 2**20:.2f}' for m, n in r.exact_top_l3)
            lines.append(f'* `{r.name}`: {_fmt(r.bytes_ratio, 1)}x; '
                         f'{100 * r.exact_share_l3:.0f}% of its L3 bytes kept exact: {why} '
                         f'(modules, MiB: {where}).')
    return '\n'.join(lines) + '\n'


def machine() -> str:
    cores = os.cpu_count() or 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{cores}-core CPU ({platform.machine()}), {gpu}'


def select(configs: Optional[Sequence[str]], subset: Optional[str]) -> List[Entry]:
    entries = list(ZOO)
    if subset:
        if subset not in SUBSETS:
            raise SystemExit(f'--subset must be one of {sorted(SUBSETS)}, got {subset!r}')
        names = SUBSETS[subset]
        entries = [e for e in ZOO if e.name in names]
    if configs:
        by_name = {e.name: e for e in ZOO}
        unknown = [c for c in configs if c not in by_name]
        if unknown:
            raise SystemExit(f'unknown config name(s) {unknown}; run with --list for the zoo')
        entries = [by_name[c] for c in configs]
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', help='config names (file names without .py)')
    parser.add_argument('--subset', help=f'a named subset: {sorted(SUBSETS)}')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, help='input size for every model (px); default: '
                        'the size of each entry')
    parser.add_argument('--warmup', type=int, default=1, help='L3 warm-up steps (allocator)')
    parser.add_argument('--levels', nargs='+', default=list(LEVELS),
                        help="levels with options, e.g. L2 L3 'L3,per_layer=False'")
    parser.add_argument('--breakdown', type=int, default=0, metavar='K',
                        help='print the K parameters with the largest share of the error')
    parser.add_argument('--out', default=osp.join(REPO_ROOT, 'docs', 'zoo.md'),
                        help="markdown report ('none': do not write)")
    parser.add_argument('--list', action='store_true', help='list the zoo and exit')
    args = parser.parse_args(argv)
    if args.list:
        for e in ZOO:
            print(f'{e.name:70s} {e.package:10s} {e.family}')
        return 0
    entries = select(args.configs, args.subset)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    results = []
    for i, entry in enumerate(entries, 1):
        r = check(entry, args.batch, args.size, args.warmup, args.breakdown, args.levels)
        results.append(r)
        if ok(r):
            errors = ', '.join(f'{lv} {_fmt(r.ratio(lv))}' for lv in args.levels if lv != 'L0')
            print(f'[{i}/{len(entries)}] {r.name}: L0 exact {r.l0_exact}; error/noise {errors} '
                  f'(noise {_fmt(r.noise, 3)}); saved {_fmt(r.bytes_ratio, 1)}x smaller '
                  f'({r.seconds:.0f} s)', flush=True)
        else:
            print(f'[{i}/{len(entries)}] {r.name}: {r.reason} ({r.seconds:.0f} s)', flush=True)
        for level, rows in r.breakdowns.items():
            for name, share, own in rows:
                print(f'      {level} {share:7.1%} of the error  {name}  (own rel. error '
                      f'{own:.3g})')
    wall = time.perf_counter() - start
    print()
    print(text_table(results))
    s = summary(results)
    print(f'\nmedian L3 error/noise {_fmt(s["median_l3"])}, worst {_fmt(s["max_l3"])} '
          f'({s["worst"].name if s["worst"] else "-"}), median saved-bytes ratio '
          f'{_fmt(s["median_ratio"], 1)}x, wall {wall / 60:.1f} min')
    misses = target_misses(results)
    print('targets: all met' if not misses else 'targets missed:\n  ' + '\n  '.join(misses))
    if args.out and args.out != 'none':
        command = 'python tools/zoo_check.py ' + ' '.join(argv if argv is not None
                                                           else sys.argv[1:])
        with open(args.out, 'w') as f:
            f.write(markdown(results, command.strip(), wall))
        print(f'wrote {args.out}')
    return 0 if not misses else 1


if __name__ == '__main__':
    sys.exit(main())
