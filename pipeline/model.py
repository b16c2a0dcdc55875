"""Plain data shared by the pure core: stages, statuses, events, gate rows and verdicts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import msgspec

LADDER: tuple[str, ...] = ("shadow", "1%", "5%", "10%", "25%", "50%", "100%")


def stage_rank(stage: str) -> int:
    """Position of a stage on the ladder (shadow is 0)."""
    try:
        return LADDER.index(stage)
    except ValueError:
        raise ValueError(f"stage must be one of {list(LADDER)}, got {stage!r}") from None


class GateStatus(enum.StrEnum):
    """Outcome of one gate row."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIPPED = "skipped"
    INSUFFICIENT_DATA = "insufficient_data"

    @property
    def severity(self) -> int:
        """Rank used to pick a per-region gate's worst row (higher is worse)."""
        return _SEVERITY[self]

    @property
    def clean(self) -> bool:
        """True for statuses that never block promotion."""
        return self in (GateStatus.PASS, GateStatus.WARN, GateStatus.SKIPPED)


_SEVERITY = {
    GateStatus.PASS: 0,
    GateStatus.SKIPPED: 1,
    GateStatus.WARN: 2,
    GateStatus.INSUFFICIENT_DATA: 3,
    GateStatus.FAIL: 4,
}


class Decision(enum.StrEnum):
    """What rollout automation should do after a window closes."""

    STOP = "stop"
    INSUFFICIENT_DATA = "insufficient_data"
    PROMOTE = "promote"
    HOLD = "hold"


class DeadLetterReason(enum.StrEnum):
    """Why an input message was diverted from the gates."""

    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    TOO_LARGE = "too_large"
    FUTURE = "future"
    LATE = "late"
    AMBIGUOUS_ROLLOUT = "ambiguous_rollout"  # fleet mode: the event matches two rollouts' [match]


# Reasons that count against a variant in the schema_violations gate.
MALFORMED_REASONS = frozenset(
    {DeadLetterReason.INVALID_JSON, DeadLetterReason.SCHEMA, DeadLetterReason.TOO_LARGE}
)

LAMBDA_STATES: tuple[str, ...] = ("→", "←", "<>", "×")
LAMBDA_CONVERGENT = 0  # index of "→" in LAMBDA_STATES


class Event(msgspec.Struct, gc=False):
    """One decoded telemetry event (schema v1), aliases already resolved.

    A msgspec struct without GC tracking: built once per event, it costs a
    third of a slotted dataclass.

    `ts` is event time in seconds since the Unix epoch (UTC).  `lambda_state`
    is an index into LAMBDA_STATES or -1 when absent.
    """

    ts: float
    route: str
    variant: str
    sticky: str
    region: str
    cold_start: bool
    x_warm: bool
    request_id: str | None
    tffb: float
    tusable: float
    tfinal: float
    status: int
    failure_phase: str | None
    has_retrieval: bool
    index_hash: str | None
    metric: str | None
    analyzer: str | None
    delta_s: float | None
    coverage: float | None
    lambda_state: int
    probe_question: str | None
    probe_topic: str | None
    probe_paraphrase: int
    probe_seed: int
    cache_prefix: str | None
    cache_hit: bool | None
    x_exp: str | None = None  # the experiment id from the edge: which rollout of a fleet (docs/fleet.md)
    raw: bytes = b""  # the original message, for the dead-letter output


@dataclass(frozen=True, slots=True)
class DecodeError:
    """A message that could not become an Event, with why."""

    raw: bytes
    reason: DeadLetterReason
    detail: str
    variant: str | None = None
    ts: float | None = None  # event time, when still readable (places it in its own window)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message diverted to the dead-letter output."""

    raw: bytes
    reason: DeadLetterReason
    detail: str
    variant: str | None = None
    source: str | None = None  # where the message came from, e.g. "file:3" or "topic/2@17"
    # The original Kafka message's key, timestamp (ms since the epoch) and headers: the dead-letter
    # message keeps the key and headers (so it partitions alike and can be re-driven) and names the time.
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def __setstate__(self, state: list[Any]) -> None:
        # Dead letters pickled before the key, timestamp and headers hold five values (the pickled
        # state is the list of field values); the fields added since take their defaults.
        values = iter(state)
        for f in fields(self):
            object.__setattr__(self, f.name, next(values, f.default))

    def to_record(self) -> dict[str, Any]:
        """JSON-able record: the original line and why it was diverted."""
        return {
            "reason": str(self.reason),
            "detail": self.detail,
            "variant": self.variant,
            "source": self.source,
            "line": self.raw.decode("utf-8", errors="replace"),
        }


