"""Q-layers: drop-in twins of torch layers that keep compressed activations for backward.

Each is a direct subclass of its torch twin (same constructor, parameters, buffers, ``state_dict``
keys and ``repr``) whose training forward runs an autograd Function saving only what backward
needs, compressed by :mod:`actnn_mm.engine`; in ``eval()``/``no_grad`` it is the twin.
"""
import torch.nn as _nn

from ._qlayer import eager_forward, outside_saved_tensor_mode, q_getstate
from .activation import QGELU, QHardswish, QLeakyReLU, QReLU, QSiLU
from .conv import QConv1d, QConv2d, QConv3d, QConvTranspose1d, QConvTranspose2d, QConvTranspose3d
from .dropout import QDropout, QDropout2d
from .linear import QLinear
from .norm import (
    QBatchNorm1d,
    QBatchNorm2d,
    QBatchNorm3d,
    QBatchNormXd,
    QGroupNorm,
    QLayerNorm,
    QSyncBatchNorm,
)
from .pooling import QAvgPool2d, QMaxPool2d

#: torch class -> Q twin. Conversion and the registry are driven by this table.
QLAYERS = {
    _nn.Conv1d: QConv1d,
    _nn.Conv2d: QConv2d,
    _nn.Conv3d: QConv3d,
    _nn.ConvTranspose1d: QConvTranspose1d,
    _nn.ConvTranspose2d: QConvTranspose2d,
    _nn.ConvTranspose3d: QConvTranspose3d,
    _nn.Linear: QLinear,
    _nn.BatchNorm1d: QBatchNorm1d,
    _nn.BatchNorm2d: QBatchNorm2d,
    _nn.BatchNorm3d: QBatchNorm3d,
    _nn.SyncBatchNorm: QSyncBatchNorm,
    _nn.LayerNorm: QLayerNorm,
    _nn.GroupNorm: QGroupNorm,
    _nn.ReLU: QReLU,
    _nn.LeakyReLU: QLeakyReLU,
    _nn.GELU: QGELU,
    _nn.SiLU: QSiLU,
    _nn.Hardswish: QHardswish,
    _nn.MaxPool2d: QMaxPool2d,
    _nn.AvgPool2d: QAvgPool2d,
    _nn.Dropout: QDropout,
    _nn.Dropout2d: QDropout2d,
}

#: Twins outside torch, by ``module.qualname`` (no import needed): converted like the above,
#: their class remembered for ``revert``.
QLAYERS_BY_NAME = {
    'mmengine.model.utils._BatchNormXd': QBatchNormXd,  # what revert_sync_batchnorm builds
}

#: Q class -> its torch twin (for QBatchNormXd the torch base; revert restores mmengine's class).
TWINS = {q: t for t, q in QLAYERS.items()}
TWINS[QBatchNormXd] = _nn.modules.batchnorm._BatchNorm

# Pickling and deepcopy (torch.save(model), MoCo's key encoder) skip the run-time scheme state.
# Under torch.compile every Q-layer runs eagerly between compiled graphs, so it compresses; and
# it runs outside the saved-tensor mode, which steers only what autograd saves for the twins.
for _q in TWINS:
    _q.__getstate__ = q_getstate
    _q.forward = eager_forward(outside_saved_tensor_mode(_q.forward))

#: Normalisation Q-layers (kept exact where the level does not compress norms, e.g. L1).
NORM_LAYERS = (QBatchNorm1d, QBatchNorm2d, QBatchNorm3d, QBatchNormXd, QSyncBatchNorm, QLayerNorm,
               QGroupNorm)

__all__ = ['QConv1d', 'QConv2d', 'QConv3d', 'QConvTranspose1d', 'QConvTranspose2d',
           'QConvTranspose3d', 'QLinear', 'QBatchNorm1d', 'QBatchNorm2d', 'QBatchNorm3d',
           'QBatchNormXd', 'QLAYERS_BY_NAME',
           'QSyncBatchNorm', 'QLayerNorm', 'QGroupNorm', 'QReLU', 'QLeakyReLU', 'QGELU', 'QSiLU',
           'QHardswish',
           'QMaxPool2d', 'QAvgPool2d', 'QDropout', 'QDropout2d', 'QLAYERS', 'TWINS',
           'NORM_LAYERS']
