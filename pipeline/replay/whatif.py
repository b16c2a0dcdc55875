"""What-if: re-judge the kept windows of a replay under other thresholds, and say what changes."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import config as config_mod
from pipeline.aggregate.stats import (
    ClosedWindow,
    WindowStats,
)
from pipeline.config import Config
from pipeline.gates import Context
from pipeline.judgement import Judgement
from pipeline.model import Verdict, format_time


def rejudge(cfg: Config, kept: Sequence[tuple[int, ClosedWindow, Context]]) -> Iterator[Verdict]:
    """The verdicts of the kept windows under `cfg` (other thresholds, stage or sustain).

    The horizon is rebuilt window by window as the engine builds it (merge the
    closing window, subtract the one that falls out), and every window is
    judged and decided by the same functions.
    """
    horizon = WindowStats.new()
    history: deque[ClosedWindow] = deque()
    n = cfg.windows.horizon_windows
    judgement = Judgement(cfg.stage)
    for wid, closed, ctx in kept:
        horizon.merge(closed)
        history.append(closed)
        if len(history) > n:
            horizon.subtract(history.popleft())
        yield judgement.verdict(cfg, wid, closed, horizon, ctx)


def first_stop(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The first verdict that says stop."""
    return next((v for v in verdicts if v.decision == "stop"), None)


def gate_states(verdict: Verdict) -> dict[tuple[str, str | None], str]:
    """(gate, region) -> status of one verdict."""
    return {(row.gate, row.region): str(row.status) for row in verdict.gates}


# -- what-if -----------------------------------------------------------------------------------------

WHAT_IF_TABLES = {"thresholds", "promotion", "rollout"}  # rollout: its stage only


def what_if_config(base_text: str, text: str) -> Config:
    """The rollout config with a what-if file's [thresholds], [promotion] and rollout.stage over it.

    Raises ConfigError naming the key that is not allowed or not valid.
    """
    doc = config_mod.read_toml(base_text)
    alt = config_mod.read_toml(text)
    for table, values in alt.items():
        if table not in WHAT_IF_TABLES or not isinstance(values, dict):
            raise config_mod.ConfigError(table, "a what-if file sets [thresholds], [promotion] and "
                                         "rollout.stage only (windows and limits shape the aggregates)")
        if table == "rollout" and set(values) - {"stage"}:
            key = sorted(set(values) - {"stage"})[0]
            raise config_mod.ConfigError(f"rollout.{key}", "a what-if file may change rollout.stage only")
        merged = dict(doc.get(table, {}))
        merged.update(values)
        doc[table] = merged
    return config_mod.parse_doc(doc)


def config_changes(base: Config, alt: Config) -> dict[str, tuple[Any, Any]]:
    """Settings that differ, as dotted keys -> (base value, what-if value)."""
    def flat(cfg: Config) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for table, values in cfg.effective().items():
            if isinstance(values, dict):
                out.update({f"{table}.{k}": v for k, v in values.items()})
            else:
                out[table] = values
        return out

    a, b = flat(base), flat(alt)
    return {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}


@dataclass(frozen=True, slots=True)
class Flip:
    """A gate row whose status differs under the what-if, over a run of windows."""

    gate: str
    region: str | None
    base: str
    alt: str
    first: float  # window_end of the first window where it flips
    windows: int


def compare(base: Sequence[Verdict], alt: Sequence[Verdict]) -> tuple[Counter[tuple[str, str]], list[Flip]]:
    """Decision changes ((base, alt) -> windows) and gate flips between two timelines of the same windows."""
    decisions: Counter[tuple[str, str]] = Counter()
    flips: dict[tuple[str, str | None, str, str], list[float]] = {}
    for a, b in zip(base, alt, strict=True):
        if a.decision != b.decision:
            decisions[(str(a.decision), str(b.decision))] += 1
        before, after = gate_states(a), gate_states(b)
        for key in dict.fromkeys([*before, *after]):
            old, new = before.get(key, "absent"), after.get(key, "absent")
            if old != new:
                flips.setdefault((*key, old, new), []).append(b.window_end)
    out = [Flip(gate, region, old, new, ends[0], len(ends))
           for (gate, region, old, new), ends in flips.items()]
    return decisions, sorted(out, key=lambda f: (f.first, f.gate, f.region or ""))


def describe(name: str, changes: dict[str, tuple[Any, Any]], base: Sequence[Verdict],
             alt: Sequence[Verdict]) -> tuple[str, dict[str, Any]]:
    """What changes under a what-if: text for the terminal and a record for the report."""
    decisions, flips = compare(base, alt)
    was, now = first_stop(base), first_stop(alt)

    def when(v: Verdict | None) -> str:
        return format_time(v.window_end) if v else "never"

    lines = [f"what-if {name}: " + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
                                    or "no setting differs")]
    lines.append(f"  first stop: {when(now)}" + ("" if when(now) == when(was) else f" (replay: {when(was)})"))
    if decisions:
        moved = ", ".join(f"{a} -> {b} {n}" for (a, b), n in decisions.most_common())
        lines.append(f"  decisions: {sum(decisions.values())} of {len(alt)} windows change ({moved})")
    else:
        lines.append(f"  decisions: none of {len(alt)} windows change")
    for f in flips[:20]:
        where = f"{f.gate} {f.region}" if f.region else f.gate
        lines.append(f"  flips: {where} {f.base} -> {f.alt} in {f.windows} windows "
                     f"from {format_time(f.first)}")
    if len(flips) > 20:
        lines.append(f"  ... and {len(flips) - 20} more gate flips")
    record = {
        "name": name,
        "changes": {k: [a, b] for k, (a, b) in changes.items()},
        "first_stop": {"base": was and format_time(was.window_end),
                       "alt": now and format_time(now.window_end)},
        "decisions_changed": sum(decisions.values()),
        "flips": [{"window_end": format_time(f.first), "gate": f.gate, "region": f.region, "base": f.base,
                   "alt": f.alt, "windows": f.windows} for f in flips],
    }
    return "\n".join(lines), record


__all__ = ["Flip", "compare", "config_changes", "describe", "first_stop", "gate_states", "rejudge",
           "what_if_config"]
