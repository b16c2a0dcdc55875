"""Judgement benchmark: false stops on healthy releases and detection of real regressions.

Seeded synthetic rollouts go through the stream's pure core (decode-side
partial aggregates, the engine's clock, horizon, sequential evidence, latch)
and every verdict is read.  Each run is also re-judged with point-estimate
gates (the sequential tests switched off: every estimate past its threshold
fails, as before the tests existed), side by side in the same run.

Traffic model: every region sends Poisson user requests at --rate per second,
each to the canary with the stage's share (1 %, 5 %, 10 % or 50 %); 5 % are
cold starts (3x slower, never gated); warm tfinal is lognormal with median
1.3 s and the run's sigma (0.8: p95 about 3.7x the median); 0.3 % of
requests fail 503/headers and two rare classes (504/body 0.05 %, 500 0.02 %)
hit both variants alike; 90 % carry a cache block (hit rate 0.6); each
variant runs gold probes every 4 s and sends x_warm pings.  The rollout
config is the example's: 60 s windows, a 10-minute horizon, 300 s sustain,
every threshold at its default (alpha 0.01).

* A/A: canary and control alike; traffic 1 %, 5 %, 50 % x 1 and 3 regions x
  30 and 60 minutes x sigma 0.3 and 0.8, --seeds each (10: 240 runs).  Counted:
  runs with any hard stop (and its 95 % Clopper-Pearson interval), the
  largest share of a run's judged windows in which error_rate failed,
  cache_hit_regression failures, promote -> other -> promote flaps.
* Detection: warm tfinal x1.3, 1.4, 1.6, 2 in us-east of 3 regions from
  minute 10, at 1 % and 10 % traffic, sigma 0.3 and 0.8, --detect-seeds each;
  and the canary's error rate x2 and x3 there, also at 50 % (error_rate is
  promotion-only: detection is its first failing row).  Reported: detected within the 30
  windows after onset, and the median and largest number of windows from
  onset to the first stop (onset window counted as 1).

    .venv/bin/python bench/judgement.py [--seeds 10] [--detect-seeds 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline import config as config_mod  # noqa: E402
from pipeline.aggregate.partial import summarize  # noqa: E402
from pipeline.engine import Engine, Report  # noqa: E402
from pipeline.model import Decision, Event, GateStatus, Verdict  # noqa: E402
from pipeline.replay.whatif import rejudge  # noqa: E402
from pipeline.scenarios import DEFAULT_START, scenario_config  # noqa: E402

REGIONS = ("us-east", "eu-west", "ap-south")
STAGES = {0.01: "1%", 0.05: "5%", 0.10: "10%", 0.50: "50%"}
CONTROL, CANARY = "control", "canary-v2"
MEDIAN_MS = 1300.0
ERROR_RATE = 0.003
RARE_CLASSES = ((504, "body", 0.0005), (500, None, 0.0002))
ONSET_MIN = 10
AFTER_ONSET = 30  # windows watched after the onset in detection runs
START = DEFAULT_START.timestamp()
KINDS = ("aa", "latency", "errors")
INDEX = {CONTROL: "0x9a76", CANARY: "0x9a77"}
PREFIX = {CONTROL: "v1:", CANARY: "v2-cnr:"}
STICKY = {CONTROL: "c-", CANARY: "k-"}  # disjoint pools: sticky routing holds


@dataclasses.dataclass(frozen=True)
class Run:
    """One seeded rollout."""

    kind: str  # "aa", "latency" or "errors"
    share: float
    regions: int
    minutes: int
    sigma: float
    seed: int
    factor: float = 1.0  # canary warm tfinal (latency) or error rate (errors) x this, us-east, from ONSET_MIN


def config(share: float) -> config_mod.Config:
    return config_mod.parse(scenario_config("healthy")).with_stage(STAGES[share])


def point_estimates(cfg: config_mod.Config) -> config_mod.Config:
    """The same rollout with the sequential tests switched off: every estimate past its limit fails."""
    return dataclasses.replace(cfg, thresholds=dataclasses.replace(cfg.thresholds, alpha=1.01))


def minute(run: Run, m: int, rng: np.random.Generator, rate: float) -> list[Event]:
    """One minute of every region's events, in event-time order."""
    out: list[Event] = []
    t0 = START + 60 * m
    regressed = m >= ONSET_MIN and run.kind != "aa"
    for r, region in enumerate(REGIONS[: run.regions]):
        n = int(rng.poisson(rate * 60))
        ts = t0 + np.sort(rng.random(n)) * 60
        canary = rng.random(n) < run.share
        cold = rng.random(n) < 0.05
        tfinal = rng.lognormal(math.log(MEDIAN_MS), run.sigma, n) * np.where(cold, 3.0, 1.0)
        error_rate = np.full(n, ERROR_RATE)
        if regressed and r == 0:
            if run.kind == "latency":
                tfinal = np.where(canary & ~cold, tfinal * run.factor, tfinal)
            else:
                error_rate = np.where(canary, ERROR_RATE * run.factor, ERROR_RATE)
        u = rng.random(n)
        status = np.where(u < error_rate, 503, 200)
        failure = np.where(u < error_rate, "headers", "")
        edge = error_rate
        for code, phase, p in RARE_CLASSES:
            hit = (u >= edge) & (u < edge + p)
            status = np.where(hit, code, status)
            failure = np.where(hit, phase or "", failure)
            edge = edge + p
        has_cache = rng.random(n) < 0.9
        hit = rng.random(n) < 0.6
        sticky = rng.integers(0, 5000, n)
        for i in range(n):
            v = CANARY if canary[i] else CONTROL
            f = float(tfinal[i])
            out.append(Event(
                float(ts[i]), "chat.rag.answer", v, f"{STICKY[v]}{sticky[i]}", region, bool(cold[i]), False,
                None, 0.12 * f, 0.3 * f, f, int(status[i]), str(failure[i]) or None, True, INDEX[v], "cosine",
                "bilstem", None, None, -1, None, None, 0, 0, PREFIX[v] if has_cache[i] else None,
                bool(hit[i]) if has_cache[i] else None))
        for v in (CONTROL, CANARY):
            for k in range(3):  # x_warm pings: counted, in no gate
                out.append(Event(t0 + 20 * k + 1 + r, "chat.rag.answer", v, "ping", region, False, True, None,
                                 50.0, 60.0, 70.0, 200, None, False, None, None, None, None, None, -1, None,
                                 None, 0, 0, None, None))
    for v in (CONTROL, CANARY):  # gold probes every 4 s, 12 questions x 3 paraphrases x 2 seeds
        for k in range(15):
            i = m * 15 + k
            out.append(Event(t0 + 4 * k + 0.5, "chat.rag.answer", v, "probe", REGIONS[0], False, False, None,
                             150.0, 400.0, 1300.0, 200, None, True, INDEX[v], "cosine", "bilstem",
                             round(0.3 + 0.05 * math.sin(i), 4), round(0.8 + 0.05 * math.cos(i), 4), 0,
                             f"q{i % 12:03d}", ("billing", "returns", "shipping")[i % 12 // 4], i // 12 % 3,
                             i // 36 % 2, None, None))
    out.sort(key=lambda e: e.ts)
    return out


def judge(run: Run, rate: float) -> dict[str, Any]:
    """Feed one run through the engine; summarise its verdicts and their point-estimate twins."""
    cfg = config(run.share)
    engine = Engine(cfg)
    engine.kept = []
    rng = np.random.default_rng([run.seed, int(run.share * 1000), run.regions, run.minutes,
                                 int(run.sigma * 10), int(run.factor * 10), KINDS.index(run.kind)])
    size, variants = cfg.windows.size_s, (cfg.control, cfg.canary)
    reports = []
    for m in range(run.minutes):
        events: list[Any] = minute(run, m, rng, rate)
        part = summarize(events, size, variants)
        assert part is not None
        reports += engine.feed_partial(part, "0", lambda events=events: events)  # type: ignore[misc]
    reports += engine.close()
    verdicts = [r.verdict for r in reports if isinstance(r, Report)]
    before = list(rejudge(point_estimates(cfg), engine.kept))
    return {"run": run, "now": summary(verdicts, run), "before": summary(before, run)}


def summary(verdicts: list[Verdict], run: Run) -> dict[str, Any]:
    decisions = [v.decision for v in verdicts]
    stops = [i for i, d in enumerate(decisions) if d is Decision.STOP]
    first_fail = next((i for i, v in enumerate(verdicts)  # error_rate never stops: its first failure
                       if any(r.gate == "error_rate" and r.region == REGIONS[0]
                              and r.status is GateStatus.FAIL for r in v.gates)), None)
    evidence = next((i for i, v in enumerate(verdicts)  # the latency test alone rejects in us-east
                     if any(r.gate == "p95_warm_latency" and r.region == REGIONS[0] and r.p_value is not None
                            and r.p_value < 0.01 for r in v.gates)), None)
    judged = failing = 0
    cache_fail = 0
    for v in verdicts:
        rows = [r for r in v.gates if r.gate == "error_rate" and r.status is not GateStatus.INSUFFICIENT_DATA]
        if rows:
            judged += 1
            failing += any(r.status is GateStatus.FAIL for r in rows)
        cache_fail += any(r.gate == "cache_hit_regression" and r.status is GateStatus.FAIL for r in v.gates)
    flaps = _flaps(decisions)
    stop_gates = Counter(r.gate for r in verdicts[stops[0]].gates if r.hard_stop) if stops else Counter()
    return {"first_stop": stops[0] if stops else None, "stop_gates": stop_gates,
            "error_fail_share": failing / judged if judged else 0.0, "cache_fail": cache_fail,
            "first_fail": first_fail, "evidence": evidence, "flaps": flaps,
            "promoted": Decision.PROMOTE in decisions}


def _flaps(decisions: list[Decision]) -> int:
    """promote -> something else -> promote again, counted once per return."""
    out, left = 0, False
    seen = False
    for d in decisions:
        if d is Decision.PROMOTE:
            if left:
                out += 1
            seen, left = True, False
        elif seen:
            left = True
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes of n."""
    tail = (1 - level) / 2

    def cdf(p: float, upto: int) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(upto + 1))

    def solve(f: Any, lo: float = 0.0, hi: float = 1.0) -> float:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if k == 0 else solve(lambda p: 1 - cdf(p, k - 1) < tail)
    upper = 1.0 if k == n else solve(lambda p: cdf(p, k) > tail)
    return lower, upper


def runs(seeds: int, detect_seeds: int) -> Iterator[Run]:
    for share, regions, minutes, sigma in itertools.product((0.01, 0.05, 0.50), (1, 3), (30, 60), (0.3, 0.8)):
        for seed in range(seeds):
            yield Run("aa", share, regions, minutes, sigma, seed)
    for share, sigma, factor in itertools.product((0.01, 0.10), (0.3, 0.8), (1.3, 1.4, 1.6, 2.0)):
        for seed in range(detect_seeds):
            yield Run("latency", share, 3, ONSET_MIN + AFTER_ONSET, sigma, seed, factor)
    for share, factor in itertools.product((0.01, 0.10, 0.50), (2.0, 3.0)):
        for seed in range(detect_seeds):
            yield Run("errors", share, 3, ONSET_MIN + AFTER_ONSET, 0.8, seed, factor)


def detection(results: list[dict[str, Any]], which: str, key: str) -> str:
    found = [r[which][key] - ONSET_MIN + 1 for r in results if r[which][key] is not None
             and r[which][key] >= ONSET_MIN]
    early = sum(1 for r in results if r[which][key] is not None and r[which][key] < ONSET_MIN)
    text = f"{len(found):2d}/{len(results)}"
    if found:
        text += f", median {statistics.median(found):4.1f}, max {max(found):2d}"
    else:
        text += " " * 21
    return text + (f" ({early} before onset)" if early else "")


def aa_lines(aa: list[dict[str, Any]], which: str) -> list[str]:
    """The A/A figures of one way of judging."""
    stopped = [r for r in aa if r[which]["first_stop"] is not None]
    lo, hi = clopper_pearson(len(stopped), len(aa))
    gates = Counter(g for r in stopped for g in r[which]["stop_gates"])
    by_share = Counter(r["run"].share for r in stopped)
    cache_runs = sum(r[which]["cache_fail"] > 0 for r in aa)
    return [
        f"false hard stops {len(stopped)}/{len(aa)} ({100 * len(stopped) / len(aa):.1f} %, "
        f"95 % CI {100 * lo:.1f}-{100 * hi:.1f} %) by gate {dict(gates)}",
        "  by traffic: " + ", ".join(f"{STAGES[s]} {by_share[s]}/{sum(r['run'].share == s for r in aa)}"
                                      for s in (0.01, 0.05, 0.50)),
        f"  error_rate failing: worst run {100 * max(r[which]['error_fail_share'] for r in aa):.1f} % "
        f"of its judged windows, {sum(r[which]['error_fail_share'] > 0.01 for r in aa)} runs over 1 %",
        f"  cache_hit_regression failing: {sum(r[which]['cache_fail'] for r in aa)} windows "
        f"in {cache_runs} runs",
        f"  promote -> other -> promote flaps {sum(r[which]['flaps'] for r in aa)}; "
        f"runs that promoted {sum(r[which]['promoted'] for r in aa)}",
    ]


def report(results: list[dict[str, Any]], seconds: float) -> None:
    aa = [r for r in results if r["run"].kind == "aa"]
    print(f"{len(results)} runs in {seconds:.0f} s")
    for which, title in (("now", "sequential gates"), ("before", "point estimates (no sequential tests)")):
        if not aa:
            break
        print(f"\nA/A, {title}:")
        for line in aa_lines(aa, which):
            print(f"  {line}")
    print("\nDetection: found within 30 windows, median and max windows from onset to the first stop")
    print(f"  {'':36s}{'sequential gates':38s}{'point estimates':38s}p95 test alone (p < 0.01)")
    groups: dict[tuple[str, float, float, float], list[dict[str, Any]]] = {}
    for r in results:
        run = r["run"]
        if run.kind != "aa":
            groups.setdefault((run.kind, run.share, run.sigma, run.factor), []).append(r)
    for (kind, share, sigma, factor), rs in sorted(groups.items()):
        key = "first_stop" if kind == "latency" else "first_fail"
        what = (f"warm p95 x{factor:g}, sigma {sigma:g}" if kind == "latency"
                else f"error rate x{factor:g} (fail)")
        alone = detection(rs, "now", "evidence") if kind == "latency" else ""
        print(f"  {what:24s} at {STAGES[share]:>3s}:  {detection(rs, 'now', key):36s}  "
              f"{detection(rs, 'before', key):36s}  {alone}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="A/A runs per cell of the grid (24 cells)")
    ap.add_argument("--detect-seeds", type=int, default=20, help="runs per detection case")
    ap.add_argument("--rate", type=float, default=10.0, help="user requests per second per region")
    ap.add_argument("--workers", type=int, default=2, help="processes")
    args = ap.parse_args()
    todo = list(runs(args.seeds, args.detect_seeds))
    start = time.perf_counter()
    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, res in enumerate(pool.map(judge, todo, itertools.repeat(args.rate), chunksize=4), 1):
            results.append(res)
            if sys.stderr.isatty():
                print(f"\r{i}/{len(todo)} runs", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    report(results, time.perf_counter() - start)


if __name__ == "__main__":
    main()
