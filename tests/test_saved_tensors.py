"""Saved-tensor compression: every float activation autograd saves inside the context, once;
parameters, buffers, tiny and non-float tensors left alone; Q-layers' copies reused."""
from __future__ import annotations

import contextlib
import copy
from typing import List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actnn_mm import convert, saved_tensors
from actnn_mm import saved_bytes as saved_bytes_module
from actnn_mm.engine import CompressedTensor, CompressionConfig, PackedMask
from actnn_mm.forward_context import install, installed, uninstall
from actnn_mm.layers import QConv2d
from actnn_mm.saved_bytes import SavedBytesCounter, measure_saved_bytes
from actnn_mm.saved_tensors import compress_saved_tensors

L3 = CompressionConfig.from_level('L3', min_numel=64)
L2 = CompressionConfig.from_level('L2', min_numel=64)


class FunctionalNet(nn.Module):
    """Only functional ops: nothing a Q-layer could replace."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(64, 32) / 6)
        self.w2 = nn.Parameter(torch.randn(16, 64) / 8)
        self.register_buffer('shift', torch.zeros(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.w1) + self.shift)
        return F.linear(h, self.w2)


def _objects(counter: SavedBytesCounter, kind: type) -> List:
    return [o for o in counter.objects if isinstance(o, kind)]


def test_functional_model_keeps_fewer_bytes() -> None:
    model = FunctionalNet()
    x = torch.randn(8, 16, 32, requires_grad=True)  # as inner layers see it: with grad
    exact = measure_saved_bytes(model, x)
    ctx = compress_saved_tensors(L3)

    def run(m: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        with ctx:
            return m(inp)

    compressed = measure_saved_bytes(model, x, forward=run)
    assert exact.total / compressed.total > 8


def test_functional_model_gradients_unbiased() -> None:
    """ReLU keeps an exact mask and linear layers' weight grads are linear in what is saved."""
    torch.manual_seed(0)
    model = FunctionalNet()
    x = torch.randn(8, 16, 32, requires_grad=True)  # an input with grad: an activation
    g = torch.randn(8, 16, 16)
    model(x).backward(g)
    exact = [p.grad.clone() for p in (model.w1, model.w2)]
    ctx = compress_saved_tensors(L2)
    samples: List[List[torch.Tensor]] = [[], []]
    for seed in range(24):
        model.zero_grad()
        torch.manual_seed(100 + seed)
        with ctx:
            y = model(x)
        y.backward(g)
        samples[0].append(model.w1.grad.clone())
        samples[1].append(model.w2.grad.clone())
    for s, e in zip(samples, exact):
        s = torch.stack(s).double()
        assert s.var(0).sum() > 0
        t = ((s.mean(0) - e.double()) ** 2).sum() / (s.var(0).sum() / s.shape[0])
        assert t < 1.5, f'biased: T = {t:.2f}'


def test_what_is_and_is_not_compressed() -> None:
    model = FunctionalNet()
    x = torch.randn(8, 16, 32, requires_grad=True)
    tiny = torch.randn(4, 4, requires_grad=True)  # an input with grad, but tiny
    index = torch.randint(0, 16, (300, ))
    grid = torch.rand(8, 4, 4, 2) * 2 - 1  # data without grad (sampling grids, boxes): exact
    target = torch.rand(64, 64)  # data without grad in a product: compressed
    with SavedBytesCounter(model, keep_objects=True) as counter:
        with compress_saved_tensors(L3, modules=[model]):
            y = model(x)
            y = y + (tiny @ tiny).sum()  # tiny: kept exact
            y = y.index_select(2, index)  # int64 index: left alone
            y = y + F.grid_sample(y[:, None], grid, align_corners=False).sum()
            y = y + (y.sum() * target).sum()  # saves `target` (no grad) for y's gradient
    # x (saved by the first linear), relu output (saved by the second), grid_sample's input,
    # the product's target: compressed; the ReLU's own save: a 1-bit mask; weights and the
    # buffer: never.
    assert len(_objects(counter, CompressedTensor)) == 4
    assert len(_objects(counter, PackedMask)) == 1
    kinds = counter.by_kind
    assert kinds['exact'] == tiny.numel() * 4 + index.numel() * 8 + grid.numel() * 4
    y.sum().backward()
    assert model.w1.grad is not None


