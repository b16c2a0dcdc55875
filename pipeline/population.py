"""Which requests each statistic counts, and under which labels: defined once.

Every event is exactly one of:

* a **ping**: `x_warm` is true (warm-up traffic; counted per variant and
  region, never in the SLO math, whatever else it carries);
* a **probe**: not a ping, and it names a probe question (ΔS, coverage and λ
  come from probes; they are not user traffic);
* a **user request**: neither.  Latency, errors, 5xx classes, index
  observations, cache blocks and sticky keys are taken over user requests.

Each definition has a scalar form (on a decoded `Event`, or on the fields it
reads, for the stream's per-event paths) and a column form (a polars
expression over `frame.SCHEMA`, for the column-wise summaries), side by side,
so the two cannot drift apart.  The same goes for the other rules every
summary shares: which event fields are labels (the label row, and the order
the label caps are offered them in), which requests give sticky keys, and
how ΔS and coverage are rounded before they are counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import Any

import polars as pl

from pipeline.model import Event

# -- populations -----------------------------------------------------------------------------------


def is_ping(e: Event) -> bool:
    """A warm-up ping."""
    return e.x_warm


def is_probe(e: Event) -> bool:
    """A quality probe (not a ping)."""
    return not e.x_warm and e.probe_question is not None


def is_user(e: Event) -> bool:
    """A user request: neither a ping nor a probe."""
    return not e.x_warm and e.probe_question is None


def users_of(events: Iterable[Event]) -> list[Event]:
    """The user requests among `events`, in order (`is_user` inlined: it runs per event)."""
    return [e for e in events if not e.x_warm and e.probe_question is None]


def probes_of(events: Iterable[Event]) -> list[Event]:
    """The probes among `events`, in order."""
    return [e for e in events if not e.x_warm and e.probe_question is not None]


PING = pl.col("x_warm")
PROBE = ~pl.col("x_warm") & pl.col("probe_question").is_not_null()
USER = ~pl.col("x_warm") & pl.col("probe_question").is_null()

# The population as a value, for summaries that group events by it.
PINGS, PROBES, USERS = POPULATIONS = ("ping", "probe", "user")
POPULATION_FIELDS = ("x_warm", "probe_question")  # what `population_of` reads of an event


def population_of(x_warm: bool, probe_question: str | None) -> str:
    """The population (one of POPULATIONS) of an event with these fields."""
    if x_warm:
        return PINGS
    return USERS if probe_question is None else PROBES


_POPULATION_TYPE = pl.Enum(POPULATIONS)
POPULATION = (pl.when(PING).then(pl.lit(PINGS, dtype=_POPULATION_TYPE))
              .when(PROBE).then(pl.lit(PROBES, dtype=_POPULATION_TYPE))
              .otherwise(pl.lit(USERS, dtype=_POPULATION_TYPE)))


def is_error(status: int) -> bool:
    """A user request with this status counts as an error (5xx)."""
    return status >= 500


ERROR = pl.col("status") >= 500


def error_phase(phase: str | None) -> str:
    """The failure phase of an error as its 5xx class names it ("none" when absent)."""
    return phase or "none"


def error_class(status: int, phase: str | None) -> tuple[int, str]:
    """The 5xx class of an error: its status and failure phase ("none" when absent)."""
    return status, error_phase(phase)


# -- labels ----------------------------------------------------------------------------------------

# The label row: every event field whose values become label values (capped per kind by
# `LabelCaps`), as (label kind, event field = frame column), variant first.  The caps are offered
# whole rows in order of first appearance.  A probe's topic and question come together (the schema
# requires both), so rows of other events hold None in both.
LABELS: tuple[tuple[str, str], ...] = (
    ("variant", "variant"), ("region", "region"), ("index_hash", "index_hash"), ("metric", "metric"),
    ("analyzer", "analyzer"), ("prefix", "cache_prefix"), ("topic", "probe_topic"),
    ("question", "probe_question"),
)
LABEL_KINDS = tuple(kind for kind, _ in LABELS)
LABEL_FIELDS = tuple(field for _, field in LABELS)
KIND_OF_FIELD = {field: kind for kind, field in LABELS}
PROBE_LABELS = ("topic", "question")  # the last kinds, never on a user request (no question, no topic)
label_row = attrgetter(*LABEL_FIELDS)  # an event's label row (LABEL_KINDS order)
ROWS = "rows"  # the entry of ADMITTED that lists whole label rows
# Label kinds taken from events, and where each is read; last, every distinct label row, so
# that a partial aggregate tells the judge which variant brought each value (a summary lists
# the values of every entry here in order of first appearance).
ADMITTED: tuple[tuple[str, Any], ...] = (
    *((kind, attrgetter(field)) for kind, field in LABELS), (ROWS, label_row))


def label_rows_of_users(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Label rows of user requests from rows without the probe kinds (None there)."""
    none = (None,) * len(PROBE_LABELS)
    return [(*row, *none) for row in rows]


# -- sticky keys -----------------------------------------------------------------------------------


def gives_sticky(e: Event, variants: Iterable[str]) -> bool:
    """Whether the event's sticky key is tracked: a user request of a configured variant."""
    return is_user(e) and e.variant in variants


def sticky_keys(users: list[Event], variants: tuple[str, ...]) -> dict[str, list[str]]:
    """Distinct sticky keys per configured variant of user requests (`users_of`), first appearance first."""
    out: dict[str, list[str]] = {v: [] for v in variants}
    for variant, key in dict.fromkeys(map(_STICKY, users)):
        keys = out.get(variant)
        if keys is not None:
            keys.append(key)
    return out


_STICKY = attrgetter("variant", "sticky")


def sticky_column(variants: tuple[str, ...]) -> pl.Expr:
    """`gives_sticky` as a column."""
    return USER & pl.col("variant").is_in(list(variants))


# -- values ----------------------------------------------------------------------------------------
VALUE_DIGITS = 4  # ΔS and coverage are counted per value rounded to 1e-4: at most 10,001 values


def rounded(value: float) -> float:
    """A ΔS or coverage value as counted (Python's rounding; column summaries round each group's)."""
    return round(value, VALUE_DIGITS)


__all__ = ["ADMITTED", "ERROR", "KIND_OF_FIELD", "LABELS", "LABEL_FIELDS", "LABEL_KINDS", "PING",
           "PINGS", "POPULATION", "POPULATIONS", "POPULATION_FIELDS", "PROBE", "PROBES", "PROBE_LABELS",
           "ROWS", "USER", "USERS", "VALUE_DIGITS", "error_class", "error_phase", "gives_sticky", "is_error",
           "is_ping", "is_probe", "is_user", "label_rows_of_users", "population_of", "probes_of", "rounded",
           "sticky_column", "sticky_keys", "users_of"]
