"""Counter families of a window: what each counts, its key layout, and what an event adds to it.

A window's statistics (`WindowStats.c`) are integer counters, one per family,
keyed by a plain tuple (a plain value when the key has one field).  `TABLE`
says, once, for every family: the field each key position holds (an event
field, which is also its frame column), which of them are labels (capped by
`LabelCaps`: their kinds follow from `population.LABELS`), which population
of events it counts, and on which condition.  Every summary derives its keys
from it:

* `count_requests` adds rows of distinct request signatures (`SIGNATURE`
  values and a count) to the request families: the stream counts a
  micro-batch's signatures (`WindowStats.add_many`, labels capped, and
  `partial.summarize`, raw), replay the rows of one polars group-by
  (`summarize_frame`, raw);
* probe families are keyed generically from their fields (`key_of`): per
  probe event on the stream, per group-by row in replay;
* `WindowStats.merge_relabeled` relabels a raw key position by position
  with `Family.kinds`.

Family names and key layouts are stable: recovery snapshots pickle these
counters, and the gates read keys by position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl

from pipeline.model import Event
from pipeline.population import (
    ERROR,
    KIND_OF_FIELD,
    PINGS,
    POPULATION_FIELDS,
    PROBES,
    USERS,
    error_class,
    error_phase,
    is_error,
    population_of,
    rounded,
)

if TYPE_CHECKING:
    from pipeline.aggregate.stats import LabelCaps

ALL = "all"  # the population of families that count every accepted event


@dataclass(frozen=True, eq=False)  # eq=False: a polars expression has no truth value
class Condition:
    """Which events of a family's population it counts: a test on one field, scalar and column."""

    field: str
    test: Callable[[Any], bool]
    column: pl.Expr


def _present(field: str) -> Condition:
    return Condition(field, lambda value: value is not None, pl.col(field).is_not_null())


ERRORS = Condition("status", is_error, ERROR)
RETRIEVAL = Condition("has_retrieval", bool, pl.col("has_retrieval"))
LAMBDA = Condition("lambda_state", lambda state: state >= 0, pl.col("lambda_state") >= 0)  # -1: absent

# How a field's value is counted, when not as is.
_VALUE: dict[str, Callable[[Any], Any]] = {"delta_s": rounded, "coverage": rounded,
                                           "failure_phase": error_phase}


class Family(NamedTuple):
    """One counter family: its name, key layout and what it counts."""

    name: str
    fields: tuple[str, ...]  # what each key position holds (event field / frame column, or derived)
    population: str | None  # ALL, PINGS, PROBES or USERS; None: not counted from events (engine)
    when: Condition | None = None  # None: every event of the population

    @property
    def kinds(self) -> tuple[str | None, ...]:
        """The label kind of each key position (None: not a label)."""
        return tuple(KIND_OF_FIELD.get(f) for f in self.fields)

    @property
    def plain(self) -> bool:
        """Whether a key is its one field's value rather than a tuple."""
        return len(self.fields) == 1

    def key_of(self, values: Sequence[Any]) -> Any:
        """The counter key of field values (labels already applied), values counted as `_VALUE` says."""
        if self.plain:
            return values[0]
        counted = _COUNTED.get(self.fields)
        if counted is None:
            counted = [(i, _VALUE[f]) for i, f in enumerate(self.fields) if f in _VALUE]
            _COUNTED[self.fields] = counted
        if not counted:
            return tuple(values)
        out = list(values)
        for i, count in counted:
            out[i] = count(out[i])
        return tuple(out)


_COUNTED: dict[tuple[str, ...], list[tuple[int, Callable[[Any], Any]]]] = {}  # fields -> (position, _VALUE)


TABLE: tuple[Family, ...] = (
    Family("events", ("variant",), ALL),  # x_warm and probes included
    Family("x_warm", ("variant", "region"), PINGS),
    Family("user", ("variant", "region"), USERS),
    Family("errors", ("variant", "region"), USERS, ERRORS),
    Family("statuses", ("variant", "region", "status"), USERS),
    Family("classes", ("variant", "status", "failure_phase"), USERS, ERRORS),  # phase "none" when absent
    Family("duplicates", ("variant",), None),  # events dropped as duplicate request_id
    Family("dead", ("variant", "reason"), None),  # dead letters (variant "" when unknown)
    Family("probes", ("variant",), PROBES),
    Family("delta_s", ("variant", "delta_s"), PROBES, _present("delta_s")),
    Family("coverage", ("variant", "probe_topic", "coverage"), PROBES, _present("coverage")),
    # λ states; LabelCaps.lam_key drops paraphrase and seed of probes the gate does not read
    Family("lam", ("variant", "probe_question", "probe_paraphrase", "probe_seed", "lambda_state"), PROBES,
           LAMBDA),
    Family("index_obs", ("variant", "region", "index_hash", "metric", "analyzer"), USERS, RETRIEVAL),
    Family("prefixes", ("variant", "cache_prefix"), USERS, _present("cache_prefix")),
    Family("cache", ("variant", "cache"), USERS, _present("cache_hit")),  # cache: "n", and "hit" on a hit
)
FAMILY = {f.name: f for f in TABLE}
FAMILIES = tuple(FAMILY)
KEY_KINDS = {f.name: f.kinds for f in TABLE}
PROBE_FAMILIES = tuple(f for f in TABLE if f.population == PROBES)
REQUEST_FAMILIES = tuple(f for f in TABLE if f.population in (ALL, PINGS, USERS))  # count_requests's

# What the request families (every family of ALL, PINGS and USERS) read of an event, "population"
# standing for POPULATION_FIELDS: events with equal values count alike.
SIGNATURE = ("variant", "region", "population", "status", "failure_phase", "has_retrieval", "index_hash",
             "metric", "analyzer", "cache_prefix", "cache_hit")
