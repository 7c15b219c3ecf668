"""ActNNHook and checkpoints: the whole config travels (not just the level), the solved bits come
back only under the same config, and checkpoints that hold only the level still load; the hook
steps its allocator through the same backward mechanism as ``convert``."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from actnn_mm import ActNNHook, CompressionConfig
from actnn_mm.mm import hook as hook_module


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torchvision.models.resnet18(num_classes=4)


def _trained_hook(**options) -> ActNNHook:
    hook = ActNNHook(parts=['backbone'], **options)
    net = _Net()
    hook.convert(net)
    for _ in range(2):
        net.backbone(torch.randn(2, 3, 64, 64)).sum().backward()
    return hook


def test_the_hook_steps_its_allocator_from_the_backward() -> None:
    hook = _trained_hook(level='L3')
    assert hook.allocator.steps == 2 and hook.allocator.solves == 1


def test_the_whole_config_travels_in_the_checkpoint() -> None:
    hook = _trained_hook(level='L3', bits=3, group_size=128, realloc_interval=7)
    ckpt = {'meta': {'iter': 2}}
    hook.before_save_checkpoint(None, ckpt)
    state = ckpt['meta']['actnn']
    assert CompressionConfig.from_dict(state['config']) == hook.config
    fresh = ActNNHook(parts=['backbone'], level='L3', bits=3, group_size=128, realloc_interval=7)
    fresh.after_load_checkpoint(None, ckpt)
    assert fresh.checkpoint_config == hook.config
    assert fresh.checkpoint_config.explicit_fields == {'bits'}
    assert fresh.allocator.steps == 2  # same config: the allocator's state is restored


def test_another_config_is_named_and_its_bits_not_loaded(monkeypatch) -> None:
    hook = _trained_hook(level='L3', bits=3)
    ckpt = {'meta': {'iter': 2}}
    hook.before_save_checkpoint(None, ckpt)
    logged = []
    # the message itself, whatever handlers mmengine's logger has in this process
    monkeypatch.setattr(hook_module, 'print_log', lambda msg, **kw: logged.append(msg))
    other = ActNNHook(parts=['backbone'], level='L3')
    other.after_load_checkpoint(None, ckpt)
    assert other.checkpoint_config.bits == 3 and other.allocator.steps == 0
    assert any('bits=3 (now 2)' in msg for msg in logged), logged


def test_a_checkpoint_holding_only_the_level_still_loads() -> None:
    hook = _trained_hook(level='L3')
    ckpt = {'meta': {'iter': 2}}
    hook.before_save_checkpoint(None, ckpt)
    del ckpt['meta']['actnn']['config']  # as checkpoints were written before the config travelled
    fresh = ActNNHook(parts=['backbone'], level='L3')
    fresh.after_load_checkpoint(None, ckpt)
    assert fresh.checkpoint_config == CompressionConfig.from_level('L3')
    assert fresh.allocator.steps == 2
