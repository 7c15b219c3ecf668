"""Synthetic COCO-format detection/instance data: coloured shapes on a textured background.

Each category has its own shape and colour, objects never overlap (so every polygon is the exact
visible mask), and annotations carry real COCO category ids and names so that mmdet's
``CocoDataset`` reads them with its stock ``METAINFO`` (or a 4-class ``metainfo``).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np

from . import _draw
from ._manifest import prepare_root, write_manifest

#: (COCO id, COCO name, supercategory, shape, RGB colour)
CATEGORIES: Tuple[Tuple[int, str, str, str, _draw.Colour], ...] = (
    (1, 'person', 'person', 'ellipse', (220, 40, 40)),
    (3, 'car', 'vehicle', 'rectangle', (40, 70, 220)),
    (18, 'dog', 'animal', 'triangle', (40, 190, 60)),
    (44, 'bottle', 'kitchen', 'diamond', (235, 205, 30)),
)
CLASSES: Tuple[str, ...] = tuple(c[1] for c in CATEGORIES)
SPLITS = {'train': 'train2017', 'val': 'val2017'}
OWNED = ('annotations/instances_train2017.json', 'annotations/instances_val2017.json',
         'train2017', 'val2017')


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def make_image(rng: np.random.Generator, height: int, width: int,
               max_objects: int = 4) -> Tuple[np.ndarray, List[Dict]]:
    """One RGB image and its objects (``category_id``, ``polygon``, ``mask``, ``bbox``)."""
    img = _draw.textured_background(rng, height, width)
    count = int(rng.integers(1, max_objects + 1))
    objects = []
    for x, y, w, h in _draw.place_boxes(rng, height, width, count, size_range=(0.18, 0.42)):
        cat_id, _, _, shape, colour = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        poly = _draw.shape_polygon(shape, x, y, w, h)
        mask = _draw.polygon_mask(poly, height, width)
        _draw.shaded_fill(rng, img, mask, colour)
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1)]
        objects.append(dict(category_id=cat_id, polygon=poly, mask=mask, bbox=bbox))
    return img, objects


def _make_split(root: str, split: str, num: int, height: int, width: int, seed: int,
                id_offset: int) -> List[str]:
    folder = SPLITS[split]
    images, annotations = [], []
    for i in range(num):
        img_id = id_offset + i + 1
        file_name = f'{img_id:012d}.jpg'
        img, objects = make_image(_draw.image_rng(seed, split, i), height, width)
        _draw.write_image(os.path.join(root, folder, file_name), img)
        images.append(dict(id=img_id, file_name=file_name, height=height, width=width,
                           license=1, date_captured='', coco_url='', flickr_url=''))
        for obj in objects:
            annotations.append(dict(
                id=len(annotations) + 1 + id_offset * 10, image_id=img_id,
                category_id=obj['category_id'], iscrowd=0,
                bbox=[float(v) for v in obj['bbox']], area=float(obj['mask'].sum()),
                segmentation=[[float(v) for v in obj['polygon'].reshape(-1)]]))
    ann = dict(
        info=dict(description='actnn_mm synthetic COCO-format shapes', version='1.0',
                  year=2017, contributor='actnn_mm', date_created=''),
        licenses=[dict(id=1, name='CC0', url='')],
        images=images, annotations=annotations,
        categories=[dict(id=c[0], name=c[1], supercategory=c[2]) for c in CATEGORIES])
    ann_rel = f'annotations/instances_{folder}.json'
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    with open(os.path.join(root, ann_rel), 'w') as f:
        json.dump(ann, f)
    return [ann_rel] + [f'{folder}/{im["file_name"]}' for im in images]


def make_coco(root: str, num_train: int = 64, num_val: int = 16,
              img_size: Tuple[int, int] = (240, 320), seed: int = 0,
              force: bool = False) -> bool:
    """Write ``root/annotations/instances_{train,val}2017.json`` and the images.

    Returns False when a complete dataset with the same parameters was already there.
    """
    params = dict(num_train=num_train, num_val=num_val, img_size=list(img_size), seed=seed)
    if not prepare_root(root, 'coco', params, OWNED, force):
        return False
    height, width = img_size
    files = _make_split(root, 'train', num_train, height, width, seed, 0)
    files += _make_split(root, 'val', num_val, height, width, seed, 100000)
    write_manifest(root, 'coco', params, files)
    return True
