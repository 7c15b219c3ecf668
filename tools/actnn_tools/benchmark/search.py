"""Largest batch that fits: doubling, then bisection, within a time bound.

Kept free of torch so the logic is tested with a fake probe. The probe runs one batch size (in
practice in a subprocess, so an out-of-memory error cannot poison the caller's allocator) and
says whether it fitted. Only an out-of-memory outcome counts as "does not fit"; any other error
or a timeout stops the search, since a crash says nothing about memory.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

__all__ = ['Trial', 'SearchResult', 'search_max_batch', 'FITS', 'OOM', 'ERROR', 'TIMEOUT']

FITS, OOM, ERROR, TIMEOUT = 'fits', 'oom', 'error', 'timeout'


@dataclass
class Trial:
    """One probed batch size and what happened."""

    batch: int
    outcome: str  # FITS, OOM, ERROR or TIMEOUT
    seconds: float = 0.0
    images_per_s: Optional[float] = None
    peak_mb: Optional[float] = None
    detail: str = ''

    @property
    def fits(self) -> bool:
        return self.outcome == FITS


@dataclass
class SearchResult:
    """``largest``: largest batch seen to fit (None if none did); ``first_oom``: smallest batch
    seen out of memory (None if none). ``exact`` is True only when the two are adjacent (or
    within the tolerance); otherwise ``stopped`` says why (``cap``, ``time``, ``error``,
    ``timeout``) and ``largest`` is a lower bound."""

    largest: Optional[int]
    first_oom: Optional[int]
    exact: bool
    stopped: str
    trials: List[Trial] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d['trials'] = [asdict(t) for t in self.trials]
        return d


Probe = Callable[[int, float], Trial]


def search_max_batch(probe: Probe, start: int, cap: int, time_limit: float,
                     tolerance: float = 0.0,
                     clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Find the largest batch in ``[1, cap]`` for which ``probe`` reports FITS.

    Args:
        probe: ``probe(batch, seconds_left) -> Trial``; ``seconds_left`` bounds that one trial.
        start: first batch tried; doubled while it fits (clipped to ``cap``), halved while it
            does not, then the bracket is bisected.
        cap: largest batch ever tried; reaching it while still fitting stops with ``cap``.
        time_limit: no new trial starts after this many seconds (``stopped='time'``).
        tolerance: bisection stops once ``first_oom / largest <= 1 + tolerance`` (0: to 1).
        clock: seconds, monotonic (injectable for tests).
    """
    if start < 1 or cap < 1:
        raise ValueError(f'start and cap must be >= 1, got start={start}, cap={cap}')
    if tolerance < 0:
        raise ValueError(f'tolerance must be >= 0, got {tolerance}')
    t0 = clock()
    trials: List[Trial] = []
    lo: Optional[int] = None   # largest that fitted
    hi: Optional[int] = None   # smallest out of memory

    def result(stopped: str) -> SearchResult:
        exact = lo is not None and hi is not None and (hi - lo <= 1 or hi <= lo * (1 + tolerance))
        exact = exact or (lo is None and hi == 1)
        return SearchResult(lo, hi, exact, 'bracketed' if exact else stopped, trials)

    def run(batch: int) -> Optional[str]:
        """Probe ``batch``; returns a stop reason, or None to go on."""
        nonlocal lo, hi
        left = time_limit - (clock() - t0)
        if left <= 0:
            return 'time'
        trial = probe(batch, left)
        trials.append(trial)
        if trial.outcome == FITS:
            lo = batch if lo is None else max(lo, batch)
        elif trial.outcome == OOM:
            hi = batch if hi is None else min(hi, batch)
        else:
            return trial.outcome  # ERROR / TIMEOUT: says nothing about memory
        return None

    batch = min(start, cap)
    # Phase 1: bracket. Up by doubling while it fits, down by halving while it does not.
    while True:
        stop = run(batch)
        if stop:
            return result(stop)
        if lo is not None and hi is not None:
            break
        if hi is None:  # still fitting
            if batch >= cap:
                return result('cap')
            batch = min(batch * 2, cap)
        else:  # out of memory, nothing fitted yet
            if batch == 1:
                return result('bracketed')
            batch = max(1, batch // 2)
    # Phase 2: bisection between the largest fit and the smallest out-of-memory batch.
    while not (hi - lo <= 1 or hi <= lo * (1 + tolerance)):
        stop = run((lo + hi) // 2)
        if stop:
            return result(stop)
    return result('bracketed')
