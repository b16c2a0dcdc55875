"""The canary's cache hit rate against the control's (docs/gates.md, `cache_hit_regression`).

User requests with a cache block, all regions pooled.  Fails only when the
canary's hit rate is below the control's - `cache_hit_drop_max` *and* the
sequential test says the canary misses more; each closed window adds to that
test both variants' requests and misses (Fisher's exact conditional test).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.gates.base import Gate, Row, Sample, Scope
from pipeline.model import GateStatus
from pipeline.sequential import log_e_rate

# Keys of the "cache" family: (variant, CACHED) -> requests with a cache block, (variant, HITS) -> hits.
CACHED, HITS = "n", "hit"


def cache_hit_regression(s: Scope) -> list[Row]:
    """The canary's hit rate against the control's less the allowed drop, weighed with evidence."""
    t = s.t
    n, kn = s.h.count("cache", (s.canary, CACHED)), s.h.count("cache", (s.control, CACHED))
    if not n or not kn:
        return [Row(GateStatus.INSUFFICIENT_DATA, s.too_few("user requests with a cache block", n, kn, 1),
                    canary_n=n, control_n=kn)]
    hits = s.h.count("cache", (s.canary, HITS))
    control_hits = s.h.count("cache", (s.control, HITS))
    rate, control_rate = hits / n, control_hits / kn
    floor = control_rate - t.cache_hit_drop_max
    p = s.p_value(None)
    status, reason = s.weigh(
        rate < floor, p, f"canary hit rate {rate:.3f}", ops=(">=", "<"),
        limit=f"control {control_rate:.3f} - {t.cache_hit_drop_max:g}",
        detail=f"hits {hits}/{n} canary, {control_hits}/{kn} control")
    return [Row(status, reason, observed=rate, threshold=floor, canary_n=n, control_n=kn, p_value=p)]


def cache_samples(window: ClosedWindow, cfg: Config) -> Iterator[Sample]:
    """All regions: log e-values of 'the canary misses the cache more' (user requests with a cache block)."""
    cache: Counter[tuple[str, str]] = window.c.get("cache", Counter())
    n, control_n = cache.get((cfg.canary, CACHED), 0), cache.get((cfg.control, CACHED), 0)
    if n and control_n:
        misses = n - cache.get((cfg.canary, HITS), 0)
        control_misses = control_n - cache.get((cfg.control, HITS), 0)
        yield None, log_e_rate(misses, n, control_misses, control_n)


CACHE_HIT_REGRESSION = Gate(
    "cache_hit_regression", stop_from=None, per_region=False, judge=cache_hit_regression,
    samples=cache_samples, settings=("thresholds.cache_hit_drop_max", "thresholds.alpha"),
)
