"""Gates on the gold probes: retrieval quality of the canary (docs/gates.md).

`delta_s_median` (median ΔS), `coverage` (median coverage per probe topic)
and `lambda_convergence` (λ states stable and convergent per question and
paraphrase).  Probes feed no other gate.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from pipeline.aggregate.stats import OTHER
from pipeline.gates.base import Gate, Row, Scope, median, values_of
from pipeline.model import LAMBDA_CONVERGENT, LAMBDA_STATES, GateStatus


def delta_s_median(s: Scope) -> list[Row]:
    """Fails when the canary probes' median ΔS is above the max; a hard stop only at the stop value."""
    t = s.t
    canary = values_of(s.h.c["delta_s"], s.canary)
    control = values_of(s.h.c["delta_s"], s.control)
    n, kn = sum(canary.values()), sum(control.values())
    if n < t.min_probe_events:
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"too few canary probes with ΔS: {n} from {s.canary!r}, {t.min_probe_events} needed",
                    threshold=t.delta_s_median_max, canary_n=n, control_n=kn)]
    med = median(canary)
    row = Row(GateStatus.PASS, f"median ΔS {med:.3f} <= {t.delta_s_median_max:g}",
              observed=med, threshold=t.delta_s_median_max, canary_n=n, control_n=kn)
    if med > t.delta_s_median_max:
        row.status = GateStatus.FAIL
        row.stops = med >= t.delta_s_median_stop
        row.reason = f"median ΔS {med:.3f} > {t.delta_s_median_max:g}" + (
            f" (>= stop {t.delta_s_median_stop:g})" if row.stops else ""
        )
    return [row]


def coverage(s: Scope) -> list[Row]:
    """Fails when the canary's median coverage is low on a probe topic with enough probes."""
    t = s.t
    topics: dict[str, Counter[float]] = defaultdict(Counter)
    control_n = 0
    for (variant, probe_topic, value), count in s.h.c["coverage"].items():
        if probe_topic == OTHER:
            continue  # topics past the label cap, pooled: no single topic to judge
        if variant == s.canary:
            topics[probe_topic][value] += count
        elif variant == s.control:
            control_n += count
    total = sum(sum(c.values()) for c in topics.values())
    medians = {
        topic: median(vals) for topic, vals in sorted(topics.items())
        if sum(vals.values()) >= t.min_probe_events
    }
    if not medians:
        most = min(topics.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]), default=None)
        best = f"most: {sum(most[1].values())} on {most[0]!r}" if most else f"none from {s.canary!r}"
        return [Row(GateStatus.INSUFFICIENT_DATA,
                    f"no probe topic has {t.min_probe_events} canary probes with coverage ({best})",
                    threshold=t.coverage_min, canary_n=total, control_n=control_n)]
    worst = min(medians.values())
    low = [f"{topic} {m:.3f}" for topic, m in medians.items() if m < t.coverage_min]
    if low:
        return [Row(GateStatus.FAIL, f"median coverage < {t.coverage_min:g} on {', '.join(low)}",
                    observed=worst, threshold=t.coverage_min, canary_n=total, control_n=control_n)]
    return [Row(GateStatus.PASS,
                f"median coverage >= {t.coverage_min:g} on {len(medians)} topics (lowest {worst:.3f})",
                observed=worst, threshold=t.coverage_min, canary_n=total, control_n=control_n)]


def lambda_convergence(s: Scope) -> list[Row]:
    """Fails on a non-convergent or flipping canary λ; a stop when a question flips on many paraphrases."""
    t = s.t
    states: dict[str, dict[tuple[str, int], set[int]]] = {s.canary: defaultdict(set),
                                                          s.control: defaultdict(set)}
    counts: Counter[str] = Counter()
    for (variant, probe_question, probe_paraphrase, _probe_seed, lambda_state), count in s.h.c["lam"].items():
        # questions past the cap are pooled under OTHER: they cannot be told apart
        if variant in states and probe_question != OTHER:
            states[variant][(probe_question, probe_paraphrase)].add(lambda_state)
            counts[variant] += count
    canary, control = states[s.canary], states[s.control]
    n, kn = counts[s.canary], counts[s.control]
    if not canary:
        return [Row(GateStatus.INSUFFICIENT_DATA, f"the canary {s.canary!r} sent no probe with a λ state",
                    threshold=t.lambda_flip_stop, control_n=kn)]
    flips = sorted(pair for pair, seen in canary.items()
                   if len(seen) > 1 or (pair in control and control[pair] != seen))
    off = sorted({LAMBDA_STATES[state] for state in set().union(*canary.values())
                  if state != LAMBDA_CONVERGENT})
    per_question = Counter(question for question, _ in flips)
    worst = max(per_question.values(), default=0)
    if not flips and not off:
        return [Row(GateStatus.PASS, "every canary probe is convergent (→) and stable",
                    observed=0, threshold=t.lambda_flip_stop, canary_n=n, control_n=kn)]
    parts = []
    if flips:
        top = ", ".join(f"{q} ({k} paraphrases)" for q, k in per_question.most_common(5))
        parts.append(f"λ flips on {len(flips)} (question, paraphrase) pairs: {top}")
    if off:
        parts.append(f"non-convergent λ states seen: {' '.join(off)}")
    return [Row(GateStatus.FAIL, "; ".join(parts), observed=worst, threshold=t.lambda_flip_stop,
                canary_n=n, control_n=kn, stops=worst >= t.lambda_flip_stop)]


DELTA_S_MEDIAN = Gate(
    "delta_s_median", stop_from="shadow", per_region=False, judge=delta_s_median,
    settings=("thresholds.delta_s_median_max", "thresholds.delta_s_median_stop",
              "thresholds.min_probe_events"),
)
COVERAGE = Gate("coverage", stop_from="5%", per_region=False, judge=coverage,
                settings=("thresholds.coverage_min", "thresholds.min_probe_events"))
LAMBDA_CONVERGENCE = Gate("lambda_convergence", stop_from="50%", per_region=False, judge=lambda_convergence,
                          settings=("thresholds.lambda_flip_stop",))
