"""The training input size and batch a config trains with, read from its pipeline.

The size is what reaches the model: the last transform of the train pipeline that fixes it
(resize, crop, mosaic), then the data preprocessor (fixed ``size`` / ``BatchFixedSizePad``,
``pad_size_divisor``). A keep-ratio resize to ``scale=(1333, 800)`` is taken as the whole box
(800 x 1333): the largest image it can produce, which is what memory has to fit. Multi-view
pipelines (MoCo's ``MultiView``) give one size per view.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ['InputSpec', 'train_input_spec', 'train_batch_size', 'train_pipeline',
           'override_input_size']

Size = Tuple[int, int]  # (height, width)

_RESIZES = ('Resize', 'RandomResize', 'RandomChoiceResize', 'ResizeEdge', 'RandomResizedCrop',
            'RandomResizedCropAndInterpolationWithTwoPic', 'RandomChoice', 'Mosaic',
            'RandomCrop', 'CenterCrop', 'RandomCenterCropPad', 'FixShapeResize', 'Pad')


@dataclass
class InputSpec:
    """Per view: (height, width); ``source`` says which transform fixed each size."""

    sizes: List[Size] = field(default_factory=list)
    source: List[str] = field(default_factory=list)

    @property
    def views(self) -> int:
        return len(self.sizes)


def _dataset_with_pipeline(ds: Any) -> Any:
    """Unwrap dataset wrappers (RepeatDataset, ClassBalancedDataset, MultiImageMixDataset...)."""
    seen = 0
    while isinstance(ds, dict) and seen < 8:
        if ds.get('pipeline') is not None and not (ds.get('type') == 'MultiImageMixDataset'):
            return ds
        if ds.get('type') == 'MultiImageMixDataset' and ds.get('pipeline') is not None:
            return ds  # its pipeline (Mosaic, MixUp) decides the size
        inner = ds.get('dataset') or (ds.get('datasets') or [None])[0]
        ds = inner
        seen += 1
    return ds if isinstance(ds, dict) else None


def train_pipeline(cfg: Any) -> List[dict]:
    """The transforms of the train dataset (through dataset wrappers); [] when none."""
    loader = cfg.get('train_dataloader') or {}
    ds = _dataset_with_pipeline(loader.get('dataset'))
    if ds is None:
        return list(cfg.get('train_pipeline') or [])
    return list(ds.get('pipeline') or [])


def train_batch_size(cfg: Any) -> int:
    """``train_dataloader.batch_size`` (per GPU, as the config trains); 1 without one."""
    loader = cfg.get('train_dataloader') or {}
    return int(loader.get('batch_size') or 1)


def _wh_to_hw(scale: Any) -> Optional[Size]:
    """mmcv's ``scale`` is (w, h) or one int (square)."""
    if scale is None:
        return None
    if isinstance(scale, (int, float)):
        return int(scale), int(scale)
    if isinstance(scale, (list, tuple)) and len(scale) == 2 and \
            all(isinstance(v, (int, float)) for v in scale):
        return int(scale[1]), int(scale[0])
    if isinstance(scale, (list, tuple)) and scale and isinstance(scale[0], (list, tuple)):
        sizes = [_wh_to_hw(s) for s in scale]  # multi-scale: the largest
        return max((s for s in sizes if s), key=lambda s: s[0] * s[1], default=None)
    return None


