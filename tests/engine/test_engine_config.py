"""CompressionConfig: level meanings, independent knobs, validation, no process-global state."""
from __future__ import annotations

import pytest

from actnn_mm.engine import CompressionConfig, LEVELS, get_default_config, set_default_config


def test_levels_have_the_paper_meanings():
    l0, l1, l2, l3, l4, l5 = (CompressionConfig.from_level(lv) for lv in LEVELS)
    assert not l0.enabled
    assert l1.enabled and l1.bits == 4 and not l1.mixed and not l1.compress_norm
    assert l2.bits == 4 and not l2.mixed and l2.compress_norm
    assert l3.bits == 2 and l3.per_sample and l3.per_layer and not l3.swap
    assert l4.swap and l4.per_sample and l4.bits == 2 and not l4.defrag
    assert l5.swap and l5.defrag
    assert CompressionConfig() == l3


def test_every_knob_overrides_on_its_own():
    c = CompressionConfig.from_level('L3', bits=3.5, group_size=128, per_layer=False, swap=True,
                                     min_numel=0, realloc_interval=7, stochastic=False)
    assert (c.bits, c.group_size, c.per_sample, c.per_layer, c.swap, c.min_numel,
            c.realloc_interval, c.stochastic) == (3.5, 128, True, False, True, 0, 7, False)
    assert CompressionConfig(level='L2', bits=8).bits == 8
    assert CompressionConfig(level='L2').replace(level='L4').swap


def test_two_configs_coexist():
    a = CompressionConfig.from_level('L1')
    b = CompressionConfig.from_level('L4')
    assert a.bits == 4 and b.bits == 2 and not a.swap and b.swap


@pytest.mark.parametrize('kwargs, match', [
    (dict(level='L9'), "level must be one of"),
    (dict(level='L2', bits=3), r"bits must be one of \(1, 2, 4, 8, 16, 32\)"),
    (dict(level='L3', bits=9), r"bits .* must be in \[1, 8\]"),
    (dict(level='L3', bits=0.5), r"must be in \[1, 8\]"),
    (dict(group_size=100), "group_size must be a multiple of 8"),
    (dict(per_sample='yes'), "per_sample must be a bool"),
    (dict(min_numel=-1), "min_numel must be an int >= 0"),
    (dict(realloc_interval=0), "realloc_interval must be an int >= 1"),
])
def test_validation_names_field_and_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionConfig(**kwargs)


def test_unknown_override_rejected():
    with pytest.raises(ValueError, match=r"unknown CompressionConfig field\(s\) \['bitz'\]"):
        CompressionConfig.from_level('L3', bitz=2)


def test_default_config_convenience():
    old = get_default_config()
    try:
        assert set_default_config('L2').bits == 4
        assert get_default_config().level == 'L2'
        with pytest.raises(ValueError, match='config must be a CompressionConfig'):
            set_default_config(3)
    finally:
        set_default_config(old)
