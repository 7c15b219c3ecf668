"""Drawing primitives shared by the synthetic dataset generators.

Everything here is a pure function of a ``numpy.random.Generator``: the generators seed one per
image from ``(seed, split, index)``, so an image never depends on how many others were made.
"""
from __future__ import annotations

import os
import zlib
from typing import Sequence, Tuple

import cv2
import numpy as np

Colour = Tuple[int, int, int]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of the number of images in the split."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def textured_background(rng: np.random.Generator, height: int, width: int,
                        base: Colour = (128, 128, 128), amplitude: float = 40.,
                        saturation: float = 0.25) -> np.ndarray:
    """A low-saturation RGB texture: smooth blobs + fine grain + faint stripes.

    Structured enough that a detector cannot just threshold the background, grey enough that the
    class colours stay visible on top of it.
    """
    coarse = rng.uniform(-1, 1, size=(max(2, height // 24), max(2, width // 24), 3))
    coarse[..., 1:] = coarse[..., :1] * (1 - saturation) + coarse[..., 1:] * saturation
    coarse[..., 0] = coarse[..., 0] * (1 - saturation) + coarse[..., 1] * saturation
    smooth = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    grain = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    img = (np.asarray(base, np.float32) + amplitude * smooth
           + 6 * stripes[..., None] + grain)
    return np.clip(img, 0, 255).astype(np.uint8)


def shaded_fill(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, colour: Colour,
                jitter: int = 12, grain: float = 5.) -> None:
    """Paint ``mask`` in ``img`` (RGB, in place) with a jittered colour, a gradient and grain."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    c = np.clip(np.asarray(colour, np.float32) + rng.integers(-jitter, jitter + 1, 3), 0, 255)
    gy, gx = rng.uniform(-0.25, 0.25, 2)
    cy, cx = ys.mean(), xs.mean()
    scale = max(1., float(max(np.ptp(ys), np.ptp(xs))))
    shade = 1 + (gy * (ys - cy) + gx * (xs - cx)) / scale
    vals = c[None, :] * shade[:, None] + rng.normal(0, grain, size=(len(ys), 1))
    img[ys, xs] = np.clip(vals, 0, 255).astype(np.uint8)


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise an integer polygon (N x 2, x-y order) into a bool mask."""
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.asarray(points, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def shape_polygon(shape: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The outline (N x 2 int, x-y) of a named shape inscribed in the box ``x0, y0, w, h``."""
    x1, y1 = x0 + w - 1, y0 + h - 1
    cx, cy = x0 + (w - 1) / 2, y0 + (h - 1) / 2
    if shape == 'rectangle':
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape == 'ellipse':
        pts = cv2.ellipse2Poly((int(round(cx)), int(round(cy))),
                               (max(1, (w - 1) // 2), max(1, (h - 1) // 2)), 0, 0, 360, 8)
    elif shape == 'triangle':
        pts = [(cx, y0), (x1, y1), (x0, y1)]
    elif shape == 'diamond':
        pts = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    elif shape == 'hexagon':
        q = w / 4
        pts = [(x0 + q, y0), (x1 - q, y0), (x1, cy), (x1 - q, y1), (x0 + q, y1), (x0, cy)]
    elif shape == 'cross':
        a, b = w / 3, h / 3
        pts = [(x0 + a, y0), (x1 - a, y0), (x1 - a, y0 + b), (x1, y0 + b), (x1, y1 - b),
               (x1 - a, y1 - b), (x1 - a, y1), (x0 + a, y1), (x0 + a, y1 - b), (x0, y1 - b),
               (x0, y0 + b), (x0 + a, y0 + b)]
    elif shape == 'star':
        ang = np.linspace(-np.pi / 2, 3 * np.pi / 2, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = list(zip(cx + rad * np.cos(ang) * (w - 1) / 2, cy + rad * np.sin(ang) * (h - 1) / 2))
    else:
        raise ValueError(f'unknown shape {shape!r}')
    return np.round(np.asarray(pts, np.float64)).astype(np.int32).reshape(-1, 2)


def place_boxes(rng: np.random.Generator, height: int, width: int, count: int,
                size_range: Sequence[float], margin: int = 4,
                tries: int = 200) -> list:
    """Up to ``count`` non-overlapping boxes (x, y, w, h), sides a fraction of min(H, W)."""
    side = min(height, width)
    boxes: list = []
    for _ in range(tries):
        if len(boxes) == count:
            break
        w = int(side * rng.uniform(*size_range) * rng.uniform(0.75, 1.3))
        h = int(side * rng.uniform(*size_range) * rng.uniform(0.75, 1.3))
        w, h = min(max(w, 8), width - 2), min(max(h, 8), height - 2)
        x = int(rng.integers(1, width - w))
        y = int(rng.integers(1, height - h))
        if all(x + w + margin <= bx or bx + bw + margin <= x or y + h + margin <= by
               or by + bh + margin <= y for bx, by, bw, bh in boxes):
            boxes.append((x, y, w, h))
    return boxes


def write_image(path: str, rgb: np.ndarray, jpeg_quality: int = 92) -> None:
    """Write an RGB (or single-channel) array; JPEG or PNG chosen by the file suffix."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    arr = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.lower().endswith(
        ('.jpg', '.jpeg')) else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if not cv2.imwrite(path, np.ascontiguousarray(arr), params):
        raise OSError(f'could not write {path}')
