"""The canary's warm latency against the control's, per region (docs/gates.md, `p95_warm_latency`).

Fails only when the configured quantile's ratio is past `latency_ratio_max`
*and* the sequential test (pipeline/sequential.py) says the canary is slower.
Each closed window adds to that test the warm requests' `latency_field`
sketch bins of both variants in the region (the bins the engine keeps anyway;
1 % wide, so ranks are exact up to ties within a bin), scored two ways whose
e-values are mixed: ranks (the whole distribution is slower) and the upper
tail above the pooled `latency_quantile` (the tail alone is slower).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.gates.base import Gate, Row, Sample, Scope
from pipeline.model import GateStatus
from pipeline.sequential import log_e_values, rank_scores, upper_tail_scores


def p95_warm_latency(s: Scope) -> list[Row]:
    """Per canary region: the canary's warm latency quantile over the control's, weighed with evidence."""
    t = s.t
    label = f"p{t.latency_quantile * 100:g} {t.latency_field}"
    regions = s.user_regions()
    if not regions:
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"the canary {s.canary!r} had no user requests in the horizon",
                    threshold=t.latency_ratio_max)]
    rows = []
    for region in regions:
        cs = s.h.sketch(s.canary, region, False, t.latency_field)
        ks = s.h.sketch(s.control, region, False, t.latency_field)
        n, kn = cs.count, ks.count
        if n < t.min_warm_requests or kn < t.min_warm_requests:
            rows.append(Row(GateStatus.INSUFFICIENT_DATA,
                            s.too_few("warm requests", n, kn, t.min_warm_requests),
                            region=region, threshold=t.latency_ratio_max, canary_n=n, control_n=kn))
            continue
        cq = cs.quantile(t.latency_quantile) or 0.0
        kq = ks.quantile(t.latency_quantile) or 0.0
        ratio = cq / kq if kq > 0 else (1.0 if cq == 0 else None)
        shown = f"{ratio:.2f}" if ratio is not None else "inf"
        p = s.p_value(region)
        status, reason = s.weigh(
            cq > t.latency_ratio_max * kq, p, f"canary/control {label} {shown}", ops=("<=", ">"),
            limit=f"{t.latency_ratio_max:g}",
            detail=f"canary {cq:.0f} ms, control {kq:.0f} ms; warm n {n}/{kn}")
        rows.append(Row(status, reason, region=region, observed=ratio, threshold=t.latency_ratio_max,
                        canary_n=n, control_n=kn, p_value=p))
    return rows


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
        control_bins, control_counts = control
        bins, at = np.unique(np.concatenate((canary_bins, control_bins)), return_inverse=True)
        counts = np.concatenate((canary_counts, control_counts)).astype(np.float64)
        # bincount with weights counts in float64 already; asarray only tells the type checker
        pooled = np.asarray(np.bincount(at, weights=counts, minlength=len(bins)), dtype=np.float64)
        canary = np.asarray(np.bincount(at[:len(canary_bins)], weights=counts[:len(canary_bins)],
                                        minlength=len(bins)), dtype=np.float64)
        tail = upper_tail_scores(pooled, t.latency_quantile)
        yield region, np.concatenate((log_e_values(canary, pooled, rank_scores(pooled)),
                                      log_e_values(canary, pooled, tail)))


P95_WARM_LATENCY = Gate(
    "p95_warm_latency", stop_from="1%", per_region=True, judge=p95_warm_latency, samples=latency_samples,
    settings=("thresholds.latency_field", "thresholds.latency_quantile", "thresholds.latency_ratio_max",
              "thresholds.min_warm_requests", "thresholds.alpha"),
)
