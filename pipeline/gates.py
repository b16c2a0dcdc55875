"""The gates, the stage ladder and the decision of docs/gates.md.

Each gate is a function of the horizon statistics and the config that returns
its rows.  A row's `hard_stop` is set centrally: it fails, its own stop
condition holds, and the stage is at or past the gate's "stop from" stage.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.aggregate.stats import OTHER, WindowStats
from pipeline.config import Config
from pipeline.evidence import Evidence
from pipeline.model import (
    LAMBDA_CONVERGENT,
    LAMBDA_STATES,
    MALFORMED_REASONS,
    Decision,
    GateRow,
    GateStatus,
    deciding_rows,
    stage_rank,
)

# Gate -> first stage at which its failure is a hard stop (None: never stops).
STOP_FROM: dict[str, str | None] = {
    "schema_violations": "shadow",
    "delta_s_median": "shadow",
    "index_skew": "shadow",
    "p95_warm_latency": "1%",
    "new_5xx_class": "1%",
    "coverage": "5%",
    "region_skew": "10%",
    "cache_namespace": "25%",
    "lambda_convergence": "50%",
    "error_rate": None,
    "cache_hit_regression": None,
    "sticky_flip": None,
}
GATES = tuple(STOP_FROM)


def stop_active(gate: str, stage: str) -> bool:
    """Whether a failure of `gate` can be a hard stop at `stage` (stops are cumulative)."""
    start = STOP_FROM[gate]
    return start is not None and stage_rank(stage) >= stage_rank(start)


@dataclass(frozen=True)
class Context:
    """What the gates need beyond the horizon counters."""

    sticky_both: tuple[str, ...] = ()  # sticky keys seen on both variants (sample)
    sticky_both_count: int = 0
    sticky_untracked: int = 0


@dataclass
class _Row:
    status: GateStatus
    reason: str
    region: str | None = None
    observed: float | None = None
    threshold: float | None = None
    canary_n: int = 0
    control_n: int = 0
    stops: bool = True  # the gate's own stop condition (beyond failing)
    p_value: float | None = None


@dataclass
class _Judge:
    h: WindowStats
    cfg: Config
    evidence: Evidence
    ctx: Context = field(default_factory=Context)

    @property
    def canary(self) -> str:
        return self.cfg.canary

    @property
    def control(self) -> str:
        return self.cfg.control

    def per_variant(self, family: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for key, n in self.h.c[family].items():
            out[key[0] if isinstance(key, tuple) else key] += n
        return out

    def canary_regions(self) -> list[str]:
        return sorted({r for (v, r) in self.h.c["user"] if v == self.canary})

    def census(self, role: str) -> str:
        """Why `role`'s variant may be missing: accepted events per variant in the horizon.

        A typo in rollout.control or rollout.canary shows up here as a variant
        that sent events under another name; the hint names the key to check.
        """
        seen = sorted(self.h.c["events"].items(), key=lambda kv: (-kv[1], str(kv[0])))
        if not seen:
            return " (no events at all)"
        shown = ", ".join(f"{v!r} {n}" for v, n in seen[:5])
        more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
        unknown = any(v not in (self.control, self.canary) for v, _ in seen)
        hint = f"; is rollout.{role} right?" if unknown else ""
        return f" (events by variant: {shown}{more}{hint})"

    def weigh(self, worse: bool, p: float, claim: str, *, ops: tuple[str, str], limit: str,
              detail: str) -> tuple[GateStatus, str]:
        """Status and reason of an estimate judged against its limit and the sequential evidence.

        Fails only when the estimate is past the limit *and* the test rejects at
        thresholds.alpha; past the limit without that evidence it is a warning
        (noise until shown otherwise: it neither stops nor blocks promotion).
        """
        alpha = self.cfg.thresholds.alpha
        ok, bad = ops
        shown = f"p={p:.2g}" if p >= 1e-12 else "p<1e-12"  # strong evidence underflows to 0
        if not worse:
            return GateStatus.PASS, f"{claim} {ok} {limit} ({detail}; {shown})"
        if p < alpha:
            return GateStatus.FAIL, f"{claim} {bad} {limit} ({detail}); evidence {shown} < alpha {alpha:g}"
        return GateStatus.WARN, (f"{claim} {bad} {limit} ({detail}), not significant yet: "
                                 f"{shown} >= alpha {alpha:g}")

    def too_few(self, what: str, n: int, kn: int, need: int) -> str:
        """Reason of a row short of data: which side is short, both counts and the threshold."""
        short = " and ".join(role for role, k in (("canary", n), ("control", kn)) if k < need)
        return (f"too few {what} on the {short}: canary {self.canary!r} {n}, "
                f"control {self.control!r} {kn}; {need} needed each")

    # -- gates ---------------------------------------------------------------
    def schema_violations(self) -> list[_Row]:
        bad: Counter[str] = Counter()
        dead_total = 0
        for (v, reason), n in self.h.c["dead"].items():
            if v == self.canary:
                dead_total += n
                if reason in MALFORMED_REASONS:
                    bad[reason] += n
        pings = sum(n for (v, _), n in self.h.c["x_warm"].items() if v == self.canary)
        sent = self.h.count("events", self.canary) - pings + dead_total
        control_n = self.h.count("events", self.control)
        nbad = sum(bad.values())
        if sent == 0:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"the canary {self.canary!r} sent nothing in the horizon{self.census('canary')}",
                         observed=0, threshold=0, control_n=control_n)]
        if nbad:
            parts = ", ".join(f"{k} {n}" for k, n in sorted(bad.items()))
            return [_Row(GateStatus.FAIL, f"{nbad} canary messages dead-lettered ({parts})",
                         observed=nbad, threshold=0, canary_n=sent, control_n=control_n)]
        return [_Row(GateStatus.PASS, "no canary message broke the schema",
                     observed=0, threshold=0, canary_n=sent, control_n=control_n)]

    def delta_s_median(self) -> list[_Row]:
        t = self.cfg.thresholds
        canary = _values(self.h.c["delta_s"], self.canary)
        control = _values(self.h.c["delta_s"], self.control)
        n, kn = sum(canary.values()), sum(control.values())
        if n < t.min_probe_events:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"too few canary probes with ΔS: {n} from {self.canary!r},"
                         f" {t.min_probe_events} needed",
                         threshold=t.delta_s_median_max, canary_n=n, control_n=kn)]
        med = median(canary)
        row = _Row(GateStatus.PASS, f"median ΔS {med:.3f} <= {t.delta_s_median_max:g}",
                   observed=med, threshold=t.delta_s_median_max, canary_n=n, control_n=kn)
        if med > t.delta_s_median_max:
            row.status = GateStatus.FAIL
            row.stops = med >= t.delta_s_median_stop
            row.reason = f"median ΔS {med:.3f} > {t.delta_s_median_max:g}" + (
                f" (>= stop {t.delta_s_median_stop:g})" if row.stops else ""
            )
        return [row]

    def index_skew(self) -> list[_Row]:
        fields = ("index_hash", "metric", "analyzer")
        configured = {
            v: {f: getattr(self.cfg.spec(v), f) for f in fields if getattr(self.cfg.spec(v), f)}
            for v in (self.control, self.canary)
        }
        seen = self.per_variant("index_obs")
        n, kn = seen[self.canary], seen[self.control]
        if not any(configured.values()):
            return [_Row(GateStatus.SKIPPED, "no INDEX_HASH, metric or analyzer configured",
                         canary_n=n, control_n=kn)]
        bad: Counter[tuple[str, str, str | None]] = Counter()
        for (v, _r, ih, metric, analyzer), count in self.h.c["index_obs"].items():
            want = configured.get(v)
            if not want:
                continue
            got = {"index_hash": ih, "metric": metric, "analyzer": analyzer}
            for f, expected in want.items():
                if got[f] != expected:
                    bad[(v, f, got[f])] += count
        if bad:
            parts = [
                f"{v} {f} {got!r} != configured {configured[v][f]!r} ({count} events)"
                for (v, f, got), count in sorted(bad.items(), key=lambda kv: str(kv[0]))
            ]
            return [_Row(GateStatus.FAIL, "; ".join(parts), canary_n=n, control_n=kn)]
        return [_Row(GateStatus.PASS, "every event carries its variant's configured index",
                     canary_n=n, control_n=kn)]

    def p95_warm_latency(self) -> list[_Row]:
        t = self.cfg.thresholds
        label = f"p{t.latency_quantile * 100:g} {t.latency_field}"
        regions = self.canary_regions()
        if not regions:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"the canary {self.canary!r} had no user requests in the horizon",
                         threshold=t.latency_ratio_max)]
        rows = []
        for region in regions:
            cs = self.h.sketch(self.canary, region, False, t.latency_field)
            ks = self.h.sketch(self.control, region, False, t.latency_field)
            n, kn = cs.count, ks.count
            if n < t.min_warm_requests or kn < t.min_warm_requests:
                rows.append(_Row(
                    GateStatus.INSUFFICIENT_DATA,
                    self.too_few("warm requests", n, kn, t.min_warm_requests),
                    region=region, threshold=t.latency_ratio_max, canary_n=n, control_n=kn))
                continue
            cq = cs.quantile(t.latency_quantile) or 0.0
            kq = ks.quantile(t.latency_quantile) or 0.0
            ratio = cq / kq if kq > 0 else (1.0 if cq == 0 else None)
            shown = f"{ratio:.2f}" if ratio is not None else "inf"
            p = self.evidence.p_value("p95_warm_latency", region)
            status, reason = self.weigh(
                cq > t.latency_ratio_max * kq, p, f"canary/control {label} {shown}", ops=("<=", ">"),
                limit=f"{t.latency_ratio_max:g}",
                detail=f"canary {cq:.0f} ms, control {kq:.0f} ms; warm n {n}/{kn}")
            rows.append(_Row(status, reason, region=region, observed=ratio, threshold=t.latency_ratio_max,
                             canary_n=n, control_n=kn, p_value=p))
        return rows

    def new_5xx_class(self) -> list[_Row]:
        t = self.cfg.thresholds
        users = self.per_variant("user")
        n, kn = users[self.canary], users[self.control]
        if kn < t.min_warm_requests:
            missing = self.census("control") if not self.h.count("events", self.control) else ""
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"too few requests on the control: {kn} from {self.control!r},"
                         f" {t.min_warm_requests} needed{missing}",
                         canary_n=n, control_n=kn)]
        p = n / (n + kn)
        control_classes = {(s, ph) for (v, s, ph) in self.h.c["classes"] if v == self.control}
        new, stray = [], []
        for (v, status, phase), c in sorted(self.h.c["classes"].items(), key=lambda kv: str(kv[0])):
            if v != self.canary or (status, phase) in control_classes:
                continue
            chance = p**c
            text = f"{status}/{phase} x{c} (p^c={chance:.2g})"
            if c >= t.new_5xx_min_count and chance < t.new_5xx_alpha:
                new.append(text)
            else:
                stray.append(text)
        if new:
            return [_Row(GateStatus.FAIL,
                         f"new 5xx class on canary, never on control: {', '.join(new)}"
                         f" < alpha {t.new_5xx_alpha:g}", canary_n=n, control_n=kn)]
        reason = "no new 5xx class"
        if stray:
            reason += f"; canary-only within chance: {', '.join(stray)}"
        return [_Row(GateStatus.PASS, reason, canary_n=n, control_n=kn)]

    def coverage(self) -> list[_Row]:
        t = self.cfg.thresholds
        topics: dict[str, Counter[float]] = defaultdict(Counter)
        control_n = 0
        for (v, topic, value), count in self.h.c["coverage"].items():
            if topic == OTHER:
                continue  # topics past the label cap, pooled: no single topic to judge
            if v == self.canary:
                topics[topic][value] += count
            elif v == self.control:
                control_n += count
        total = sum(sum(c.values()) for c in topics.values())
        medians = {
            topic: median(vals) for topic, vals in sorted(topics.items())
            if sum(vals.values()) >= t.min_probe_events
        }
        if not medians:
            most = min(topics.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]), default=None)
            best = (f"most: {sum(most[1].values())} on {most[0]!r}" if most
                    else f"none from {self.canary!r}")
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"no probe topic has {t.min_probe_events} canary probes with coverage ({best})",
                         threshold=t.coverage_min, canary_n=total, control_n=control_n)]
        worst = min(medians.values())
        low = [f"{topic} {m:.3f}" for topic, m in medians.items() if m < t.coverage_min]
        if low:
            return [_Row(GateStatus.FAIL,
                         f"median coverage < {t.coverage_min:g} on {', '.join(low)}",
                         observed=worst, threshold=t.coverage_min, canary_n=total, control_n=control_n)]
        return [_Row(GateStatus.PASS,
                     f"median coverage >= {t.coverage_min:g} on {len(medians)} topics (lowest {worst:.3f})",
                     observed=worst, threshold=t.coverage_min, canary_n=total, control_n=control_n)]

    def region_skew(self) -> list[_Row]:
        combos: dict[tuple[str | None, str | None, str | None], set[str]] = defaultdict(set)
        n = 0
        for (v, region, ih, metric, analyzer), count in self.h.c["index_obs"].items():
            if v == self.canary:
                combos[(ih, metric, analyzer)].add(region)
                n += count
        if len(combos) <= 1:
            return [_Row(GateStatus.PASS, "canary shows one (INDEX_HASH, metric, analyzer) everywhere"
                         if combos else "no canary events with retrieval", canary_n=n)]
        parts = [f"{ih}/{m}/{a} in {','.join(sorted(rs))}"
                 for (ih, m, a), rs in sorted(combos.items(), key=lambda kv: str(kv[0]))]
        return [_Row(GateStatus.FAIL, "canary (INDEX_HASH/metric/analyzer) differs: " + "; ".join(parts),
                     canary_n=n)]

    def cache_namespace(self) -> list[_Row]:
        prefixes: dict[str, set[str]] = defaultdict(set)
        for (v, prefix) in self.h.c["prefixes"]:
            prefixes[v].add(prefix)
        mine, theirs = prefixes[self.canary], prefixes[self.control]
        seen = self.per_variant("prefixes")
        n, kn = seen[self.canary], seen[self.control]
        problems = []
        # "other" pools values past the label cap: it names no prefix, so it proves no collision.
        shared = sorted((mine & theirs) - {OTHER})
        if shared:
            problems.append(f"prefix {', '.join(map(repr, shared))} used by both variants")
        control_cfg = self.cfg.spec(self.control).cache_prefix
        canary_cfg = self.cfg.spec(self.canary).cache_prefix
        if control_cfg and control_cfg in mine and control_cfg not in shared:
            problems.append(f"canary uses the control's prefix {control_cfg!r}")
        if canary_cfg and canary_cfg in theirs and canary_cfg not in shared:
            problems.append(f"control uses the canary's prefix {canary_cfg!r}")
        if problems:
            return [_Row(GateStatus.FAIL, "; ".join(problems), canary_n=n, control_n=kn)]
        return [_Row(GateStatus.PASS, "cache prefixes are separate", canary_n=n, control_n=kn)]

    def lambda_convergence(self) -> list[_Row]:
        t = self.cfg.thresholds
        states: dict[str, dict[tuple[str, int], set[int]]] = {self.canary: defaultdict(set),
                                                              self.control: defaultdict(set)}
        counts: Counter[str] = Counter()
        for (v, q, para, _seed, state), count in self.h.c["lam"].items():
            if v in states and q != OTHER:  # pooled questions past the cap cannot be told apart
                states[v][(q, para)].add(state)
                counts[v] += count
        canary, control = states[self.canary], states[self.control]
        n, kn = counts[self.canary], counts[self.control]
        if not canary:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"the canary {self.canary!r} sent no probe with a λ state",
                         threshold=t.lambda_flip_stop, control_n=kn)]
        flips = sorted(pair for pair, s in canary.items()
                       if len(s) > 1 or (pair in control and control[pair] != s))
        off = sorted({LAMBDA_STATES[s] for s in set().union(*canary.values()) if s != LAMBDA_CONVERGENT})
        per_question = Counter(q for q, _ in flips)
        worst = max(per_question.values(), default=0)
        if not flips and not off:
            return [_Row(GateStatus.PASS, "every canary probe is convergent (→) and stable",
                         observed=0, threshold=t.lambda_flip_stop, canary_n=n, control_n=kn)]
        parts = []
        if flips:
            top = ", ".join(f"{q} ({k} paraphrases)" for q, k in per_question.most_common(5))
            parts.append(f"λ flips on {len(flips)} (question, paraphrase) pairs: {top}")
        if off:
            parts.append(f"non-convergent λ states seen: {' '.join(off)}")
        return [_Row(GateStatus.FAIL, "; ".join(parts), observed=worst, threshold=t.lambda_flip_stop,
                     canary_n=n, control_n=kn, stops=worst >= t.lambda_flip_stop)]

    def error_rate(self) -> list[_Row]:
        t = self.cfg.thresholds
        regions = self.canary_regions()
        if not regions:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         f"the canary {self.canary!r} had no user requests in the horizon")]
        rows = []
        for region in regions:
            n = self.h.count("user", (self.canary, region))
            kn = self.h.count("user", (self.control, region))
            if n < t.min_warm_requests or kn < t.min_warm_requests:
                rows.append(_Row(GateStatus.INSUFFICIENT_DATA,
                                 self.too_few("requests", n, kn, t.min_warm_requests),
                                 region=region, canary_n=n, control_n=kn))
                continue
            errors = self.h.count("errors", (self.canary, region))
            control_errors = self.h.count("errors", (self.control, region))
            rate, control_rate = errors / n, control_errors / kn
            allowed = t.error_ratio_max * control_rate + t.error_rate_tolerance
            p = self.evidence.p_value("error_rate", region)
            status, reason = self.weigh(
                rate > allowed, p, f"canary error rate {rate:.4f}", ops=("<=", ">"),
                limit=f"allowed {allowed:.4f} = {t.error_ratio_max:g} x control {control_rate:.4f}"
                      f" + {t.error_rate_tolerance:g}",
                detail=f"errors {errors}/{n} canary, {control_errors}/{kn} control")
            rows.append(_Row(status, reason, region=region, observed=rate, threshold=allowed,
                             canary_n=n, control_n=kn, p_value=p))
        return rows

    def cache_hit_regression(self) -> list[_Row]:
        t = self.cfg.thresholds
        n, kn = self.h.count("cache", (self.canary, "n")), self.h.count("cache", (self.control, "n"))
        if not n or not kn:
            return [_Row(GateStatus.INSUFFICIENT_DATA,
                         self.too_few("user requests with a cache block", n, kn, 1),
                         canary_n=n, control_n=kn)]
        hits = self.h.count("cache", (self.canary, "hit"))
        control_hits = self.h.count("cache", (self.control, "hit"))
        rate, control_rate = hits / n, control_hits / kn
        floor = control_rate - t.cache_hit_drop_max
        p = self.evidence.p_value("cache_hit_regression", None)
        status, reason = self.weigh(
            rate < floor, p, f"canary hit rate {rate:.3f}", ops=(">=", "<"),
            limit=f"control {control_rate:.3f} - {t.cache_hit_drop_max:g}",
            detail=f"hits {hits}/{n} canary, {control_hits}/{kn} control")
        return [_Row(status, reason, observed=rate, threshold=floor, canary_n=n, control_n=kn, p_value=p)]

    def sticky_flip(self) -> list[_Row]:
        if self.cfg.stage == "shadow":
            return [_Row(GateStatus.SKIPPED, "all traffic is mirrored at shadow")]
        note = (f"; {self.ctx.sticky_untracked} keys past the tracking bound not checked"
                if self.ctx.sticky_untracked else "")
        k = self.ctx.sticky_both_count
        if k:
            sample = ", ".join(repr(s) for s in self.ctx.sticky_both[:5])
            return [_Row(GateStatus.WARN, f"{k} sticky keys seen on both variants (e.g. {sample}){note}",
                         observed=k, threshold=0)]
        return [_Row(GateStatus.PASS, f"no sticky key seen on both variants{note}",
                     observed=0, threshold=0)]


def _values(counter: Counter[tuple[str, float]], variant: str) -> Counter[float]:
    out: Counter[float] = Counter()
    for (v, value), n in counter.items():
        if v == variant:
            out[value] += n
    return out


def median(values: Counter[float]) -> float:
    """Median of a multiset given as value -> count (mean of the middle two when even)."""
    total = sum(values.values())
    if total == 0:
        raise ValueError("median of nothing")
    lo_rank, hi_rank = (total - 1) // 2, total // 2
    lo = hi = None
    seen = 0
    for value in sorted(values):
        seen += values[value]
        if lo is None and seen > lo_rank:
            lo = value
        if seen > hi_rank:
            hi = value
            break
    assert lo is not None and hi is not None
    return (lo + hi) / 2


def judge(h: WindowStats, cfg: Config, evidence: Evidence,
          ctx: Context | None = None) -> tuple[GateRow, ...]:
    """Every row of every gate over the horizon `h`, the ratio and rate gates weighed with `evidence`."""
    j = _Judge(h, cfg, evidence, ctx or Context())
    rows: list[GateRow] = []
    for gate in GATES:
        fn: Callable[[], list[_Row]] = getattr(j, gate)
        active = stop_active(gate, cfg.stage)
        for r in fn():
            rows.append(GateRow(
                gate=gate, status=r.status, region=r.region,
                observed=None if r.observed is None else float(r.observed),
                threshold=None if r.threshold is None else float(r.threshold),
                hard_stop=r.status is GateStatus.FAIL and r.stops and active,
                canary_n=r.canary_n, control_n=r.control_n, reason=r.reason, p_value=r.p_value,
            ))
    return tuple(rows)


def decide(rows: tuple[GateRow, ...], stage: str, sustained: bool) -> Decision:
    """Decision of docs/gates.md ("The decision") given the rows and whether the clean run is long enough.

    Regions short of data do not count where other regions judge their gate (model.deciding_rows).
    """
    if any(r.hard_stop for r in rows):
        return Decision.STOP
    rows = deciding_rows(rows)
    if any(r.status is GateStatus.INSUFFICIENT_DATA and stop_active(r.gate, stage) for r in rows):
        return Decision.INSUFFICIENT_DATA
    if all(r.status.clean for r in rows) and sustained:
        return Decision.PROMOTE
    return Decision.HOLD


def all_clean(rows: tuple[GateRow, ...]) -> bool:
    """Every deciding row is pass, warn or skipped (the promotion clock keeps running)."""
    return all(r.status.clean for r in deciding_rows(rows))
