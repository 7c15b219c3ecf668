"""A synthetic training batch for a model, in the form its data preprocessor expects.

Random uint8 images of the training size with random targets of the right kind: boxes and labels
(and masks for mask heads) as ``mmdet.testing.demo_mm_inputs`` makes them, segmentation maps,
class labels, or the views of a self-supervised algorithm (MoCo's two crops). Seeded: every level
of an analysis trains on the very same batch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ['make_batch', 'num_classes_of', 'BOXES_PER_IMAGE']

#: Ground-truth boxes per synthetic detection image (what the RoI samplers see).
BOXES_PER_IMAGE = 8


def num_classes_of(model: nn.Module, default: int = 10) -> int:
    """The number of classes of the model's (first) head: the labels it is trained on.

    Heads come first: a data preprocessor also has ``num_classes`` (for batch mixing), which
    a config that changes only its head's leaves at the base config's value."""
    n = getattr(model, 'num_classes', None)
    if isinstance(n, int):
        return n
    modules = list(model.named_modules())
    heads = [m for name, m in modules if 'head' in name.split('.')[0]]
    for m in heads + [m for _, m in modules]:
        n = getattr(m, 'num_classes', None)
        if isinstance(n, int) and n > 0:
            return n
    return default


def _images(batch: int, size: Tuple[int, int], gen: torch.Generator) -> List[torch.Tensor]:
    h, w = size
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
            for _ in range(batch)]


def _detection(model: nn.Module, batch: int, size: Tuple[int, int]) -> Dict[str, Any]:
    import numpy as np
    from mmdet.testing import demo_mm_inputs
    np.random.seed(0)
    with_mask = bool(getattr(model, 'with_mask', False)) or any(
        'mask' in name for name, _ in model.named_children())
    h, w = size
    return demo_mm_inputs(batch_size=batch, image_shapes=[(3, h, w)] * batch,
                          num_items=[BOXES_PER_IMAGE] * batch,
                          num_classes=num_classes_of(model), with_mask=with_mask)


def _segmentation(model: nn.Module, batch: int, size: Tuple[int, int],
                  gen: torch.Generator) -> Dict[str, Any]:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = size
    n = num_classes_of(model)
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                        scale_factor=(1.0, 1.0), flip=False))
        s.gt_sem_seg = PixelData(data=torch.randint(0, n, (1, h, w), generator=gen))
        samples.append(s)
    return dict(inputs=_images(batch, size, gen), data_samples=samples)


def _classification(model: nn.Module, batch: int, size: Tuple[int, int],
                    gen: torch.Generator) -> Dict[str, Any]:
    from mmpretrain.structures import DataSample
    n = num_classes_of(model, default=1000)
    h, w = size
    samples = [DataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w))).set_gt_label(
        int(torch.randint(0, n, (1, ), generator=gen))) for _ in range(batch)]
    return dict(inputs=_images(batch, size, gen), data_samples=samples)


def _selfsup(model: nn.Module, batch: int, sizes: Sequence[Tuple[int, int]],
             gen: torch.Generator) -> Dict[str, Any]:
    from mmpretrain.structures import DataSample
    views = [torch.stack(_images(batch, size, gen)) for size in sizes]
    h, w = sizes[0]
    samples = [DataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
               for _ in range(batch)]
    return dict(inputs=views, data_samples=samples)


def make_batch(model: nn.Module, task: str, batch: int,
               sizes: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
    """What the train dataloader would give ``model.data_preprocessor`` for ``batch`` images
    of ``sizes[0]`` (one size per view for self-supervised algorithms)."""
    gen = torch.Generator().manual_seed(0)
    if task == 'detection':
        return _detection(model, batch, sizes[0])
    if task == 'segmentation':
        return _segmentation(model, batch, sizes[0], gen)
    if task == 'classification':
        return _classification(model, batch, sizes[0], gen)
    if task == 'selfsup':
        return _selfsup(model, batch, sizes, gen)
    raise ValueError(f'analyze_memory: unknown task {task!r}')
