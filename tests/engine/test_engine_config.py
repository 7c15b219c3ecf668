"""CompressionConfig: level meanings, independent knobs, validation, no process-global state."""
from __future__ import annotations

import dataclasses

import pytest

from actnn_mm.engine import LEVELS, CompressionConfig, get_default_config, set_default_config


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


def test_config_is_immutable_and_compared_by_value():
    c = CompressionConfig.from_level('L3')
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.bits = 4
    assert c == CompressionConfig.from_level('L3') and c is not CompressionConfig()
    assert hash(c) == hash(CompressionConfig()) and len({c, CompressionConfig()}) == 1
    assert c != c.replace(bits=3)


def test_explicit_fields_are_the_level_fields_given_a_value():
    assert CompressionConfig.from_level('L3').explicit_fields == frozenset()
    c = CompressionConfig.from_level('L3', bits=3, swap=True, group_size=128)
    assert c.explicit_fields == {'bits', 'swap'}  # group_size does not depend on the level
    assert c.replace(per_layer=False).explicit_fields == {'bits', 'swap', 'per_layer'}
    assert c.replace(bits=None).explicit_fields == {'swap'}  # None: back to the level default
    assert c.replace(bits=None).bits == 2
    # Equal settings are equal configs, whichever of them were explicit.
    assert CompressionConfig.from_level('L3', bits=2) == CompressionConfig.from_level('L3')


def test_replace_level_keeps_the_explicit_and_level_independent_fields():
    c = CompressionConfig.from_level('L3', bits=3, group_size=128, realloc_interval=7,
                                     stochastic=False)
    l4 = c.replace(level='L4')
    assert l4.level == 'L4' and l4.swap  # L4's default where L3's was not overridden
    assert (l4.bits, l4.group_size, l4.realloc_interval, l4.stochastic) == (3, 128, 7, False)
    assert l4.replace(level='L3') == c
    # Level defaults follow the level: L3's bits=2 was not explicit, so L2 gets its own 4.
    assert CompressionConfig.from_level('L3', min_numel=0).replace(level='L2').bits == 4
    # An explicit field the new level cannot take is an error that names it.
    with pytest.raises(ValueError, match=r'bits must be one of .* got 3'):
        c.replace(level='L2')
    with pytest.raises(ValueError, match=r"unknown CompressionConfig field\(s\) \['bitz'\]"):
        c.replace(bitz=1)


def test_to_dict_from_dict_round_trip():
    c = CompressionConfig.from_level('L4', bits=3, group_size=64, min_numel=0)
    d = c.to_dict()
    assert d['version'] == 1 and d['level'] == 'L4' and d['explicit'] == ['bits']
    assert all(isinstance(v, (str, int, float, bool, list)) for v in d.values())
    back = CompressionConfig.from_dict(d)
    assert back == c and back.explicit_fields == c.explicit_fields
    assert back.replace(level='L3') == c.replace(level='L3')
    # A hand-written dict: the fields given are the explicit ones.
    hand = CompressionConfig.from_dict(dict(level='L3', bits=3))
    assert hand == CompressionConfig.from_level('L3', bits=3) and hand.explicit_fields == {'bits'}
    with pytest.raises(ValueError, match=r"unknown CompressionConfig key\(s\) \['bitz'\]"):
        CompressionConfig.from_dict(dict(level='L3', bitz=3))
    with pytest.raises(ValueError, match='version 99 is not supported'):
        CompressionConfig.from_dict(dict(d, version=99))
    with pytest.raises(ValueError, match='explicit must name fields of'):
        CompressionConfig.from_dict(dict(d, explicit=['group_size']))


def test_from_dict_restores_settings_as_stored():
    """A dict written under other level defaults comes back as it was written."""
    d = CompressionConfig.from_level('L3').to_dict()
    d['bits'] = 3  # as if L3's default had been 3 when it was written (bits not explicit)
    c = CompressionConfig.from_dict(d)
    assert c.bits == 3 and c.explicit_fields == frozenset()
