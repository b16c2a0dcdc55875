"""Judging every gate over a horizon, and the decision (docs/gates.md, "The decision")."""

from __future__ import annotations

from pipeline.aggregate.stats import WindowStats
from pipeline.config import Config
from pipeline.gates.base import Context, PValues, Scope
from pipeline.gates.registry import REGISTRY, stop_active
from pipeline.model import Decision, GateRow, GateStatus, deciding_rows


def judge(h: WindowStats, cfg: Config, evidence: PValues, ctx: Context | None = None) -> tuple[GateRow, ...]:
    """Every row of every gate over the horizon `h`, the ratio and rate gates weighed with `evidence`.

    A row's `hard_stop` is set here, for every gate alike: it fails, its own
    stop condition holds, and the stage is at or past the gate's `stop_from`.
    """
    ctx = ctx or Context()
    rows: list[GateRow] = []
    for gate in REGISTRY:
        active = gate.stops_at(cfg.stage)
        for r in gate.judge(Scope(gate.name, h, cfg, evidence, ctx)):
            if r.region is not None and not gate.per_region:
                raise ValueError(f"gate {gate.name} is not per region, got a row for {r.region!r}")
            rows.append(GateRow(
                gate=gate.name, status=r.status, region=r.region,
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
