"""Largest-batch search (doubling, then bisection) against fake "fits" predicates."""
from __future__ import annotations

from typing import Callable, List

import pytest

from actnn_tools.benchmark.search import ERROR, FITS, OOM, TIMEOUT, Trial, search_max_batch


def _probe(fits: Callable[[int], bool], calls: List[int]) -> Callable[[int, float], Trial]:
    def probe(batch: int, seconds_left: float) -> Trial:
        assert seconds_left > 0
        calls.append(batch)
        return Trial(batch, FITS if fits(batch) else OOM)
    return probe


@pytest.mark.parametrize('limit', [1, 2, 3, 37, 64, 100, 127, 128, 129, 1000])
@pytest.mark.parametrize('start', [1, 8, 128])
def test_finds_the_exact_largest_batch(limit: int, start: int) -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: b <= limit, calls), start=start, cap=4096,
                           time_limit=1e9)
    assert res.largest == limit
    assert res.first_oom == limit + 1
    assert res.exact and res.stopped == 'bracketed'
    assert [t.batch for t in res.trials] == calls
    assert len(set(calls)) == len(calls), 'a batch was probed twice'


def test_doubles_then_bisects() -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: b <= 37, calls), start=4, cap=4096, time_limit=1e9)
    assert calls[:5] == [4, 8, 16, 32, 64]
    assert calls[5:] == [48, 40, 36, 38, 37]
    assert res.largest == 37


def test_halves_when_the_start_does_not_fit() -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: b <= 5, calls), start=64, cap=4096, time_limit=1e9)
    assert calls[:5] == [64, 32, 16, 8, 4]
    assert res.largest == 5 and res.first_oom == 6 and res.exact


def test_nothing_fits() -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: False, calls), start=8, cap=64, time_limit=1e9)
    assert calls == [8, 4, 2, 1]
    assert res.largest is None and res.first_oom == 1 and res.exact


def test_cap_stops_with_a_lower_bound() -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: True, calls), start=16, cap=100, time_limit=1e9)
    assert calls == [16, 32, 64, 100]
    assert res.largest == 100 and res.first_oom is None
    assert not res.exact and res.stopped == 'cap'


def test_tolerance_stops_bisection_early() -> None:
    calls: List[int] = []
    res = search_max_batch(_probe(lambda b: b <= 700, calls), start=128, cap=4096,
                           time_limit=1e9, tolerance=0.1)
    assert res.exact
    assert res.largest <= 700 < res.first_oom <= res.largest * 1.1
    exact_calls: List[int] = []
    search_max_batch(_probe(lambda b: b <= 700, exact_calls), start=128, cap=4096,
                     time_limit=1e9)
    assert len(calls) < len(exact_calls)


def test_time_limit_stops_with_what_was_found() -> None:
    now = [0.0]
    calls: List[int] = []

    def probe(batch: int, seconds_left: float) -> Trial:
        calls.append(batch)
        now[0] += 10.0  # each trial takes 10 s
        return Trial(batch, FITS if batch <= 1000 else OOM)

    res = search_max_batch(probe, start=1, cap=1 << 20, time_limit=35, clock=lambda: now[0])
    assert calls == [1, 2, 4, 8]  # the 5th would start at t=40 > 35
    assert res.largest == 8 and not res.exact and res.stopped == 'time'


def test_seconds_left_is_passed_to_the_probe() -> None:
    now = [0.0]
    seen: List[float] = []

    def probe(batch: int, seconds_left: float) -> Trial:
        seen.append(seconds_left)
        now[0] += 7.0
        return Trial(batch, FITS)

    search_max_batch(probe, start=1, cap=8, time_limit=20, clock=lambda: now[0])
    assert seen == [20.0, 13.0, 6.0]


@pytest.mark.parametrize('outcome', [ERROR, TIMEOUT])
def test_error_or_timeout_is_not_taken_for_out_of_memory(outcome: str) -> None:
    calls: List[int] = []

    def probe(batch: int, seconds_left: float) -> Trial:
        calls.append(batch)
        return Trial(batch, FITS if batch < 32 else outcome, detail='boom')

    res = search_max_batch(probe, start=4, cap=4096, time_limit=1e9)
    assert calls == [4, 8, 16, 32]
    assert res.largest == 16 and res.first_oom is None
    assert not res.exact and res.stopped == outcome


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='start and cap'):
        search_max_batch(lambda b, s: Trial(b, FITS), start=0, cap=8, time_limit=1)
    with pytest.raises(ValueError, match='tolerance'):
        search_max_batch(lambda b, s: Trial(b, FITS), start=1, cap=8, time_limit=1,
                         tolerance=-1)


def test_result_serialises() -> None:
    res = search_max_batch(_probe(lambda b: b <= 3, []), start=2, cap=16, time_limit=1e9)
    d = res.to_dict()
    assert d['largest'] == 3 and d['trials'][0] == dict(batch=2, outcome=FITS, seconds=0.0,
                                                         images_per_s=None, peak_mb=None,
                                                         detail='')
