"""``import actnn_mm`` registers the Q-layers where mmcv builds layers from (mmengine's MODELS),
with mmcv's norm abbreviations, usable from ConvModule and from mmdet/mmseg/mmpretrain models."""
from __future__ import annotations

import pytest
import torch

import actnn_mm  # noqa: F401  (registers)
from actnn_mm import layers as L
from actnn_mm.registry import REGISTERED

mmengine = pytest.importorskip('mmengine')
mmcv_cnn = pytest.importorskip('mmcv.cnn')
from mmengine.registry import MODELS  # noqa: E402


def test_every_name_is_registered_in_the_root_models() -> None:
    for name, cls in REGISTERED.items():
        assert MODELS.get(name) is cls, name
    required = ['QConv1d', 'QConv2d', 'QConv3d', 'QConv', 'QConvTranspose2d', 'QBN1d', 'QBN2d',
                'QBN3d', 'QBN', 'QSyncBN', 'QGN', 'QLN', 'QReLU', 'QLeakyReLU', 'QGELU', 'QSiLU',
                'QMaxPool2d', 'QAvgPool2d']
    assert set(required) <= set(MODELS.module_dict)
    assert MODELS.get('QConv') is L.QConv2d and MODELS.get('QBN') is L.QBatchNorm2d


@pytest.mark.parametrize('cfg,abbr,cls', [
    (dict(type='QBN'), 'bn', L.QBatchNorm2d),
    (dict(type='QBN1d'), 'bn', L.QBatchNorm1d),
    (dict(type='QBN3d'), 'bn', L.QBatchNorm3d),
    (dict(type='QSyncBN'), 'bn', L.QSyncBatchNorm),
    (dict(type='QGN', num_groups=4), 'gn', L.QGroupNorm),
    (dict(type='QLN'), 'ln', L.QLayerNorm),
])
def test_build_norm_layer_keeps_mmcv_names(cfg: dict, abbr: str, cls: type) -> None:
    name, layer = mmcv_cnn.build_norm_layer(dict(cfg, requires_grad=False), 16, postfix=1)
    assert name == f'{abbr}1' and type(layer) is cls
    assert all(not p.requires_grad for p in layer.parameters())
    assert layer.eps == 1e-5


def test_build_conv_and_activation_layers() -> None:
    conv = mmcv_cnn.build_conv_layer(dict(type='QConv2d'), 4, 8, 3, padding=1)
    assert type(conv) is L.QConv2d and conv.padding == (1, 1)
    assert type(mmcv_cnn.build_conv_layer(dict(type='QConv3d'), 4, 8, 3)) is L.QConv3d
    assert type(mmcv_cnn.build_conv_layer(dict(type='QConvTranspose2d'), 4, 8, 2)) is \
        L.QConvTranspose2d
    for cfg, cls in [(dict(type='QReLU', inplace=True), L.QReLU),
                     (dict(type='QLeakyReLU', negative_slope=0.1), L.QLeakyReLU),
                     (dict(type='QGELU', inplace=True), L.QGELU),  # ConvModule passes inplace
                     (dict(type='QSiLU', inplace=True), L.QSiLU)]:
        assert type(mmcv_cnn.build_activation_layer(cfg)) is cls
    assert type(MODELS.build(dict(type='QMaxPool2d', kernel_size=3))) is L.QMaxPool2d
    assert type(MODELS.build(dict(type='QAvgPool2d', kernel_size=2))) is L.QAvgPool2d


