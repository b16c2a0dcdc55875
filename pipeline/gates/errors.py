"""The canary's server errors against the control's (docs/gates.md).

`new_5xx_class`: a 5xx class (status, failure phase) the control never showed,
too often for chance (p^c < `new_5xx_alpha`, p the canary's request share),
all regions pooled; a literal per-look rule.  `error_rate`, per region: the
canary's error rate past `error_ratio_max` x the control's +
`error_rate_tolerance`, *and* the sequential test says the canary errs more.
Each closed window adds to that test the region's user requests and errors
(status >= 500) of both variants: Fisher's exact conditional test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipeline.aggregate.stats import ClosedWindow
from pipeline.config import Config
from pipeline.gates.base import Gate, Row, Sample, Scope
from pipeline.model import GateStatus
from pipeline.sequential import log_e_rate


def new_5xx_class(s: Scope) -> list[Row]:
    """Fails on a 5xx class seen on the canary only, more often than its request share explains."""
    t = s.t
    users = s.users()
    n, kn = users[s.canary], users[s.control]
    if kn < t.min_warm_requests:
        missing = s.census("control") if not s.h.count("events", s.control) else ""
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"too few requests on the control: {kn} from {s.control!r},"
                    f" {t.min_warm_requests} needed{missing}", canary_n=n, control_n=kn)]
    p = n / (n + kn)
    classes = s.h.c["classes"]
    control_classes = {(status, failure_phase) for (variant, status, failure_phase) in classes
                       if variant == s.control}
    new, stray = [], []
    for (variant, status, failure_phase), c in sorted(classes.items(), key=lambda kv: str(kv[0])):
        if variant != s.canary or (status, failure_phase) in control_classes:
            continue
        chance = p**c
        text = f"{status}/{failure_phase} x{c} (p^c={chance:.2g})"
        if c >= t.new_5xx_min_count and chance < t.new_5xx_alpha:
            new.append(text)
        else:
            stray.append(text)
    if new:
        return [Row(GateStatus.FAIL, f"new 5xx class on canary, never on control: {', '.join(new)}"
                                     f" < alpha {t.new_5xx_alpha:g}", canary_n=n, control_n=kn)]
    reason = "no new 5xx class"
    if stray:
        reason += f"; canary-only within chance: {', '.join(stray)}"
    return [Row(GateStatus.PASS, reason, canary_n=n, control_n=kn)]


def error_rate(s: Scope) -> list[Row]:
    """Per canary region: the canary's error rate against the allowed rate, weighed with evidence."""
    t = s.t
    regions = s.user_regions()
    if not regions:
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"the canary {s.canary!r} had no user requests in the horizon")]
    rows = []
    for region in regions:
        n = s.h.count("user", (s.canary, region))
        kn = s.h.count("user", (s.control, region))
        if n < t.min_warm_requests or kn < t.min_warm_requests:
            rows.append(Row(GateStatus.INSUFFICIENT_DATA, s.too_few("requests", n, kn, t.min_warm_requests),
                            region=region, canary_n=n, control_n=kn))
            continue
        errors = s.h.count("errors", (s.canary, region))
        control_errors = s.h.count("errors", (s.control, region))
        rate, control_rate = errors / n, control_errors / kn
        allowed = t.error_ratio_max * control_rate + t.error_rate_tolerance
        p = s.p_value(region)
        status, reason = s.weigh(
            rate > allowed, p, f"canary error rate {rate:.4f}", ops=("<=", ">"),
            limit=f"allowed {allowed:.4f} = {t.error_ratio_max:g} x control {control_rate:.4f}"
                  f" + {t.error_rate_tolerance:g}",
            detail=f"errors {errors}/{n} canary, {control_errors}/{kn} control")
        rows.append(Row(status, reason, region=region, observed=rate, threshold=allowed,
                        canary_n=n, control_n=kn, p_value=p))
    return rows


def error_samples(window: ClosedWindow, cfg: Config) -> Iterator[Sample]:
    """Per region with user requests of both variants: log e-values of 'the canary errs more'."""
    users: Counter[tuple[str, str]] = window.c.get("user", Counter())  # (variant, region)
    errors: Counter[tuple[str, str]] = window.c.get("errors", Counter())  # (variant, region)
    for (variant, region), n in users.items():
        control_n = users.get((cfg.control, region), 0)
        if variant == cfg.canary and control_n:
            yield region, log_e_rate(errors.get((variant, region), 0), n,
                                     errors.get((cfg.control, region), 0), control_n)


NEW_5XX_CLASS = Gate(
    "new_5xx_class", stop_from="1%", per_region=False, judge=new_5xx_class,
    settings=("thresholds.new_5xx_min_count", "thresholds.new_5xx_alpha", "thresholds.min_warm_requests"),
)
ERROR_RATE = Gate(
    "error_rate", stop_from=None, per_region=True, judge=error_rate, samples=error_samples,
    settings=("thresholds.error_ratio_max", "thresholds.error_rate_tolerance",
              "thresholds.min_warm_requests", "thresholds.alpha"),
)
