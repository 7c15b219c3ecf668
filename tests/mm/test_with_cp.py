"""Activation checkpointing (``with_cp=True`` of mm backbones) together with ActNN.

Checkpointed blocks keep only their input and recompute the rest in backward, where the
Q-layers run again: at L0 that is exact (gradients equal the plain with_cp model's), at L3 the
recomputed activations are compressed and decompressed within the block's backward (finite
gradients) and the kept block inputs go through the saved-tensor compression.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict

import pytest
import torch
from torch import nn

from actnn_mm import convert
from actnn_mm.engine import CompressionConfig
from actnn_mm.saved_bytes import SavedBytesCounter


def _resnet(with_cp: bool) -> nn.Module:
    from mmdet.models.backbones import ResNet
    return ResNet(depth=18, with_cp=with_cp, frozen_stages=-1, norm_eval=False,
                  out_indices=(0, 1, 2, 3))


def _swin(with_cp: bool) -> nn.Module:
    from mmdet.models.backbones import SwinTransformer
    return SwinTransformer(pretrain_img_size=64, embed_dims=32, depths=(2, 2), num_heads=(2, 4),
                           strides=(4, 2), out_indices=(0, 1), window_size=4, with_cp=with_cp)


BACKBONES: Dict[str, Callable[[bool], nn.Module]] = {'resnet18': _resnet, 'swin': _swin}


def _step(model: nn.Module, x: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    model.train()
    with SavedBytesCounter(model) as counter:
        outs = model(x)
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return counter.total, grads


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_with_cp_and_actnn(name: str) -> None:
    torch.manual_seed(0)
    plain = BACKBONES[name](False)
    cp = BACKBONES[name](True)
    cp.load_state_dict(plain.state_dict())
    l0, l3 = copy.deepcopy(cp), copy.deepcopy(cp)
    convert(l0, CompressionConfig.from_level('L0'))
    convert(l3, CompressionConfig.from_level('L3'))
    x = torch.randn(2, 3, 64, 64)
    plain_bytes, plain_grads = _step(plain, x)
    cp_bytes, cp_grads = _step(cp, x)
    _, l0_grads = _step(l0, x)
    l3_bytes, l3_grads = _step(l3, x)
    assert cp_grads.keys() == plain_grads.keys() == l0_grads.keys() == l3_grads.keys()
    for n, g in cp_grads.items():
        torch.testing.assert_close(l0_grads[n], g, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=n: f'L0 with_cp vs with_cp, {n}: {m}')
        assert torch.isfinite(l3_grads[n]).all(), n
    assert cp_bytes < plain_bytes, (cp_bytes, plain_bytes)  # checkpointing kept less
    assert l3_bytes < cp_bytes, (l3_bytes, cp_bytes)  # and ActNN compresses what it keeps
