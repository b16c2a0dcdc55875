"""Which requests each statistic counts: the populations, defined once.

Every event is exactly one of:

* a **ping**: `x_warm` is true (warm-up traffic; counted per variant and
  region, never in the SLO math, whatever else it carries);
* a **probe**: not a ping, and it names a probe question (ΔS, coverage and λ
  come from probes; they are not user traffic);
* a **user request**: neither.  Latency, errors, 5xx classes, index
  observations, cache blocks and sticky keys are taken over user requests.

Each definition has a scalar form (on a decoded `Event`, for the stream's
per-event paths) and a column form (a polars expression over `frame.SCHEMA`,
for the column-wise summaries), side by side, so the two cannot drift apart.
"""

from __future__ import annotations

import polars as pl

from pipeline.model import Event


def is_ping(e: Event) -> bool:
    """A warm-up ping."""
    return e.x_warm


def is_probe(e: Event) -> bool:
    """A quality probe (not a ping)."""
    return not e.x_warm and e.probe_question is not None


def is_user(e: Event) -> bool:
    """A user request: neither a ping nor a probe."""
    return not e.x_warm and e.probe_question is None


PING = pl.col("x_warm")
PROBE = ~pl.col("x_warm") & pl.col("probe_question").is_not_null()
USER = ~pl.col("x_warm") & pl.col("probe_question").is_null()


def is_error(status: int) -> bool:
    """A user request with this status counts as an error (5xx)."""
    return status >= 500


ERROR = pl.col("status") >= 500


def error_class(status: int, phase: str | None) -> tuple[int, str]:
    """The 5xx class of an error: its status and failure phase ("none" when absent)."""
    return status, phase or "none"


__all__ = ["ERROR", "PING", "PROBE", "USER", "error_class", "is_error", "is_ping", "is_probe", "is_user"]
