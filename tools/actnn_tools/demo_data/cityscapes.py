"""Synthetic Cityscapes-format street scenes for semantic segmentation.

A scene is laid out like a street (sky, buildings and vegetation above the horizon, sidewalk and
road below, cars/people/poles/signs on them, an ignored ego-vehicle strip at the bottom) and every
class is painted in its Cityscapes palette colour with its own texture, so the 19 train ids are
learnable. Files follow mmseg's ``CityscapesDataset`` suffixes:
``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (train ids 0-18, 255 = ignore).
"""
from __future__ import annotations

import os
from typing import List, Tuple

import cv2
import numpy as np

from . import _draw
from ._manifest import prepare_root, write_manifest

CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
           'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
           'bus', 'train', 'motorcycle', 'bicycle')
PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
           (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
           (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
           (0, 80, 100), (0, 0, 230), (119, 11, 32))
IGNORE = 255
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
CITIES = {'train': ('aachen', 'bochum'), 'val': ('frankfurt',)}
OWNED = ('leftImg8bit', 'gtFine')


def _rect(label: np.ndarray, cls: int, x: int, y: int, w: int, h: int) -> None:
    label[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = cls


def _shape(label: np.ndarray, cls: int, shape: str, x: int, y: int, w: int, h: int) -> None:
    poly = _draw.shape_polygon(shape, x, y, max(w, 3), max(h, 3))
    cv2.fillPoly(label, [poly.reshape(-1, 1, 2)], int(cls))


def make_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like layout of train ids (uint8, 255 where ignored)."""
    H, W = height, width
    r = lambda a, b: int(rng.integers(int(a), max(int(a) + 1, int(b))))  # noqa: E731
    label = np.full((H, W), SKY, np.uint8)
    horizon = r(0.35 * H, 0.5 * H)
    walk = horizon + r(0.08 * H, 0.16 * H)
    label[horizon:walk] = SIDEWALK
    label[walk:] = ROAD
    # buildings, vegetation, a wall segment above the horizon
    x = 0
    while x < W:
        w = r(0.1 * W, 0.3 * W)
        top = r(0.05 * H, horizon - 0.1 * H)
        _rect(label, BUILDING if rng.random() < 0.7 else VEGETATION, x, top, w, horizon - top)
        x += w
    for _ in range(r(1, 3)):
        w, h = r(0.1 * W, 0.25 * W), r(0.1 * H, 0.25 * H)
        _shape(label, VEGETATION, 'ellipse', r(0, W - w), horizon - h + r(0, h // 3), w, h)
    wx, ww = r(0, 0.6 * W), r(0.1 * W, 0.3 * W)
    _rect(label, WALL, wx, horizon - r(0.05 * H, 0.1 * H), ww, H)  # clipped by sidewalk below
    label[walk:][label[walk:] == WALL] = ROAD
    label[horizon:walk][label[horizon:walk] == WALL] = SIDEWALK
    fx = r(0, 0.7 * W)
    _rect(label, FENCE, fx, horizon - r(0.03 * H, 0.07 * H), r(0.1 * W, 0.3 * W), r(3, 0.04 * H))
    # terrain patch at a side of the sidewalk
    tw = r(0.1 * W, 0.25 * W)
    _rect(label, TERRAIN, 0 if rng.random() < 0.5 else W - tw, horizon, tw, walk - horizon)
    # poles with lights / signs
    for _ in range(r(1, 4)):
        px, pw = r(0, W - 6), r(2, max(3, 0.012 * W))
        ptop = r(0.1 * H, horizon - 0.1 * H)
        _rect(label, POLE, px, ptop, pw, walk - ptop)
        s = r(0.03 * W, 0.06 * W)
        if rng.random() < 0.5:
            _rect(label, LIGHT, px - s // 4, ptop, max(3, s // 2), s)
        else:
            _shape(label, SIGN, 'triangle' if rng.random() < 0.5 else 'diamond',
                   px - s // 2, ptop, s, s)
    # vehicles on the road, people on the sidewalk/road
    vehicles = [(CAR, 0.12, 0.07), (TRUCK, 0.18, 0.12), (BUS, 0.26, 0.14), (TRAIN, 0.4, 0.13),
                (MOTORCYCLE, 0.05, 0.05), (BICYCLE, 0.05, 0.045)]
    for _ in range(r(2, 6)):
        cls, fw, fh = vehicles[int(rng.integers(len(vehicles)))]
        w, h = int(W * fw * rng.uniform(0.8, 1.3)), int(H * fh * rng.uniform(0.8, 1.3) * 1.6)
        y = r(walk - h // 2, H - 0.1 * H - h)
        x = r(0, W - w)
        _rect(label, cls, x, y, w, h)
        if cls in (MOTORCYCLE, BICYCLE):
            _shape(label, RIDER, 'ellipse', x, y - int(1.6 * h), w, int(1.8 * h))
    for _ in range(r(1, 5)):
        w, h = r(0.02 * W, 0.04 * W), r(0.1 * H, 0.2 * H)
        _shape(label, PERSON, 'ellipse', r(0, W - w), r(horizon - h // 2, walk + 0.05 * H), w, h)
    # ego vehicle: ignored, as in real Cityscapes train ids
    label[H - r(0.04 * H, 0.09 * H):] = IGNORE
    return label


def render(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Paint a label map: palette colour per class, grain, and a little class-specific texture."""
    H, W = label.shape
    img = _draw.textured_background(rng, H, W, amplitude=20)
    for cls in np.unique(label):
        mask = label == cls
        colour = (20, 20, 20) if cls == IGNORE else PALETTE[cls]
        _draw.shaded_fill(rng, img, mask, colour, jitter=8, grain=6)
    yy, xx = np.mgrid[0:H, 0:W]
    windows = (label == BUILDING) & ((yy // 6) % 3 == 0) & ((xx // 5) % 3 == 0)
    img[windows] = (img[windows] * 0.6).astype(np.uint8)
    lanes = (label == ROAD) & (np.abs(xx - W // 2) < 2) & ((yy // 8) % 2 == 0)
    img[lanes] = 230
    return img


def _make_split(root: str, split: str, num: int, height: int, width: int,
                seed: int) -> List[str]:
    files = []
    cities = CITIES[split]
    for i in range(num):
        city = cities[i % len(cities)]
        name = f'{city}_{i // len(cities):06d}_{19:06d}'
        rng = _draw.image_rng(seed, split, i)
        label = make_label(rng, height, width)
        img_rel = f'leftImg8bit/{split}/{city}/{name}_leftImg8bit.png'
        seg_rel = f'gtFine/{split}/{city}/{name}_gtFine_labelTrainIds.png'
        _draw.write_image(os.path.join(root, img_rel), render(rng, label))
        _draw.write_image(os.path.join(root, seg_rel), label)
        files += [img_rel, seg_rel]
    return files


def make_cityscapes(root: str, num_train: int = 16, num_val: int = 4,
                    img_size: Tuple[int, int] = (256, 512), seed: int = 0,
                    force: bool = False) -> bool:
    """Write ``root/leftImg8bit`` and ``root/gtFine`` (train and val); False if already done."""
    params = dict(num_train=num_train, num_val=num_val, img_size=list(img_size), seed=seed)
    if not prepare_root(root, 'cityscapes', params, OWNED, force):
        return False
    height, width = img_size
    files = _make_split(root, 'train', num_train, height, width, seed)
    files += _make_split(root, 'val', num_val, height, width, seed)
    write_manifest(root, 'cityscapes', params, files)
    return True
