"""tools/zoo_check.py on its ``ci`` subset: one installed config per failure class once seen
(DETR: in-place ops on a QLinear output; DeiT: LayerNorm rows of tiny variance and fused
attention; SegNeXt: NaN gradients; BiSeNetV2 and MobileNetV3: BN-heavy real-time / mobile nets;
Faster R-CNN: the classifier's log-softmax; YOLACT: a binary cross-entropy of sigmoids), held to
the zoo targets with the tool's own procedure."""
from __future__ import annotations

import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import zoo_check  # noqa: E402

pytestmark = pytest.mark.slow  # seven real models, six training steps each: minutes on 2 cores


@pytest.fixture(scope='module')
def results():
    return [zoo_check.check(e) for e in zoo_check.select(None, 'ci')]


def test_subset_covers_each_failure_class() -> None:
    names = {e.name for e in zoo_check.select(None, 'ci')}
    assert names == set(zoo_check.SUBSETS['ci']) and len(names) == 7


def test_every_model_builds_offline_and_l0_is_bit_identical(results) -> None:
    for r in results:
        assert zoo_check.ok(r), f'{r.name}: {r.reason}'
        assert r.l0_exact, r.name
        assert r.finite['L2'] and r.finite['L3'], r.name


def test_errors_within_the_minibatch_noise(results) -> None:
    for r in results:
        assert r.ratio('L3') <= zoo_check.L3_MAX, (r.name, r.ratio('L3'))
        assert r.ratio('L2') <= zoo_check.L2_MAX, (r.name, r.ratio('L2'))
    assert statistics.median(r.ratio('L3') for r in results) <= zoo_check.L3_MEDIAN_MAX


def test_l3_keeps_fewer_bytes(results) -> None:
    for r in results:
        assert r.bytes_l3 and r.bytes_ratio > 1.0, r.name
    assert not [m for m in zoo_check.target_misses(results) if 'not finite' in m]
