"""The canary's messages break the event schema (docs/gates.md, `schema_violations`)."""

from __future__ import annotations

from collections import Counter

from pipeline.gates.base import Gate, Row, Scope
from pipeline.model import MALFORMED_REASONS, GateStatus


def schema_violations(s: Scope) -> list[Row]:
    """Fails on any canary message dead-lettered as malformed; insufficient when the canary sent nothing."""
    bad: Counter[str] = Counter()
    dead_total = 0
    for (variant, reason), n in s.h.c["dead"].items():
        if variant == s.canary:
            dead_total += n
            if reason in MALFORMED_REASONS:
                bad[reason] += n
    pings = sum(n for (variant, _region), n in s.h.c["x_warm"].items() if variant == s.canary)
    sent = s.h.count("events", s.canary) - pings + dead_total
    control_n = s.h.count("events", s.control)
    nbad = sum(bad.values())
    if sent == 0:
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"the canary {s.canary!r} sent nothing in the horizon{s.census('canary')}",
                    observed=0, threshold=0, control_n=control_n)]
    if nbad:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(bad.items()))
        return [Row(GateStatus.FAIL, f"{nbad} canary messages dead-lettered ({parts})",
                    observed=nbad, threshold=0, canary_n=sent, control_n=control_n)]
    return [Row(GateStatus.PASS, "no canary message broke the schema",
                observed=0, threshold=0, canary_n=sent, control_n=control_n)]


SCHEMA_VIOLATIONS = Gate("schema_violations", stop_from="shadow", settings=(), per_region=False,
                         judge=schema_violations)