def test_tensor_saved_by_several_ops_compressed_once() -> None:
    a = nn.Parameter(torch.randn(16, 16))
    b = nn.Parameter(torch.randn(16, 16))
    x = torch.randn(4, 64, 16, requires_grad=True) * 1
    with SavedBytesCounter(keep_objects=True) as counter:
        with compress_saved_tensors(L3):
            y = (x @ a).sum() + (x @ b).sum() + (x * 3).exp().sum()
    assert len(_objects(counter, CompressedTensor)) == 2  # x once (for a and b); exp's output
    y.backward()


def test_q_layer_copy_is_reused_not_compressed_twice() -> None:
    conv = QConv2d(8, 8, 3)
    conv.actnn_config = L3
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    x = torch.randn(2, 8, 12, 12)
    with SavedBytesCounter(conv, keep_objects=True) as counter:
        with compress_saved_tensors(L3):
            y = conv(x).sum() + F.conv2d(x, w).sum()  # the same input, saved by both
    assert len(_objects(counter, CompressedTensor)) == 1
    y.backward()
    assert w.grad is not None and conv.weight.grad is not None


def test_eval_and_no_grad_compress_nothing() -> None:
    model = FunctionalNet()
    install(model, L3)
    x = torch.randn(8, 16, 32)
    model.eval()
    with SavedBytesCounter(model, keep_objects=True) as counter:
        model(x)
    assert counter.objects == []
    model.train()
    with torch.no_grad(), SavedBytesCounter(model, keep_objects=True) as counter:
        model(x)
    assert counter.total == 0
    with SavedBytesCounter(model, keep_objects=True) as counter:
        model(x).sum().backward()
    assert _objects(counter, CompressedTensor)
    assert uninstall(model) and installed(model) is None


def test_context_is_reentrant_and_survives_exceptions() -> None:
    model = FunctionalNet()
    ctx = install(model, L3)
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 5))  # wrong shape: the forward raises
    assert not ctx.active  # the always-called exit hook left the context
    with ctx:
        model(torch.randn(8, 16, 32)).sum().backward()  # nested entry: one push
    assert not ctx.active


def _swin():
    pytest.importorskip('mmpretrain')
    from mmpretrain.models import SwinTransformer
    torch.manual_seed(0)
    arch = dict(embed_dims=32, depths=[2, 2], num_heads=[2, 4])  # Swin-T's blocks, narrower
    return SwinTransformer(arch=arch, img_size=64, window_size=4, drop_path_rate=0.0,
                           out_indices=(1, ), init_cfg=None)


@pytest.mark.parametrize('with_qlayers', [False, True], ids=['saved-tensors', 'both'])
def test_swin_backbone_trains_with_compressed_activations(with_qlayers: bool) -> None:
    ref = _swin()
    model = copy.deepcopy(ref)
    cfg = CompressionConfig.from_level('L2')
    if with_qlayers:
        convert(model, cfg)
    else:
        install(model, cfg)
    x = torch.randn(2, 3, 64, 64)
    proj = torch.randn(2, 64, 8, 8)  # a generic loss (|LayerNorm(x)|^2 would be constant)
    (ref(x)[-1] * proj).sum().backward()
    with SavedBytesCounter(model, keep_objects=True) as counter:
        out = model(x)
    (out[-1] * proj).sum().backward()
    assert _objects(counter, CompressedTensor)
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    g = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert g.shape == g_ref.shape and torch.isfinite(g).all()
    assert F.cosine_similarity(g, g_ref, dim=0) > 0.95


def test_whole_faster_rcnn_trains_converted() -> None:
    """Backbone, neck and heads converted: RoIAlign's boxes (saved without grad) stay exact."""
    mmdet = pytest.importorskip('mmdet')
    import os.path as osp

    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__),
                                   '.mim/configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'))
    m = cfg.model  # the paper's detector, made small enough for a CPU unit test
    m.backbone.update(depth=18, init_cfg=None)
    m.neck.in_channels = [64, 128, 256, 512]
    m.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
    m.train_cfg.rcnn.sampler.num = 64
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        exact_model = copy.deepcopy(model)
        convert(model, CompressionConfig.from_level('L3'))
        data = model.data_preprocessor(
            demo_mm_inputs(2, [[3, 64, 64]] * 2, num_items=[3, 1]), True)

        def loss_of(m: nn.Module) -> torch.Tensor:
            losses = m(**data, mode='loss')
            return sum(sum(v) if isinstance(v, list) else v for k, v in losses.items()
                       if 'loss' in k)

        exact = measure_saved_bytes(exact_model, forward=lambda m: loss_of(m))
        kept = measure_saved_bytes(model, forward=lambda m: loss_of(m))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.roi_head.bbox_head.fc_cls.weight.grad is not None
    assert exact.total / kept.total > 8


