"""``convert`` / ``revert``: same Parameter and buffer objects, optimizer and checkpoints stay
valid, levels decide what converts, unsupported modules are reported, twice is a no-op."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from actnn_mm import convert, get_allocator, revert
from actnn_mm.conversion import is_converted
from actnn_mm.engine import BitAllocator, CompressionConfig
from actnn_mm.forward_context import installed
from actnn_mm.layers import QLAYERS, TWINS, QBatchNorm2d, QConv2d, QLinear, QMaxPool2d, QReLU
from actnn_mm.saved_bytes import measure_saved_bytes

L0 = CompressionConfig.from_level('L0')
L3 = CompressionConfig.from_level('L3')


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64)


def test_keeps_parameter_and_buffer_objects_and_names() -> None:
    model = _resnet()
    params = list(model.named_parameters())
    buffers = list(model.named_buffers())
    keys = list(model.state_dict())
    supported = [n for n, m in model.named_modules() if type(m) in QLAYERS]
    report = convert(model, L3)
    assert [n for n, _, _ in report.converted] == supported
    assert [(n, id(p)) for n, p in model.named_parameters()] == [(n, id(p)) for n, p in params]
    assert [(n, id(b)) for n, b in model.named_buffers()] == [(n, id(b)) for n, b in buffers]
    assert list(model.state_dict()) == keys
    assert type(model.conv1) is QConv2d and type(model.bn1) is QBatchNorm2d
    assert type(model.relu) is QReLU and type(model.maxpool) is QMaxPool2d
    assert type(model.fc) is QLinear


def test_optimizer_built_before_conversion_keeps_training() -> None:
    model = _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(_x()), torch.tensor([1, 2])).backward()
    opt.step()
    convert(model, L3)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(_x()), torch.tensor([1, 2])).backward()
    opt.step()
    assert all(p in opt.state and 'momentum_buffer' in opt.state[p] for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_checkpoints_load_into_either_form() -> None:
    plain, converted = _resnet(), _resnet()
    with torch.no_grad():
        for p in converted.parameters():
            p.add_(1)
    convert(converted, L3)
    plain.load_state_dict(converted.state_dict())  # strict
    for a, b in zip(plain.state_dict().values(), converted.state_dict().values()):
        assert torch.equal(a, b)
    fresh = _resnet()
    converted.load_state_dict(fresh.state_dict())
    for a, b in zip(fresh.state_dict().values(), converted.state_dict().values()):
        assert torch.equal(a, b)
    buf = io.BytesIO()  # the whole module pickles (hooks and schemes included)
    torch.save(converted, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert type(again.conv1) is QConv2d and installed(again) is not None
    again(_x()).sum().backward()


def test_l0_converted_gradients_bitwise_equal_to_torch() -> None:
    ref = _resnet()
    model = copy.deepcopy(ref)
    convert(model, L0)
    x = _x()
    ref(x).logsumexp(1).sum().backward()
    model(x).logsumexp(1).sum().backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    for (n, a), (_, b) in zip(ref.named_buffers(), model.named_buffers()):
        assert torch.equal(a, b), n


def test_compressed_converted_model_gradients_close() -> None:
    ref = _resnet()
    model = copy.deepcopy(ref)
    convert(model, CompressionConfig.from_level('L2'))
    x = _x()
    ref(x).logsumexp(1).sum().backward()
    model(x).logsumexp(1).sum().backward()
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert F.cosine_similarity(g, g_ref, dim=0) > 0.9


def test_converting_twice_is_a_noop_and_revert_restores() -> None:
    model = _resnet()
    types = [type(m) for m in model.modules()]
    first = convert(model, L3)
    state = {n: (type(m), m.__dict__.get('actnn_config')) for n, m in model.named_modules()}
    second = convert(model, L3)
    assert second.num_converted == 0 and len(second.already) == first.num_converted
    assert {n: (type(m), m.__dict__.get('actnn_config'))
            for n, m in model.named_modules()} == state
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    assert is_converted(model)
    assert revert(model) == first.num_converted
    assert [type(m) for m in model.modules()] == types
    assert not is_converted(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not any(k.startswith(('actnn_', '_actnn')) for k in vars(m))
               for m in model.modules())
    model(_x()).sum().backward()


def test_l1_leaves_norm_layers_exact() -> None:
    model = _resnet()
    report = convert(model, CompressionConfig.from_level('L1'))
    assert type(model.bn1) is nn.BatchNorm2d and type(model.conv1) is QConv2d
    reasons = report.skipped_reasons()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert reasons['BatchNorm2d: level L1 keeps normalization exact'] == n_bn
    assert 'keeps normalization exact' in str(report)
    # The saved-tensor path leaves them exact too: each BN keeps what torch's BN keeps.
    x = _x()
    exact = measure_saved_bytes(_resnet(), x).by_module
    kept = measure_saved_bytes(model, x).by_module
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(kept[n] == exact[n] > 0 for n in bns)
    # BN inputs are about half of what ResNet keeps; the rest is compressed (4 bits, masks).
    assert sum(kept.values()) < 0.6 * sum(exact.values())
    revert(model)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_include_and_exclude() -> None:
    model = _resnet()
    convert(model, L3, include='layer1.*', exclude=[nn.BatchNorm2d, 'layer1.1.conv2'])
    q = {n for n, m in model.named_modules() if type(m) in TWINS}
    assert q == {'layer1.0.conv1', 'layer1.0.conv2', 'layer1.0.relu', 'layer1.1.conv1',
                 'layer1.1.relu'}
    model2 = _resnet()
    convert(model2, L3, include=lambda name, m: isinstance(m, nn.ReLU), saved_tensors=False)
    assert {type(m) for m in model2.modules() if type(m) in TWINS} == {QReLU}
    assert installed(model2) is None


class _MyConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _MyConv(4, 4, 1)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.gate = nn.Sigmoid()
        self.emb = nn.Embedding(10, 4)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x)) * self.scale
        t = x.flatten(2).transpose(1, 2)
        t = self.attn(t, t, t)[0] + self.emb(torch.zeros(t.shape[:2], dtype=torch.long))
        return self.gate(F.max_pool2d(t.transpose(1, 2).reshape(x.shape), 2))


def test_unsupported_modules_and_functional_calls_are_reported() -> None:
    model = _Head()
    report = convert(model, L3)
    skipped = {n: r for n, _, r in report.skipped}
    assert skipped['conv'].startswith('subclass of nn.Conv2d with its own code')
    assert skipped['attn'] == 'no Q-layer for this type: covered by saved-tensor compression'
    assert 'gate' in skipped and 'emb' in skipped and '' in skipped  # root: own parameter
    assert type(model.conv) is _MyConv  # left as it is
    assert type(model.attn.out_proj) is not QLinear  # used functionally by MHA: a subclass
    assert 'functional relu in _Head.forward: covered by saved-tensor compression' in \
        report.functional
    assert 'functional max_pool2d in _Head.forward: covered by saved-tensor compression' in \
        report.functional
    model(torch.randn(2, 4, 4, 4)).sum().backward()  # trains under the saved-tensor path
    off = convert(_Head(), L3, saved_tensors=False)
    assert any('not compressed (saved-tensor compression off)' in n for n in off.functional)


def test_mmcv_wrapper_layers_convert_and_revert() -> None:
    wrappers = pytest.importorskip('mmcv.cnn.bricks.wrappers')
    model = nn.Sequential(wrappers.Conv2d(3, 4, 3), wrappers.MaxPool2d(2), wrappers.Linear(4, 2))
    assert all(type(m) not in QLAYERS for m in model)  # subclasses of the torch layers
    report = convert(model, L3)
    assert report.num_converted == 3
    assert [type(m) for m in model] == [QConv2d, QMaxPool2d, QLinear]
    model(torch.randn(2, 3, 10, 10)).sum().backward()
    revert(model)
    assert [type(m) for m in model] == [wrappers.Conv2d, wrappers.MaxPool2d, wrappers.Linear]


def test_deepcopy_keeps_buffers_paired_by_position() -> None:
    """MoCo deep-copies the online encoder and pairs buffers by position for its EMA."""
    online = _resnet()
    convert(online, L3)
    key = copy.deepcopy(online)
    assert [n for n, _ in key.named_buffers()] == [n for n, _ in online.named_buffers()]
    with torch.no_grad():
        for b_k, b_o in zip(key.buffers(), online.buffers()):
            b_k.copy_(b_o)
        key(_x())  # the key encoder runs without grad: nothing compressed
    online(_x()).sum().backward()
    assert installed(key) is not None and installed(key) is not installed(online)


def test_bit_allocator_collects_the_schemes() -> None:
    model = _resnet()
    conversion = convert(model, L3)
    alloc = get_allocator(model)
    assert isinstance(alloc, BitAllocator) and conversion.allocator is alloc
    model(_x()).sum().backward()
    names = set(alloc.layer_bits())
    assert {'conv1', 'bn1', 'layer4.1.conv2', 'fc'} <= names
    assert alloc.steps == 1 and alloc.solves == 1  # the backward stepped it: first step solves
    bits = list(alloc.layer_bits().values())
    assert min(bits) >= 1 and max(bits) <= 8


def test_mixed_precision_needs_no_call_from_the_training_loop() -> None:
    """convert() alone, then a plain loop: every backward steps the allocator, so the bits are
    solved across layers (before, only ActNNHook stepped it and they stayed at 2 forever)."""
    model = _resnet()
    alloc = convert(model, L3.replace(realloc_interval=2)).allocator
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(_x()), torch.tensor([1, 2])).backward()
        opt.step()
    assert alloc.steps == 4 and alloc.solves == 3  # steps 1, 2 and 4 solve
    bits = alloc.layer_bits()
    assert len(set(bits.values())) > 1, bits  # mixed precision: layers differ
    with torch.no_grad():  # neither eval nor no-grad forwards count
        model(_x())
    model.eval()
    model(_x()).sum().backward()
    assert alloc.steps == 4


def test_parts_sharing_an_allocator_step_it_once_per_backward() -> None:
    model = _resnet()
    alloc = BitAllocator(L3)
    convert(model.layer1, L3, allocator=alloc)
    convert(model.layer2, L3, allocator=alloc)
    y = model(_x())
    (y.sum() + model(_x()).sum()).backward()  # two forwards, one backward
    assert alloc.steps == 1
    model(_x()).sum().backward()
    assert alloc.steps == 2
    with pytest.raises(ValueError, match='allocator must be a BitAllocator of the same config'):
        convert(model.layer3, L0, allocator=alloc)


def test_revert_stops_the_stepping_and_the_handle_reverts() -> None:
    model = _resnet()
    conversion = convert(model, L3)
    conversion.revert()
    assert not is_converted(model)
    model(_x()).sum().backward()
    assert conversion.allocator.steps == 0
    with pytest.raises(RuntimeError, match='already reverted'):
        conversion.revert()


def test_conversion_state_dict_carries_config_and_bits() -> None:
    cfg = L3.replace(bits=3, group_size=128)
    model = _resnet()
    conversion = convert(model, cfg)
    model(_x()).sum().backward()
    state = conversion.state_dict()
    assert CompressionConfig.from_dict(state['config']) == cfg
    other = _resnet()
    again = convert(other, cfg)
    again.load_state_dict(state)
    other(_x()).sum().backward()  # schemes built now get the loaded bits
    assert again.allocator.layer_bits()['conv1'] == conversion.allocator.layer_bits()['conv1']
    with pytest.raises(ValueError, match=r'bits=3 \(now 2\)'):
        convert(_resnet(), L3).load_state_dict(state)


def test_convert_takes_a_level_name_and_rejects_other_configs() -> None:
    assert convert(_resnet(), 'L2').config == CompressionConfig.from_level('L2')
    with pytest.raises(ValueError, match='config must be a CompressionConfig or a level name'):
        convert(_resnet(), dict(level='L3'))


@pytest.mark.parametrize('when', ['before', 'after'])
def test_module_moves_before_or_after_conversion_keep_the_optimizer_valid(when: str) -> None:
    """CPU stand-in for ``.cuda()``: ``Module._apply`` (here a bf16 cast) swaps every tensor
    in place of the same Parameter objects, before or after conversion alike."""
    model = _resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if when == 'before':
        model.to(torch.bfloat16)
    convert(model, L3)
    if when == 'after':
        model.to(torch.bfloat16)
    assert {id(p) for g in opt.param_groups for p in g['params']} == \
        {id(p) for p in model.parameters()}
    before = [p.detach().clone() for p in model.parameters()]
    model(_x().to(torch.bfloat16)).float().sum().backward()
    opt.step()
    assert all(p.dtype == torch.bfloat16 and p.grad is not None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('when', ['before', 'after'])
def test_cuda_before_or_after_conversion(when: str) -> None:
    model = _resnet()
    if when == 'before':
        model.cuda()
    convert(model, L3)
    if when == 'after':
        model.cuda()
    model(_x().cuda()).sum().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())


def test_mmdet_head_functional_relu_is_reported() -> None:
    pytest.importorskip('mmdet')
    from mmdet.models.dense_heads import RPNHead
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):  # its coder/anchors live in mmdet
        head = RPNHead(in_channels=8, feat_channels=8, anchor_generator=dict(
            type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4]))
    report = convert(head, L3)
    assert 'functional relu in RPNHead.forward_single: covered by saved-tensor compression' in \
        report.functional
    assert type(head.rpn_conv) is QConv2d
    cls, reg = head.forward_single(torch.randn(2, 8, 16, 16))
    (cls.sum() + reg.sum()).backward()


def test_mmengine_reverted_sync_bn_converts_and_reverts() -> None:
    """Without distribution mmengine turns SyncBN into its ``_BatchNormXd``: convert that too."""
    pytest.importorskip('mmengine')
    from mmengine.model import revert_sync_batchnorm
    from mmengine.model.utils import _BatchNormXd

    from actnn_mm.layers import QBatchNormXd
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SyncBatchNorm(8), nn.ReLU())
    ref = revert_sync_batchnorm(ref)
    assert type(ref[1]) is _BatchNormXd
    model = copy.deepcopy(ref)
    report = convert(model, L0)
    assert type(model[1]) is QBatchNormXd and ('1', '_BatchNormXd', 'QBatchNormXd') in \
        report.converted
    x = torch.randn(2, 3, 10, 10)
    ref(x).sum().backward()
    model(x).sum().backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    assert convert(model, L0).num_converted == 0
    revert(model)
    assert type(model[1]) is _BatchNormXd


def test_given_bit_allocator_is_used() -> None:
    model = _resnet()
    alloc = BitAllocator(L3)
    convert(model, L3, allocator=alloc)
    assert get_allocator(model) is alloc
    model(_x()).sum().backward()
    assert 'layer1.0.conv1' in alloc.layer_bits()


def test_trained_converted_model_pickles_and_deep_copies() -> None:
    model = _resnet()
    convert(model, L3)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()  # schemes and allocator state now exist
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(model)
    for m in (again, twin):
        assert type(m.layer1[0].conv1) is QConv2d
        assert 'actnn_scheme' not in vars(m.layer1[0].conv1)
        m(x).sum().backward()
    assert get_allocator(model).layer_bits()


def test_mmcv_syncbn_converts_and_reverts() -> None:
    """mmseg configs use ``SyncBN``: mmcv builds mmengine's SyncBatchNorm subclass."""
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    from actnn_mm.layers import QSyncBatchNorm
    _, norm = mmcv_cnn.build_norm_layer(dict(type='SyncBN'), 8)
    orig = type(norm)
    assert orig is not nn.SyncBatchNorm and issubclass(orig, nn.SyncBatchNorm)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), norm)
    convert(model, L3)
    assert type(model[1]) is QSyncBatchNorm
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    revert(model)
    assert type(model[1]) is orig