def _hw(size: Any) -> Optional[Size]:
    """A (h, w) or one int."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and \
            all(isinstance(v, (int, float)) for v in size):
        return int(size[0]), int(size[1])
    return None


def _transform_size(t: dict, scope: str, current: Optional[Size]) -> Optional[Size]:
    """The size after transform ``t`` (None: unchanged)."""
    kind = str(t.get('type', '')).split('.')[-1]
    if kind in ('Resize', 'RandomResize', 'FixShapeResize', 'RandomChoiceResize'):
        scale = t.get('scale', t.get('scales', t.get('img_scale')))
        if kind == 'FixShapeResize':
            scale = (t.get('width'), t.get('height'))
        if kind == 'Resize' and scale is None and t.get('scale_factor') and current:
            f = t['scale_factor']
            f = f if isinstance(f, (int, float)) else max(f)
            return int(current[0] * f), int(current[1] * f)
        return _wh_to_hw(scale)
    if kind == 'ResizeEdge':
        edge = int(t.get('scale', 0))
        return (edge, edge) if edge else None
    if kind in ('RandomResizedCrop', 'RandomResizedCropAndInterpolationWithTwoPic'):
        return _hw(t.get('scale', t.get('size')))  # mmpretrain: (h, w) or int
    if kind in ('RandomCrop', 'CenterCrop', 'RandomCenterCropPad'):
        crop = t.get('crop_size')
        if crop is None:
            return None
        if scope == 'mmdet' and kind == 'RandomCrop':
            if t.get('crop_type', 'absolute') != 'absolute':
                return None
            return _wh_to_hw(crop)  # mmdet's RandomCrop: (w, h)
        if kind == 'CenterCrop' and scope not in ('mmpretrain', 'mmseg'):
            return _wh_to_hw(crop)  # mmcv's CenterCrop: (w, h)
        return _hw(crop)
    if kind == 'Mosaic':
        return _wh_to_hw(t.get('img_scale'))  # RandomAffine's border crops back to it
    if kind == 'Pad' and t.get('size') is not None:
        return _wh_to_hw(t.get('size'))
    if kind == 'RandomChoice':
        options = [_walk(list(ts), scope, current)[0] for ts in t.get('transforms', [])]
        options = [o for o in options if o]
        return max(options, key=lambda s: s[0] * s[1], default=None)
    return None


def _walk(pipeline: Sequence[dict], scope: str, current: Optional[Size]) -> Tuple[
        Optional[Size], str]:
    source = ''
    for t in pipeline:
        if not isinstance(t, dict):
            continue
        size = _transform_size(t, scope, current)
        if size is not None:
            current, source = size, str(t.get('type'))
    return current, source


def override_input_size(cfg: Any, size: Size) -> None:
    """Make the data preprocessor's fixed size (mmseg's ``size``, ``BatchFixedSizePad``)
    follow an ``--input-size`` override, in place (before the model is built)."""
    dp = cfg.model.get('data_preprocessor') or {}
    if dp.get('size') is not None:
        dp['size'] = tuple(size)
    for aug in dp.get('batch_augments') or []:
        if isinstance(aug, dict) and aug.get('size') is not None:
            aug['size'] = tuple(size) if 'Seg' in str(aug.get('type', '')) else \
                (size[1], size[0])
    for head in ('backbone', 'decode_head', 'auxiliary_head'):  # ViTs size position embeddings
        node = cfg.model.get(head)
        for h in node if isinstance(node, list) else [node]:
            if isinstance(h, dict) and h.get('img_size') is not None:
                h['img_size'] = tuple(size)


def _preprocessed(size: Size, dp: dict, overridden: bool = False) -> Tuple[Size, str]:
    """The data preprocessor's fixed size / padding applied to ``size``.

    With ``overridden`` the fixed size is left out: ``override_input_size`` makes it follow the
    override, so only the divisor padding still applies."""
    note = ''
    fixed = _hw(dp.get('size')) if dp.get('size') is not None else None
    for aug in dp.get('batch_augments') or []:
        if isinstance(aug, dict) and aug.get('size') is not None:
            fixed = _hw(aug['size']) if 'Seg' in str(aug.get('type', '')) else \
                _wh_to_hw(aug['size'])
    if fixed is not None and not overridden:
        size, note = (max(size[0], fixed[0]), max(size[1], fixed[1])), 'data_preprocessor size'
    div = int(dp.get('pad_size_divisor') or dp.get('size_divisor') or 1)
    if div > 1:
        size = (-(-size[0] // div) * div, -(-size[1] // div) * div)
        note = note or f'padded to a multiple of {div}'
    return size, note


def train_input_spec(cfg: Any, override: Optional[Sequence[int]] = None) -> InputSpec:
    """The model's training input size per view, from the train pipeline and the data
    preprocessor; ``override`` ((h, w) or (s,)) replaces the pipeline's size for every view."""
    scope = str(cfg.get('default_scope') or '')
    pipeline = train_pipeline(cfg)
    views: List[Tuple[List[dict], int]] = []
    for i, t in enumerate(pipeline):
        if isinstance(t, dict) and str(t.get('type', '')).endswith('MultiView'):
            branches = t.get('transforms') or []
            counts = t.get('num_views', 1)
            counts = [counts] * len(branches) if isinstance(counts, int) else list(counts)
            for branch, n in zip(branches, counts):
                views += [(list(pipeline[:i]) + list(branch), int(n))]
            break
    if not views:
        views = [(pipeline, 1)]
    dp = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    spec = InputSpec()
    for branch, n in views:
        if override:
            size, source = (_hw(override[0]) if len(override) == 1
                            else (int(override[0]), int(override[1]))), '--input-size'
        else:
            size, source = _walk(branch, scope, None)
        if size is None:
            raise ValueError('analyze_memory: the train pipeline fixes no input size (no '
                             'Resize/Crop with a size found); give one with --input-size H W')
        size, note = _preprocessed(size, dp, overridden=bool(override))
        spec.sizes += [size] * n
        spec.source += [source + (f', {note}' if note else '')] * n
    return spec
