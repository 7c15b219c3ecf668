"""One entry point over the generators, and the 'is the data there?' check the tools run.

The check turns mmengine's deep ``FileNotFoundError`` (raised while building a dataloader,
minutes into a run) into an immediate message naming the missing path and the exact
``tools/make_demo_data.py`` command that creates demo data there.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .cityscapes import make_cityscapes
from .coco import make_coco
from .imagenet import make_imagenet


@dataclass(frozen=True)
class DemoDataset:
    """A generator and its defaults; ``dirname`` is the packages' default ``data/<dirname>``."""
    dirname: str
    make: Callable[..., bool]
    img_size: Tuple[int, int]
    num_train: int
    num_val: int


DEMO_DATASETS: Dict[str, DemoDataset] = {
    'coco': DemoDataset('coco', make_coco, (240, 320), 64, 16),
    'cityscapes': DemoDataset('cityscapes', make_cityscapes, (256, 512), 16, 4),
    'imagenet': DemoDataset('imagenet', make_imagenet, (128, 128), 80, 20),
}

#: dataset ``type`` in a config -> the generator that makes data it can read
DATASET_TYPES: Dict[str, str] = {
    'CocoDataset': 'coco',
    'CityscapesDataset': 'cityscapes',
    'ImageNet': 'imagenet',
    'CustomDataset': 'imagenet',
}


def make_demo_data(kind: str, out: str = 'data', data_root: Optional[str] = None,
                   num_train: Optional[int] = None, num_val: Optional[int] = None,
                   img_size: Optional[Tuple[int, int]] = None, seed: int = 0,
                   force: bool = False) -> Tuple[str, bool]:
    """Make one demo dataset at ``data_root`` (default ``<out>/<kind>``).

    Returns the root and whether anything was written (False: it was complete already).
    """
    spec = DEMO_DATASETS[kind]
    root = data_root or osp.join(out, spec.dirname)
    os.makedirs(root, exist_ok=True)
    written = spec.make(
        root,
        num_train=spec.num_train if num_train is None else num_train,
        num_val=spec.num_val if num_val is None else num_val,
        img_size=tuple(img_size or spec.img_size), seed=seed, force=force)
    return root, written


def demo_data_command(kind: str, data_root: str) -> str:
    """The shell command that makes ``kind`` demo data where ``data_root`` points."""
    norm = osp.normpath(data_root)
    if osp.basename(norm) == DEMO_DATASETS[kind].dirname:
        return f'python tools/make_demo_data.py {kind} --out {osp.dirname(norm) or "."}'
    return f'python tools/make_demo_data.py {kind} --data-root {norm}'


def _leaf_datasets(ds: Mapping, where: str) -> Iterator[Tuple[Mapping, str]]:
    """Unwrap dataset wrappers (RepeatDataset, ConcatDataset, ClassBalancedDataset...)."""
    if 'dataset' in ds and isinstance(ds['dataset'], Mapping):
        yield from _leaf_datasets(ds['dataset'], f'{where}.dataset')
    elif 'datasets' in ds and isinstance(ds['datasets'], (list, tuple)):
        for i, sub in enumerate(ds['datasets']):
            yield from _leaf_datasets(sub, f'{where}.datasets[{i}]')
    else:
        yield ds, where


def _dataset_paths(ds: Mapping, where: str) -> Iterator[Tuple[str, str]]:
    root = ds.get('data_root') or ''
    ann = ds.get('ann_file') or ''
    if ann:
        yield osp.join(root, ann), f'{where}.ann_file'
    prefix = ds.get('data_prefix') or ''
    if isinstance(prefix, Mapping):
        for key, value in prefix.items():
            if isinstance(value, str) and value:
                yield osp.join(root, value), f'{where}.data_prefix.{key}'
    elif isinstance(prefix, str) and prefix:
        yield osp.join(root, prefix), f'{where}.data_prefix'
    elif ds.get('split'):  # mmpretrain ImageNet: data_prefix defaults to the split name
        yield osp.join(root, ds['split']), f'{where}.split'
    if not ann and not prefix and not ds.get('split') and root:
        yield root, f'{where}.data_root'


def _kind_of(ds: Mapping, path: str) -> Optional[str]:
    kind = DATASET_TYPES.get(str(ds.get('type', '')).split('.')[-1])
    if kind is None:
        parts = osp.normpath(path).split(os.sep)
        kind = next((k for k in DEMO_DATASETS if k in parts), None)
    return kind


def missing_data(cfg: Mapping, splits: Sequence[str] = ('train', 'val', 'test')
                 ) -> List[Tuple[str, str, Optional[str], str]]:
    """Paths that a config's ``<split>_dataloader`` and ``<split>_evaluator`` read but are absent.

    Each item is ``(path, config key, demo kind or None, data_root)``.
    """
    missing = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        dataset = loader.get('dataset') if isinstance(loader, Mapping) else None
        if isinstance(dataset, Mapping):
            for ds, where in _leaf_datasets(dataset, f'{split}_dataloader.dataset'):
                for path, key in _dataset_paths(ds, where):
                    if not osp.exists(path):
                        missing.append((path, key, _kind_of(ds, path),
                                        ds.get('data_root') or ''))
        evaluators = cfg.get(f'{split}_evaluator')
        evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
        for ev in evaluators:
            ann = ev.get('ann_file') if isinstance(ev, Mapping) else None
            if isinstance(ann, str) and ann and not osp.exists(ann):
                # <root>/annotations/<file>.json: the dataset root is two levels up
                root = osp.dirname(osp.dirname(osp.normpath(ann)))
                missing.append((ann, f'{split}_evaluator.ann_file', _kind_of(ev, ann), root))
    seen, unique = set(), []
    for item in missing:
        if item[0] not in seen:
            seen.add(item[0])
            unique.append(item)
    return unique


def missing_data_message(missing: List[Tuple[str, str, Optional[str], str]]) -> str:
    """A user-facing explanation of :func:`missing_data`'s findings, with the fix."""
    lines = ['The config reads data that does not exist:']
    lines += [f'  {path}   (from {key})' for path, key, _, _ in missing]
    commands = []
    for _, _, kind, root in missing:
        if kind is not None and root:
            cmd = demo_data_command(kind, root)
            if cmd not in commands:
                commands.append(cmd)
    if commands:
        lines.append('Make synthetic demo data there with:')
        lines += [f'  {cmd}' for cmd in commands]
    else:
        lines.append('Point the config at your dataset (e.g. --cfg-options '
                     'train_dataloader.dataset.data_root=...).')
    return '\n'.join(lines)