@pytest.mark.parametrize('norm_cfg,act_cfg', [
    (dict(type='QBN', requires_grad=True), dict(type='QReLU')),
    (dict(type='QGN', num_groups=4), dict(type='QGELU')),
    (dict(type='QSyncBN'), dict(type='QSiLU')),
    (dict(type='QBN'), dict(type='QLeakyReLU', negative_slope=0.2)),
])
def test_conv_module_with_q_configs(norm_cfg: dict, act_cfg: dict) -> None:
    cm = mmcv_cnn.ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type='QConv2d'),
                             norm_cfg=norm_cfg, act_cfg=act_cfg)
    assert type(cm.conv) is L.QConv2d
    assert cm.conv.bias is None  # bias='auto' saw a norm layer
    assert cm.norm_name in ('bn', 'gn')
    assert type(cm.activate).__name__ == act_cfg['type']
    ref = mmcv_cnn.ConvModule(8, 16, 3, padding=1, norm_cfg=dict(norm_cfg, type=norm_cfg[
        'type'][1:]), act_cfg=dict(act_cfg, type=act_cfg['type'][1:]))
    assert list(ref.state_dict()) == list(cm.state_dict())
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    cm(x).sum().backward()
    assert x.grad is not None and cm.conv.weight.grad is not None


def test_conv_module_builds_under_a_downstream_scope() -> None:
    pytest.importorskip('mmdet')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        cm = mmcv_cnn.ConvModule(4, 4, 1, conv_cfg=dict(type='QConv2d'),
                                 norm_cfg=dict(type='QBN'), act_cfg=dict(type='QReLU'))
    assert type(cm.bn) is L.QBatchNorm2d


def test_mmdet_resnet_with_q_layers_from_config() -> None:
    pytest.importorskip('mmdet')
    from mmdet.models.backbones import ResNet
    from mmengine.registry import DefaultScope
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = ResNet(50, conv_cfg=dict(type='QConv2d'),
                       norm_cfg=dict(type='QBN', requires_grad=True), norm_eval=True,
                       frozen_stages=1, out_indices=(0, 1, 2, 3))
        plain = ResNet(50, norm_eval=True, frozen_stages=1, out_indices=(0, 1, 2, 3))
    assert list(model.state_dict()) == list(plain.state_dict())  # pretrained keys match
    assert model.norm1_name == 'bn1' and type(model.layer1[0].bn1) is L.QBatchNorm2d
    assert type(model.layer1[0].conv2) is L.QConv2d
    # init_cfg matching (Kaiming on 'Conv2d', Constant on '_BatchNorm') reaches the Q-layers.
    with torch.no_grad():
        model.layer2[0].bn1.weight.fill_(7)
        model.layer2[0].conv1.weight.fill_(7)
    model.init_weights()
    assert torch.all(model.layer2[0].bn1.weight == 1)
    assert model.layer2[0].conv1.weight.std() < 1
    # frozen_stages / norm_eval: isinstance(_BatchNorm) checks see the QBNs.
    model.train()
    assert not model.layer1[0].bn1.training and not model.bn1.weight.requires_grad
    report = actnn_mm.convert(model)  # the hard-coded ReLU(inplace) and MaxPool
    assert report.converted_types() == {'ReLU -> QReLU': 17, 'MaxPool2d -> QMaxPool2d': 1}
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    assert model.layer4[2].conv3.weight.grad is not None


def test_mmpretrain_and_mmseg_backbones_with_q_norms() -> None:
    mmpretrain = pytest.importorskip('mmpretrain')  # noqa: F841
    from mmengine.registry import DefaultScope
    from mmpretrain.models import ResNet as PResNet
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = PResNet(18, norm_cfg=dict(type='QBN', requires_grad=True),
                        conv_cfg=dict(type='QConv2d'))
    assert model.norm1_name == 'bn1' and type(model.bn1) is L.QBatchNorm2d
    pytest.importorskip('mmseg')
    from mmengine.registry import DefaultScope
    from mmseg.models.decode_heads import FCNHead
    with DefaultScope.overwrite_default_scope('mmseg'):  # its loss lives in mmseg
        head = FCNHead(in_channels=16, channels=8, num_classes=3,
                       norm_cfg=dict(type='QBN', requires_grad=True), act_cfg=dict(type='QReLU'))
    assert type(head.convs[0].bn) is L.QBatchNorm2d and type(head.convs[0].activate) is L.QReLU
    out = head([torch.randn(2, 16, 8, 8)])
    out.sum().backward()
