"""What the sequential tests of the ratio and rate gates see in each window, and their state.

Three gates fail only on evidence (docs/gates.md): the point estimate over the
horizon must cross the threshold *and* an anytime-valid test accumulated since
the stage began must reject at `thresholds.alpha` (see sequential.py).  Each
closed window adds one e-value per test:

* `p95_warm_latency`, per region: the warm user requests' `latency_field`
  sketch bins of both variants (the bins the engine keeps anyway; 1 % wide,
  so ranks are exact up to ties within a bin), scored two ways whose
  e-values are mixed: ranks (the whole distribution is slower) and the upper
  tail above the pooled `latency_quantile` (the tail alone is slower);
* `error_rate`, per region: user requests and their errors (status >= 500),
  Fisher's exact conditional test (the errors split by request share);
* `cache_hit_regression`, all regions pooled: user requests with a cache
  block and their misses, the same test.

A test starts at the first window in which both variants have data for it;
from then on every window is a look (a window without data adds no evidence).

A stop is a decision about the whole rollout, so a per-region gate's p-value
is adjusted for the number of regions it tests (Bonferroni: the region's own
p-value times the number of regions whose test has started in the stage).
When the regions start together, as when the canary serves all of them from
the stage's start, the chance that any region of a healthy rollout fails is
then at most alpha; a region whose test starts later raises the count from
then on (the bound becomes alpha times 1 + 1/2 + ... over the late starters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.sequential import (
    Floats,
    SequentialTest,
    log_e_rate,
    log_e_values,
    rank_scores,
    upper_tail_scores,
)

TestKey = tuple[str, str | None]  # gate, region (None: all regions)
Sample = tuple[str | None, Floats]  # region, log e-values of one window


def latency_samples(window: ClosedWindow, cfg: Config) -> Iterator[Sample]:
    """Per region with warm requests of both variants: log e-values of 'the canary is slower'."""
    t = cfg.thresholds
    sketches = window.latency_bins(t.latency_field)
    for (variant, region, cold), (canary_bins, canary_counts) in sketches.items():
        if variant != cfg.canary or cold:
            continue
        control = sketches.get((cfg.control, region, False))
        if control is None:
            continue
        bins, at = np.unique(np.concatenate((canary_bins, control[0])), return_inverse=True)
        counts = np.concatenate((canary_counts, control[1])).astype(np.float64)
        # bincount with weights counts in float64 already; asarray only tells the type checker
        pooled = np.asarray(np.bincount(at, weights=counts, minlength=len(bins)), dtype=np.float64)
        canary = np.asarray(np.bincount(at[:len(canary_bins)], weights=counts[:len(canary_bins)],
                                        minlength=len(bins)), dtype=np.float64)
        tail = upper_tail_scores(pooled, t.latency_quantile)
        yield region, np.concatenate((log_e_values(canary, pooled, rank_scores(pooled)),
                                      log_e_values(canary, pooled, tail)))


def error_samples(window: ClosedWindow, cfg: Config) -> Iterator[Sample]:
    """Per region with user requests of both variants: log e-values of 'the canary errs more'."""
    users: Counter[tuple[str, str]] = window.c.get("user", Counter())
    errors: Counter[tuple[str, str]] = window.c.get("errors", Counter())
    for (variant, region), n in users.items():
        control_n = users.get((cfg.control, region), 0)
        if variant == cfg.canary and control_n:
            yield region, log_e_rate(errors.get((variant, region), 0), n,
                                     errors.get((cfg.control, region), 0), control_n)


def cache_samples(window: ClosedWindow, cfg: Config) -> Iterator[Sample]:
    """All regions: log e-values of 'the canary misses the cache more' (user requests with a cache block)."""
    cache: Counter[tuple[str, str]] = window.c.get("cache", Counter())
    n, control_n = cache.get((cfg.canary, "n"), 0), cache.get((cfg.control, "n"), 0)
    if n and control_n:
        misses = n - cache.get((cfg.canary, "hit"), 0)
        control_misses = control_n - cache.get((cfg.control, "hit"), 0)
        yield None, log_e_rate(misses, n, control_misses, control_n)


# Gate -> what its test sees in one window.
TESTS: dict[str, Callable[[ClosedWindow, Config], Iterator[Sample]]] = {
    "p95_warm_latency": latency_samples,
    "error_rate": error_samples,
    "cache_hit_regression": cache_samples,
}


class Evidence:
    """The sequential tests of one stage, per (gate, region), fed one closed window at a time."""

    def __init__(self) -> None:
        self.tests: dict[TestKey, SequentialTest] = {}
        self.regions: Counter[str] = Counter()  # per gate: regional tests started in the stage

    def add(self, window: ClosedWindow, cfg: Config) -> None:
        """Look once more: every test takes this window's e-values (none: no evidence)."""
        fed: set[TestKey] = set()
        for gate, samples in TESTS.items():
            for region, log_e in samples(window, cfg):
                key = (gate, region)
                test = self.tests.get(key)
                if test is None:
                    test = self.tests[key] = SequentialTest(len(log_e))
                    if region is not None:
                        self.regions[gate] += 1
                test.update(log_e)
                fed.add(key)
        for key, test in self.tests.items():
            if key not in fed:
                test.update(np.zeros(len(test.log_a)))

    def p_value(self, gate: str, region: str | None) -> float:
        """The test's anytime-valid p-value, adjusted for the gate's regions (1 when it has not started)."""
        test = self.tests.get((gate, region))
        if test is None:
            return 1.0
        return min(1.0, test.p_value * self.regions[gate]) if region is not None else test.p_value

    def looks(self, gate: str, region: str | None) -> int:
        """Windows the test has looked at since it started."""
        test = self.tests.get((gate, region))
        return 0 if test is None else test.looks


__all__ = ["TESTS", "Evidence", "cache_samples", "error_samples", "latency_samples"]
