"""Serving-config skew: which index and cache namespace each variant really uses (docs/gates.md).

`index_skew` (each variant against its `[variants.<name>]`), `region_skew`
(the canary alike in every region) and `cache_namespace` (no cache prefix
shared between the variants).  These are set-valued facts, not estimates.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from pipeline.aggregate.stats import OTHER
from pipeline.config import VariantSpec
from pipeline.gates.base import Gate, Row, Scope
from pipeline.model import GateStatus

IndexTriple = tuple[str | None, str | None, str | None]  # INDEX_HASH, metric, analyzer


def _index_fields(spec: VariantSpec) -> dict[str, str]:
    """The index fields a variant's spec configures, in the order reasons name them."""
    fields = {"index_hash": spec.index_hash, "metric": spec.metric, "analyzer": spec.analyzer}
    return {name: value for name, value in fields.items() if value}


def _index_events(s: Scope) -> Counter[str]:
    """User requests with a retrieval block per variant, all regions."""
    out: Counter[str] = Counter()
    for (variant, _region, _index_hash, _metric, _analyzer), n in s.h.c["index_obs"].items():
        out[variant] += n
    return out


def index_skew(s: Scope) -> list[Row]:
    """Fails when an event of a variant carries another INDEX_HASH, metric or analyzer than configured."""
    configured = {v: _index_fields(s.cfg.spec(v)) for v in (s.control, s.canary)}
    seen = _index_events(s)
    n, kn = seen[s.canary], seen[s.control]
    if not any(configured.values()):
        return [Row(GateStatus.SKIPPED, "no INDEX_HASH, metric or analyzer configured",
                    canary_n=n, control_n=kn)]
    bad: Counter[tuple[str, str, str | None]] = Counter()
    for (variant, _region, index_hash, metric, analyzer), count in s.h.c["index_obs"].items():
        want = configured.get(variant)
        if not want:
            continue
        got = {"index_hash": index_hash, "metric": metric, "analyzer": analyzer}
        for name, expected in want.items():
            if got[name] != expected:
                bad[(variant, name, got[name])] += count
    if bad:
        parts = [
            f"{v} {name} {got!r} != configured {configured[v][name]!r} ({count} events)"
            for (v, name, got), count in sorted(bad.items(), key=lambda kv: str(kv[0]))
        ]
        return [Row(GateStatus.FAIL, "; ".join(parts), canary_n=n, control_n=kn)]
    return [Row(GateStatus.PASS, "every event carries its variant's configured index",
                canary_n=n, control_n=kn)]


def region_skew(s: Scope) -> list[Row]:
    """Fails when the canary's events show more than one (INDEX_HASH, metric, analyzer)."""
    combos: dict[IndexTriple, set[str]] = defaultdict(set)
    n = 0
    for (variant, region, index_hash, metric, analyzer), count in s.h.c["index_obs"].items():
        if variant == s.canary:
            combos[(index_hash, metric, analyzer)].add(region)
            n += count
    if len(combos) <= 1:
        return [Row(GateStatus.PASS, "canary shows one (INDEX_HASH, metric, analyzer) everywhere"
                    if combos else "no canary events with retrieval", canary_n=n)]
    parts = [f"{ih}/{m}/{a} in {','.join(sorted(rs))}"
             for (ih, m, a), rs in sorted(combos.items(), key=lambda kv: str(kv[0]))]
    return [Row(GateStatus.FAIL, "canary (INDEX_HASH/metric/analyzer) differs: " + "; ".join(parts),
                canary_n=n)]


def cache_namespace(s: Scope) -> list[Row]:
    """Fails when a cache prefix is on both variants, or one uses the other's configured prefix."""
    prefixes: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for (variant, cache_prefix), n in s.h.c["prefixes"].items():
        prefixes[variant].add(cache_prefix)
        seen[variant] += n
    mine, theirs = prefixes[s.canary], prefixes[s.control]
    n, kn = seen[s.canary], seen[s.control]
    problems = []
    # "other" pools values past the label cap: it names no prefix, so it proves no collision.
    shared = sorted((mine & theirs) - {OTHER})
    if shared:
        problems.append(f"prefix {', '.join(map(repr, shared))} used by both variants")
    control_cfg = s.cfg.spec(s.control).cache_prefix
    canary_cfg = s.cfg.spec(s.canary).cache_prefix
    if control_cfg and control_cfg in mine and control_cfg not in shared:
        problems.append(f"canary uses the control's prefix {control_cfg!r}")
    if canary_cfg and canary_cfg in theirs and canary_cfg not in shared:
        problems.append(f"control uses the canary's prefix {canary_cfg!r}")
    if problems:
        return [Row(GateStatus.FAIL, "; ".join(problems), canary_n=n, control_n=kn)]
    return [Row(GateStatus.PASS, "cache prefixes are separate", canary_n=n, control_n=kn)]


INDEX_SKEW = Gate(
    "index_skew", stop_from="shadow", per_region=False, judge=index_skew,
    settings=("variants.<name>.index_hash", "variants.<name>.metric", "variants.<name>.analyzer"),
)
REGION_SKEW = Gate("region_skew", stop_from="10%", settings=(), per_region=False, judge=region_skew)
CACHE_NAMESPACE = Gate("cache_namespace", stop_from="25%", settings=("variants.<name>.cache_prefix",),
                       per_region=False, judge=cache_namespace)