def _multiplicative_update(x: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """SegNeXt's NMF head (mmseg ``NMF2D.local_step``): ``coef * num / (den + 1e-6)`` with
    non-negative factors, the divisor's values spanning several orders of magnitude."""
    coef = torch.softmax(torch.bmm(x.transpose(1, 2), bases), -1)
    for _ in range(6):
        num = torch.bmm(x.transpose(1, 2), bases)
        den = coef.bmm(bases.transpose(1, 2).bmm(bases))
        coef = coef * num / (den + 1e-6)
        num = torch.bmm(x, coef)
        den = bases.bmm(coef.transpose(1, 2).bmm(coef))
        bases = bases * num / (den + 1e-6)
    return torch.bmm(bases, coef.transpose(1, 2))


@pytest.mark.parametrize('level', ['L2', 'L3'])
def test_divisors_stay_exact_so_multiplicative_updates_keep_finite_gradients(level: str) -> None:
    """What a division saves stays exact (and sqrt, log, norms...: EXACT_OPS): rounding a
    divisor to a fraction of its group's range turns 1/den into 1/1e-6 near zero (SegNeXt at L2
    and L3 got NaN gradients); the matmuls around it are still compressed."""
    torch.manual_seed(0)
    x = torch.rand(2, 64, 1024).pow(4).requires_grad_()
    bases = F.normalize(torch.rand(2, 64, 16), dim=1)
    g = torch.randn(2, 64, 1024)
    _multiplicative_update(x, bases).backward(g)
    exact = x.grad.clone()
    x.grad = None
    cfg = CompressionConfig.from_level(level, min_numel=64)
    with SavedBytesCounter(keep_objects=True) as counter:
        with compress_saved_tensors(cfg):
            y = _multiplicative_update(x, bases)
    y.backward(g)
    assert torch.isfinite(x.grad).all()
    assert float((x.grad - exact).norm() / exact.norm()) < 1.0
    assert _objects(counter, CompressedTensor), 'nothing compressed at all'


def _tiny_variance_input(kind: str) -> torch.Tensor:
    """Rows (layer norm) / groups (group norm) of spread 1e-2..1e-3 sharing quantization groups
    with rows of spread ~3: DeiT's cls_token + pos_embed row at init."""
    torch.manual_seed(0)
    if kind == 'layer_norm':
        x = torch.cat([torch.randn(2, 1, 192) * 0.02, torch.randn(2, 196, 192) * 3 + 1], 1)
    else:
        x = torch.cat([torch.randn(2, 8, 4, 4) * 1e-3, torch.randn(2, 56, 4, 4) * 5], 1)
    return x.requires_grad_()


def _functional_norm(kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                     ) -> torch.Tensor:
    if kind == 'layer_norm':
        return F.layer_norm(x, (x.shape[-1], ), w, b)
    return torch.group_norm(x, 8, w, b, 1e-5)


def _functional_norm_grads(kind: str, cfg: CompressionConfig = None):
    """(x.grad, weight.grad, saved-bytes counter) of one functional norm step, inside the
    context at ``cfg`` (None: exact)."""
    x = _tiny_variance_input(kind)
    c = x.shape[-1] if kind == 'layer_norm' else x.shape[1]
    w = nn.Parameter(torch.linspace(0.5, 1.5, c))
    b = nn.Parameter(torch.zeros(c))
    g = torch.randn_like(x, generator=torch.Generator().manual_seed(1))
    with SavedBytesCounter(keep_objects=True) as counter:
        if cfg is None:
            y = _functional_norm(kind, x, w, b)
        else:
            with compress_saved_tensors(cfg):
                y = _functional_norm(kind, x, w, b)
    y.backward(g)
    return x.grad, w.grad, counter


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize('kind', ['layer_norm', 'group_norm'])
def test_functional_norm_of_tiny_variance_rows_compresses_with_bounded_error(
        kind: str, monkeypatch) -> None:
    """``F.layer_norm`` / ``torch.group_norm`` called outside a norm module (mm backbones) go
    through the Q norms' Functions: the input is saved normalised and compressed, so rstd cannot
    multiply the rounding error of rows that share a group with wider ones. Autograd's own op
    would save the raw input (the naive path, measured here with the routing switched off):
    its input gradient is off by far more than its own norm."""
    ex_x, ex_w, exact = _functional_norm_grads(kind)
    gx, gw, counter = _functional_norm_grads(kind, L3)
    assert _rel(gx, ex_x) < 1.0 and _rel(gw, ex_w) < 1.5
    assert _objects(counter, CompressedTensor), 'the norm input was not compressed'
    assert exact.total / counter.total > 4
    monkeypatch.setattr(saved_tensors, 'ROUTED_NORMS', frozenset())
    monkeypatch.setattr(saved_tensors, 'EXACT_OPS', saved_tensors.EXACT_OPS - {kind})
    naive_x, _, _ = _functional_norm_grads(kind, L3)
    assert _rel(naive_x, ex_x) > 10 * max(_rel(gx, ex_x), 0.1)


@pytest.mark.parametrize('kind', ['layer_norm', 'group_norm'])
def test_functional_norm_exact_at_l0_and_l1(kind: str) -> None:
    """L0 is torch's op bit for bit; L1 (norm inputs exact) keeps what the norm saves exact."""
    ex_x, ex_w, _ = _functional_norm_grads(kind)
    for level in ('L0', 'L1'):
        gx, gw, counter = _functional_norm_grads(
            kind, CompressionConfig.from_level(level, min_numel=64))
        assert torch.equal(gx, ex_x) and torch.equal(gw, ex_w), level
        assert not _objects(counter, CompressedTensor), level


@pytest.mark.parametrize('level', ['L2', 'L3'])
@pytest.mark.parametrize('sparsity,limit', [('zero-pixels', 2.0), ('sparse', 100.0)])
def test_divisions_by_near_zero_keep_post_relu_nmf_gradients_finite(
        level: str, sparsity: str, limit: float) -> None:
    """SegNeXt's case: the NMF runs on ``F.relu(conv(x))``, so whole pixels are zero and their
    coefficients decay to ~0: the divisor ``den + 1e-6`` is ~1e-6 there. A dividend or divisor
    rounded to a fraction of its group's range (set by the other pixels) then comes back
    divided by 1e-6 (once or twice): inf / NaN gradients at L2 and L3 when what the division
    saves is compressed. Exact, the error stays bounded (sparser inputs: larger, as every
    value multiplying 1/den still is rounded)."""
    torch.manual_seed(0)
    if sparsity == 'zero-pixels':
        x = F.relu(torch.randn(2, 64, 1024))
        x[:, :, ::7] = 0
    else:
        x = F.relu(torch.randn(2, 64, 1024) - 1.5)
    x.requires_grad_()
    bases = F.normalize(torch.rand(2, 64, 16), dim=1)
    g = torch.randn(2, 64, 1024)
    _multiplicative_update(x, bases).backward(g)
    exact = x.grad.clone()
    x.grad = None
    with compress_saved_tensors(CompressionConfig.from_level(level, min_numel=64)):
        y = _multiplicative_update(x, bases)
    y.backward(g)
    assert torch.isfinite(x.grad).all()
    assert float((x.grad - exact).norm() / exact.norm()) < limit


def _mask_loss(proto: torch.Tensor, coeff: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """YOLACT's mask loss: sigmoid of prototypes x coefficients, binary cross-entropy on the
    probabilities (not the logits)."""
    prob = torch.sigmoid(torch.einsum('bchw,bnc->bnhw', proto, coeff))
    return F.binary_cross_entropy(prob, target, reduction='sum')


@pytest.mark.parametrize('level', ['L2', 'L3'])
def test_probability_losses_keep_their_input_exact(level: str) -> None:
    """``F.binary_cross_entropy``'s backward divides by ``p * (1 - p)``: a probability rounded
    to 0 or 1 (a fraction of its group's range) returns a gradient clamped only at 1e12 (YOLACT:
    gradient error 4e8x the minibatch noise at L2). What it saves stays exact."""
    torch.manual_seed(0)
    proto0 = torch.randn(2, 32, 24, 24) * 4
    coeff = torch.randn(2, 8, 32)
    target = (torch.rand(2, 8, 24, 24) > 0.5).float()

    def grad(cfg=None):
        proto = proto0.clone().requires_grad_()
        ctx = compress_saved_tensors(cfg) if cfg is not None else contextlib.nullcontext()
        with ctx:
            loss = _mask_loss(proto, coeff, target)
        loss.backward()
        return proto.grad

    exact = grad()
    got = grad(CompressionConfig.from_level(level, min_numel=64))
    assert torch.isfinite(got).all()
    assert _rel(got, exact) < 0.05  # only the sigmoid's >= 8-bit save rounds


def _gated(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BiSeNetV2's guided aggregation: a low-resolution branch, upsampled, gates a wide one."""
    return a * torch.sigmoid(F.interpolate(b * 1, size=a.shape[2:], mode='bilinear'))


def test_sigmoid_gates_keep_the_gated_branch_gradient_close() -> None:
    """What a sigmoid gate and its product save multiplies the gradient elementwise on its way
    into the gating branch (no reduction averages the rounding error): kept at GATING_BITS.
    At the level's 2 bits the branch's input gradient was off by 0.86 of its norm."""
    torch.manual_seed(0)
    a0, b0 = torch.randn(2, 128, 12, 12), torch.randn(2, 128, 3, 3) * 2
    g = torch.randn(2, 128, 12, 12)

    def grads(cfg=None):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        with SavedBytesCounter(keep_objects=True) as counter:
            if cfg is None:
                y = _gated(a, b)
            else:
                with compress_saved_tensors(cfg):
                    y = _gated(a, b)
        y.backward(g)
        return a.grad, b.grad, counter

    ex_a, ex_b, exact = grads()
    ga, gb, counter = grads(CompressionConfig.from_level('L3'))
    assert _rel(gb, ex_b) < 0.05 and _rel(ga, ex_a) < 0.02
    assert exact.total / counter.total > 3  # compressed (8 bits), not kept exact
    assert saved_tensors.GATING_BITS >= 4


def test_products_with_a_parameter_keep_the_level_bits() -> None:
    """A parameter operand (layer scale) only needs the activation for its own gradient, a
    reduction: that activation keeps the level's bits."""
    torch.manual_seed(0)
    gamma = nn.Parameter(torch.rand(64, 1, 1))
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    with SavedBytesCounter(keep_objects=True) as counter:
        with compress_saved_tensors(CompressionConfig.from_level('L2')):
            y = gamma * (x * 1)
    y.sum().backward()
    packed = _objects(counter, CompressedTensor)
    assert packed and all(int(p.bits if isinstance(p.bits, int) else p.bits.max()) == 4
                          for p in packed)


def test_multihead_attention_keeps_its_input_gradient_close(monkeypatch) -> None:
    """``nn.MultiheadAttention`` runs as one functional call: its attention products and softmax
    save at GATING_BITS: the input gradient is off by 0.01 of its norm, against 1.2 with the
    call at the level's 2 bits (DETR's transformer: every backbone gradient passes it)."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(64, 4)
    x0 = torch.randn(9, 2, 64)
    g = torch.randn(9, 2, 64)
    cfg = CompressionConfig.from_level('L3', min_numel=64)

    def grad(ctx) -> torch.Tensor:
        x = x0.clone().requires_grad_()
        with ctx:
            y = attn(x + 1, x + 1, x)[0]
        y.backward(g)
        return x.grad

    exact = grad(contextlib.nullcontext())
    floored = _rel(grad(compress_saved_tensors(cfg)), exact)
    monkeypatch.setattr(saved_tensors, 'GATING_OPS',
                        saved_tensors.GATING_OPS - {'multi_head_attention_forward'})
    naive = _rel(grad(compress_saved_tensors(cfg)), exact)
    assert floored < 0.05 and naive > 4 * floored, (floored, naive)


def _attention_grads(cfg=None, logit_scale: float = 4.0):
    """Input gradients of ``F.scaled_dot_product_attention`` with logits of ``logit_scale``
    spread (a trained ViT's), inside the context at ``cfg`` (None: exact)."""
    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, 65, 64) * logit_scale ** 0.5 for _ in range(2)]
    qkv.append(torch.randn(2, 3, 65, 64))
    qkv = [t.requires_grad_() for t in qkv]
    g = torch.randn(2, 3, 65, 64)
    with SavedBytesCounter(keep_objects=True) as counter:
        ctx = compress_saved_tensors(cfg) if cfg is not None else contextlib.nullcontext()
        with ctx:
            y = F.scaled_dot_product_attention(*qkv)
    y.backward(g)
    return [t.grad for t in qkv], counter


@pytest.mark.parametrize('level', ['L2', 'L3'])
def test_fused_attention_compresses_with_bounded_error(level: str) -> None:
    """Fused attention recomputes ``exp(q k^T - lse)`` in backward from what it saved: with q, k
    rounded the logits' error comes back as a factor (L3: gradients 5e6x off at logit spread 4,
    inf beyond). Run as matmul / softmax / matmul, each save enters its backward linearly."""
    exact, counter_exact = _attention_grads()
    got, counter = _attention_grads(CompressionConfig.from_level(level, min_numel=64))
    limit = 0.3 if level == 'L2' else 1.5  # unbiased rounding of q, k, v at 4 / 2 bits
    for a, b in zip(got, exact):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < limit
    assert counter_exact.total / counter.total > (4 if level == 'L2' else 6)


def test_fused_attention_stays_fused_and_exact_at_l0() -> None:
    exact, _ = _attention_grads()
    got, _ = _attention_grads(CompressionConfig.from_level('L0'))
    assert all(torch.equal(a, b) for a, b in zip(got, exact))


@pytest.mark.parametrize('variant', ['plain', 'bool-mask', 'float-mask', 'causal', 'gqa-scale'])
def test_decomposed_attention_is_torch_attention(variant: str) -> None:
    from actnn_mm.functional_attention import decomposed_attention, parse_attention_call
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    kwargs = {}
    if variant == 'bool-mask':
        kwargs['attn_mask'] = torch.rand(9, 7) > 0.3
        kwargs['attn_mask'][:, 0] = True  # no row fully masked
    elif variant == 'float-mask':
        kwargs['attn_mask'] = torch.randn(2, 1, 9, 7)
    elif variant == 'causal':
        k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
        kwargs['is_causal'] = True
    elif variant == 'gqa-scale':
        k, v = k[:, :2].clone(), v[:, :2].clone()
        kwargs.update(enable_gqa=True, scale=0.3)
    want = F.scaled_dot_product_attention(q, k, v, **kwargs)
    call = parse_attention_call((q, k, v), kwargs)
    got = decomposed_attention(call, contextlib.nullcontext)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_saved_bytes_say_why_a_tensor_stayed_exact() -> None:
    """The counters file every byte kept exact under the reason the pack hook kept it: what the
    zoo check prints for a model whose saving is small."""
    torch.manual_seed(0)
    x = torch.randn(8, 256, requires_grad=True)
    grid = torch.rand(8, 16, 16, 2) * 2 - 1  # no grad, not a product's operand: kept exact
    with SavedBytesCounter() as counter, compress_saved_tensors(L3):
        h = F.grid_sample(x.reshape(8, 1, 16, 16), grid, align_corners=False).reshape(8, 256)
        y = h / (h.abs() + 1)  # div keeps both operands exact
        z = y.sum() * 1
    z.backward()
    why = counter.report.exact_by_reason
    assert why.get('no grad (data)', 0) >= grid.numel() * 4
    assert why.get('exact op: __truediv__', 0) + why.get('exact op: div', 0) >= h.numel() * 4
    assert sum(why.values()) == counter.by_kind['exact']
    with SavedBytesCounter() as outside:
        (x * x).sum()
    assert outside.report.exact_by_reason == {saved_bytes_module.OUTSIDE: x.numel() * 4}


def test_long_keys_keep_fused_attention_exact() -> None:
    """The decomposition keeps L x S probabilities per head: for keys far longer than the head
    dim that outweighs the fused kernel's exact saves, which then run (exact gradients)."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 1024, 16, requires_grad=True)
    k = torch.randn(1, 2, 1024, 16, requires_grad=True)
    v = torch.randn(1, 2, 1024, 16, requires_grad=True)
    want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v))
    with SavedBytesCounter() as exact:
        F.scaled_dot_product_attention(q, k, v)
    with SavedBytesCounter() as counter, compress_saved_tensors(L3):
        y = F.scaled_dot_product_attention(q, k, v)
    got = torch.autograd.grad(y.sum(), (q, k, v))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert counter.total <= exact.total


def test_data_operands_of_products_are_compressed() -> None:
    """A product's operand that does not require grad only multiplies the other operand's
    gradient: MoCo's queue of negative keys (96% of MoCo v2's saved bytes exact before) and a
    focal loss's one-hot targets (exact at any bits: 0 and 1 are quantization levels)."""
    torch.manual_seed(0)
    q0 = F.normalize(torch.randn(32, 128), dim=1)
    queue = F.normalize(torch.randn(128, 4096), dim=0)
    onehot = F.one_hot(torch.randint(0, 80, (512, )), 80).float()
    logits0 = torch.randn(512, 80)

    def grads(cfg=None):
        q, logits = q0.clone().requires_grad_(), logits0.clone().requires_grad_()
        ctx = compress_saved_tensors(cfg) if cfg is not None else contextlib.nullcontext()
        with SavedBytesCounter() as counter, ctx:
            l_neg = torch.einsum('nc,ck->nk', q, queue.clone())
            p = logits.sigmoid()
            focal = ((1 - p) * onehot).sum() + (p * (1 - onehot)).sum()
            loss = torch.logsumexp(l_neg / 0.2, 1).mean() + focal
        loss.backward()
        return q.grad, logits.grad, counter

    q_exact, l_exact, exact = grads()
    q_got, l_got, counter = grads(L3)
    assert _rel(q_got, q_exact) < 0.02  # the queue at the gating bits
    assert _rel(l_got, l_exact) < 0.02  # p at >= 8 bits; the targets exactly
    assert exact.total / counter.total > 2  # the queue at 8 bits, 4x smaller
    assert counter.report.exact_by_reason.get('no grad (data)', 0) == 0


def test_bce_with_logits_targets_are_compressed() -> None:
    """``binary_cross_entropy_with_logits``'s input gradient is ``(sigmoid(x) - t) * w``:
    linear in the target, which it saves (mmseg's sigmoid losses on one-hot label maps: 71% of
    Fast-SCNN's L3 bytes were such targets, kept exact)."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 19, 48, 48)
    onehot = F.one_hot(torch.randint(0, 19, (2, 48, 48)), 19).permute(0, 3, 1, 2).float()

    def run(cfg=None):
        x = x0.clone().requires_grad_()
        ctx = compress_saved_tensors(cfg) if cfg is not None else contextlib.nullcontext()
        with SavedBytesCounter() as counter, ctx:
            loss = F.binary_cross_entropy_with_logits(x * 1, onehot)
        loss.backward()
        return x.grad, counter

    exact, _ = run()
    got, counter = run(L3)
    assert counter.report.exact_by_reason.get('no grad (data)', 0) == 0
    assert _rel(got, exact) < 0.5  # the logits at 2 bits; the targets exactly


def test_q_layers_run_outside_the_saved_tensor_mode_and_twins_inside(monkeypatch) -> None:
    """The mode steers what autograd saves; a Q path saves through its own Function, so it runs
    without the mode (no Python call per tensor method); a twin fallback runs under it."""
    calls: List[str] = []
    original = saved_tensors._ExactOpsMode.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        calls.append(getattr(func, '__name__', ''))
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(saved_tensors._ExactOpsMode, '__torch_function__', counting)
    conv = QConv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    with compress_saved_tensors(L3):
        depth = torch._C._len_torch_function_stack()
        y = conv(x)  # Q path
        assert calls == []
        assert torch._C._len_torch_function_stack() == depth
        conv.eval()
        conv(x)  # twin (eval): the mode sees its ops
        assert 'conv2d' in calls
        assert torch._C._len_torch_function_stack() == depth
        assert isinstance(torch._C._get_function_stack_at(depth - 1), saved_tensors._ExactOpsMode)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
