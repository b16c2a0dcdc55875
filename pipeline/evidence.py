"""What the sequential tests of the ratio and rate gates see in each window, and their state.

Three gates fail only on evidence (docs/gates.md): the point estimate over the
horizon must cross the threshold *and* an anytime-valid test accumulated since
the stage began must reject at `thresholds.alpha` (see sequential.py).  Each
closed window adds one e-value per test, as the gate declares it (`Gate.samples`,
pipeline/gates/):

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

import numpy as np

from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.gates import REGISTRY, Sampler
from pipeline.gates.cache import cache_samples
from pipeline.gates.errors import error_samples
from pipeline.gates.latency import latency_samples
from pipeline.sequential import SequentialTest

TestKey = tuple[str, str | None]  # gate, region (None: all regions)

# Gate -> what its test sees in one window, as each gate declares it (pipeline/gates/).
TESTS: dict[str, Sampler] = {gate.name: gate.samples for gate in REGISTRY if gate.samples is not None}


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