POPULATION_AT = SIGNATURE.index("population")
EVENT_SIGNATURE = tuple(g for f in SIGNATURE for g in (POPULATION_FIELDS if f == "population" else (f,)))
_EVENT_SIGNATURE = attrgetter(*EVENT_SIGNATURE)

# Latency: sketches per key (these event fields), one per phase.
LATENCY_KEY = ("variant", "region", "cold_start")
PHASES = ("tffb", "tusable", "tfinal")
LatencyKey = tuple[str, str, bool]  # variant, region, cold

Counters = dict[str, Counter[Any]]
Relabeled = dict[tuple[str, str], tuple[str, str]]  # raw (variant, region) -> their labels


def signatures(events: list[Event]) -> list[tuple[Any, ...]]:
    """The distinct SIGNATURE values of events, each followed by its count, in order of first appearance.

    Counting the raw attribute tuples is C-level; the population is then
    worked out once per distinct tuple.
    """
    return [(variant, region, population_of(ping, question), *rest, n)
            for (variant, region, ping, question, *rest), n in Counter(map(_EVENT_SIGNATURE, events)).items()]


def _labels_after(name: str, start: int) -> tuple[str, ...]:
    """The label kinds of family `name`'s key from position `start` on (all of them labels)."""
    kinds = KEY_KINDS[name][start:]
    labels = tuple(k for k in kinds if k is not None)
    if len(labels) != len(kinds):
        raise ValueError(f"{name} key positions {start}.. must all be labels, got {kinds}")
    return labels


# The label kinds of index_obs keys after (variant, region), and of prefixes keys after the variant.
_INDEX_HASH, _METRIC, _ANALYZER = _labels_after("index_obs", 2)
(_PREFIX,) = _labels_after("prefixes", 1)


def count_requests(c: Counters, rows: Iterable[Sequence[Any]], caps: LabelCaps | None) -> Relabeled:
    """Add signature rows (SIGNATURE values, then a count) to the families of every event, pings and
    user requests.

    Labels are capped by `caps` (admitted in each event's context, see
    `LabelCaps`), or kept raw (None).  Returns the labels given to each raw
    (variant, region).
    """
    events, x_warm = c["events"], c["x_warm"]
    user, statuses, errors, classes = c["user"], c["statuses"], c["errors"], c["classes"]
    index_obs, prefixes, cache = c["index_obs"], c["prefixes"], c["cache"]
    capped: Relabeled = {}
    for variant, region, population, status, phase, has_r, ih, metric, analyzer, prefix, hit, n in rows:
        vr = capped.get((variant, region))
        if vr is None:
            vr = capped[(variant, region)] = ((variant, region) if caps is None else
                                              (caps.admit("variant", variant),
                                               caps.admit("region", region, judged=variant in caps.judged)))
        v = vr[0]
        events[v] += n
        if population == PINGS:
            x_warm[vr] += n
            continue
        if population != USERS:
            continue
        user[vr] += n
        statuses[(*vr, status)] += n
        if is_error(status):
            errors[vr] += n
            classes[(v, *error_class(status, phase))] += n
        if caps is None:
            if has_r:
                index_obs[(*vr, ih, metric, analyzer)] += n
            if prefix is not None:
                prefixes[(v, prefix)] += n
        elif has_r or prefix is not None:  # labels admitted in the event's context, in key order
            judged = variant in caps.judged
            if has_r:
                index_obs[(*vr, caps.admit(_INDEX_HASH, ih, judged=judged),
                           caps.admit(_METRIC, metric, judged=judged),
                           caps.admit(_ANALYZER, analyzer, judged=judged))] += n
            if prefix is not None:
                prefixes[(v, caps.admit(_PREFIX, prefix, judged=judged))] += n
        if hit is not None:
            cache[(v, "n")] += n
            if hit:
                cache[(v, "hit")] += n
    return capped


# Per probe family: its getter of key fields, and the key positions after the variant that are labels.
_PROBE_KEYS = [(f, f.name, attrgetter(*f.fields), f.when,
                [(i, kind) for i, kind in enumerate(f.kinds) if i and kind is not None])
               for f in PROBE_FAMILIES]


def count_probes(c: Counters, probes: list[Event], caps: LabelCaps | None, capped: Relabeled) -> None:
    """Add probe events to the probe families (`capped`: from `count_requests` over the same events).

    Every key starts with the variant, labelled as `capped` says; the other
    labels are admitted in the probe's context, family by family in TABLE
    order.  Capped λ keys are pooled by `LabelCaps.lam_key` (raw ones are
    pooled when relabeled).
    """
    for ev in probes:
        variant = ev.variant
        v = capped[(variant, ev.region)][0]
        judged = caps is not None and variant in caps.judged
        for family, name, fields, when, labels in _PROBE_KEYS:
            if when is not None and not when.test(getattr(ev, when.field)):
                continue
            if family.plain:
                c[name][v] += 1
                continue
            values = list(fields(ev))
            values[0] = v
            if caps is not None:
                for i, kind in labels:
                    values[i] = caps.admit(kind, values[i], judged=judged)
            key = family.key_of(values)
            if caps is not None and name == "lam":
                key = caps.lam_key(variant, key)
            c[name][key] += 1


__all__ = ["ALL", "ERRORS", "EVENT_SIGNATURE", "FAMILIES", "FAMILY", "KEY_KINDS", "LAMBDA", "LATENCY_KEY",
           "PHASES", "POPULATION_AT", "PROBE_FAMILIES", "REQUEST_FAMILIES", "RETRIEVAL", "SIGNATURE",
           "TABLE", "Condition", "Counters", "Family", "LatencyKey", "Relabeled", "count_probes",
           "count_requests", "signatures"]
