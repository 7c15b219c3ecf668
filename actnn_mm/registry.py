"""Register the Q-layers in mmengine's root ``MODELS`` registry (what mmcv 2.x builds from).

mmcv's ``build_conv_layer``, ``build_norm_layer``, ``build_activation_layer`` and ``ConvModule``
look types up in mmengine's ``MODELS`` (current scope, then root), so after ``import actnn_mm``
these work in any mmdet/mmseg/mmpretrain config::

    conv_cfg=dict(type='QConv2d'), norm_cfg=dict(type='QBN', requires_grad=True),
    act_cfg=dict(type='QReLU')

Norm layers keep mmcv's abbreviations (``bn``, ``gn``, ``ln``: inferred from their torch bases)
so parameter names and pretrained checkpoints match.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

from . import layers as L

__all__ = ['register_all', 'REGISTERED', 'QGN', 'QGELUBuilder']


class QGN(L.QGroupNorm):
    """mmcv-style constructor for :class:`QGroupNorm` (registered as ``QGN``).

    mmcv's ``build_norm_layer`` calls ``layer(num_features, **cfg)`` for every type but
    ``nn.GroupNorm`` itself, while GroupNorm's first argument is ``num_groups``. This builds a
    plain :class:`~actnn_mm.layers.QGroupNorm` (so ``init_cfg`` ``layer='GroupNorm'`` and
    checkpoints match); ``QGN`` only exists at build time.
    """

    _abbr_ = 'gn'

    def __new__(cls, num_features: Optional[int] = None, num_groups: Optional[int] = None,
                eps: float = 1e-5, affine: bool = True, *, num_channels: Optional[int] = None,
                **kwargs: Any) -> L.QGroupNorm:
        channels = num_channels if num_channels is not None else num_features
        if channels is None or num_groups is None:
            raise TypeError('QGN needs num_features (or num_channels) and num_groups')
        return L.QGroupNorm(num_groups, channels, eps=eps, affine=affine, **kwargs)


class QGELUBuilder(L.QGELU):
    """Registered as ``QGELU``: accepts (and ignores) the ``inplace`` that ``ConvModule`` passes
    to every activation but its own short list; builds a plain :class:`QGELU`."""

    def __new__(cls, approximate: str = 'none', inplace: bool = False) -> L.QGELU:
        return L.QGELU(approximate=approximate)


#: registered name(s) -> class
REGISTERED: Dict[str, type] = {
    'QConv1d': L.QConv1d,
    'QConv2d': L.QConv2d,
    'QConv': L.QConv2d,
    'QConv3d': L.QConv3d,
    'QConvTranspose1d': L.QConvTranspose1d,
    'QConvTranspose2d': L.QConvTranspose2d,
    'Qdeconv': L.QConvTranspose2d,
    'QConvTranspose3d': L.QConvTranspose3d,
    'Qdeconv3d': L.QConvTranspose3d,
    'QLinear': L.QLinear,
    'QBN1d': L.QBatchNorm1d,
    'QBN2d': L.QBatchNorm2d,
    'QBN': L.QBatchNorm2d,
    'QBN3d': L.QBatchNorm3d,
    'QBatchNorm1d': L.QBatchNorm1d,
    'QBatchNorm2d': L.QBatchNorm2d,
    'QBatchNorm3d': L.QBatchNorm3d,
    'QSyncBN': L.QSyncBatchNorm,
    'QSyncBatchNorm': L.QSyncBatchNorm,
    'QGN': QGN,
    'QLN': L.QLayerNorm,
    'QLayerNorm': L.QLayerNorm,
    'QReLU': L.QReLU,
    'QLeakyReLU': L.QLeakyReLU,
    'QGELU': QGELUBuilder,
    'QSiLU': L.QSiLU,
    'QHardswish': L.QHardswish,
    'QMaxPool2d': L.QMaxPool2d,
    'QAvgPool2d': L.QAvgPool2d,
    'QDropout': L.QDropout,
    'QDropout2d': L.QDropout2d,
}


def register_all(registry: Optional[Any] = None) -> List[str]:
    """Register every Q-layer name in ``registry`` (default: mmengine's root ``MODELS``).

    Idempotent; a name already taken by another class is left alone with a warning. Returns the
    names registered by this call.
    """
    if registry is None:
        from mmengine.registry import MODELS as registry
    done = []
    for name, cls in REGISTERED.items():
        existing = registry.module_dict.get(name)
        if existing is cls:
            continue
        if existing is not None:
            warnings.warn(f'actnn_mm: {name!r} is already registered as {existing!r} in '
                          f'{registry.name}; not overriding it', RuntimeWarning, stacklevel=2)
            continue
        registry.register_module(name=name, module=cls)
        done.append(name)
    return done


def _register_on_import() -> None:
    try:
        import mmengine.registry  # noqa: F401
    except ImportError:  # mmengine is a hard dependency; tolerate a half-built environment
        warnings.warn('actnn_mm: mmengine is not installed, Q-layers are not registered in '
                      'MODELS (pip install mmengine)', RuntimeWarning, stacklevel=3)
        return
    register_all()
