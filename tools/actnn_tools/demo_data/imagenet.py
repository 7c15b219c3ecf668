"""Synthetic ImageNet-format classification data: one centred-ish shape per image.

Layout is what mmpretrain's ``ImageNet`` reads (and what the MoCo v2 config points at):
``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` and
``meta/{train,val}.txt`` with ``<wnid>/<file> <label>`` lines. The annotation files are needed:
without them ``ImageNet`` scans folders and insists on all 1000 classes. The classes are the
first ImageNet-1k synsets, so label ``i`` is ImageNet's class ``i``.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from . import _draw
from ._manifest import prepare_root, write_manifest

#: (wnid, shape, RGB colour); the position is the label, equal to ImageNet-1k's class index
CLASSES: Tuple[Tuple[str, str, _draw.Colour], ...] = (
    ('n01440764', 'ellipse', (220, 40, 40)),
    ('n01443537', 'rectangle', (40, 70, 220)),
    ('n01484850', 'triangle', (40, 190, 60)),
    ('n01491361', 'diamond', (235, 205, 30)),
    ('n01494475', 'hexagon', (200, 60, 200)),
    ('n01496331', 'cross', (40, 200, 210)),
    ('n01498041', 'star', (250, 140, 20)),
    ('n01514668', 'ellipse', (120, 60, 20)),
    ('n01514859', 'rectangle', (250, 250, 250)),
    ('n01518878', 'triangle', (20, 20, 20)),
)
OWNED = ('train', 'val', 'meta')


def make_image(rng: np.random.Generator, label: int, height: int,
               width: int) -> np.ndarray:
    """An RGB image of class ``label``: its shape and colour, random size and position."""
    _, shape, colour = CLASSES[label]
    img = _draw.textured_background(rng, height, width)
    side = min(height, width)
    w = int(side * rng.uniform(0.35, 0.75))
    h = int(side * rng.uniform(0.35, 0.75))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    mask = _draw.polygon_mask(_draw.shape_polygon(shape, x, y, w, h), height, width)
    _draw.shaded_fill(rng, img, mask, colour)
    return img


def _make_split(root: str, split: str, num: int, num_classes: int, height: int, width: int,
                seed: int) -> List[str]:
    lines, files = [], []
    for i in range(num):
        label = i % num_classes
        wnid = CLASSES[label][0]
        name = (f'{wnid}_{i // num_classes + 1}.JPEG' if split == 'train'
                else f'ILSVRC2012_val_{i + 1:08d}.JPEG')
        rel = f'{wnid}/{name}'
        img = make_image(_draw.image_rng(seed, split, i), label, height, width)
        _draw.write_image(os.path.join(root, split, rel), img)
        lines.append(f'{rel} {label}')
        files.append(f'{split}/{rel}')
    os.makedirs(os.path.join(root, 'meta'), exist_ok=True)
    with open(os.path.join(root, 'meta', f'{split}.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return files + [f'meta/{split}.txt']


def make_imagenet(root: str, num_train: int = 80, num_val: int = 20,
                  img_size: Tuple[int, int] = (128, 128), seed: int = 0,
                  num_classes: int = len(CLASSES), force: bool = False) -> bool:
    """Write ``root/{train,val,meta}``; False when an identical dataset was already there."""
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f'num_classes must be in [1, {len(CLASSES)}], got {num_classes}')
    params = dict(num_train=num_train, num_val=num_val, img_size=list(img_size), seed=seed,
                  num_classes=num_classes)
    if not prepare_root(root, 'imagenet', params, OWNED, force):
        return False
    height, width = img_size
    files = _make_split(root, 'train', num_train, num_classes, height, width, seed)
    files += _make_split(root, 'val', num_val, num_classes, height, width, seed)
    write_manifest(root, 'imagenet', params, files)
    return True