@dataclass(frozen=True, slots=True)
class GateRow:
    """One row of one gate in a verdict."""

    gate: str
    status: GateStatus
    region: str | None
    observed: float | None
    threshold: float | None
    hard_stop: bool
    canary_n: int
    control_n: int
    reason: str
    # Anytime-valid p-value of the gate's sequential test (docs/gates.md); None for gates without one.
    p_value: float | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> GateRow:
        """A row read back from its JSON record (a verdicts file)."""
        return cls(record["gate"], GateStatus(record["status"]), record["region"], record["observed"],
                   record["threshold"], record["hard_stop"], record["canary_n"], record["control_n"],
                   record["reason"], record.get("p_value"))

    @property
    def described(self) -> str:
        """The reason prefixed with gate and region, as the verdict's `reasons` list it."""
        where = f"{self.gate} {self.region}" if self.region else self.gate
        return f"{where}: {self.reason}"

    def to_record(self) -> dict[str, Any]:
        """JSON-able record per SPEC section 4."""
        return {
            "gate": self.gate,
            "status": str(self.status),
            "region": self.region,
            "observed": self.observed,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "hard_stop": self.hard_stop,
            "canary_n": self.canary_n,
            "control_n": self.control_n,
            "reason": self.reason,
        }


def gate_status(rows: tuple[GateRow, ...], gate: str) -> GateStatus | None:
    """Overall status of a gate: its worst row (per-region gates: worst judged region); None: no row."""
    statuses = [r.status for r in deciding_rows(rows) if r.gate == gate]
    return max(statuses, key=lambda s: s.severity) if statuses else None


def deciding_rows(rows: tuple[GateRow, ...]) -> tuple[GateRow, ...]:
    """The rows a decision and a gate's overall status rest on.

    A region short of data is reported (`insufficient_data`) but does not hold
    back a per-region gate that other regions give enough data to judge: a
    region with a trickle of canary traffic does not keep the whole rollout
    waiting.  A per-region gate with no region judged stays insufficient.
    """
    judged = {r.gate for r in rows if r.region is not None and r.status is not GateStatus.INSUFFICIENT_DATA}
    return tuple(r for r in rows if r.gate not in judged or r.region is None
                 or r.status is not GateStatus.INSUFFICIENT_DATA)


def format_time(epoch_s: float) -> str:
    """RFC 3339 UTC with a Z suffix, whole seconds when exact."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    if moment.microsecond:
        return moment.isoformat().replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement made when one window closes."""

    rollout: str
    stage: str
    window_end: float
    decision: Decision
    gates: tuple[GateRow, ...]
    # A stop latched earlier in the stage, in words (first stop and its window); None otherwise.
    latch: str | None = None

    @property
    def id(self) -> str:
        """Stable id: the same window re-judged after a restart has the same id."""
        return f"{self.rollout}/{format_time(self.window_end)}"

    @property
    def reasons(self) -> list[str]:
        """Reasons of every row that is not a pass, prefixed with gate and region (a latched stop first)."""
        out = [self.latch] if self.latch else []
        return out + [row.described for row in self.gates if row.status is not GateStatus.PASS]

    def gate_status(self, gate: str) -> GateStatus:
        """Overall status of a gate: its worst row (of a per-region gate, its worst judged region)."""
        status = gate_status(self.gates, gate)
        if status is None:
            raise KeyError(gate)
        return status

    def to_record(self) -> dict[str, Any]:
        """JSON-able verdict record per SPEC section 4."""
        return {
            "id": self.id,
            "rollout": self.rollout,
            "stage": self.stage,
            "window_end": format_time(self.window_end),
            "decision": str(self.decision),
            "gates": [row.to_record() for row in self.gates],
            "reasons": self.reasons,
        }
