"""What a gate is: its declaration (`Gate`), what it sees (`Scope`) and what it returns (`Row`).

A gate is declared once, in the module of its family, as a `Gate`: its name,
the stage from which its failure is a hard stop, the config keys it reads,
whether it judges each region apart, the function that judges it and, for the
gates that fail only on evidence, what one closed window adds to its
sequential test.  The registry (registry.py) lists the declarations in the
order of the verdict's rows.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.aggregate.stats import ClosedWindow, WindowStats
from pipeline.config import Config, Limits, Thresholds, VariantSpec
from pipeline.model import LADDER, GateStatus, stage_rank
from pipeline.sequential import Floats

Sample = tuple[str | None, Floats]  # region (None: all regions), log e-values of one window
Sampler = Callable[[ClosedWindow, Config], Iterator[Sample]]


class PValues(Protocol):
    """The sequential evidence as the gates read it (pipeline.evidence.Evidence)."""

    def p_value(self, gate: str, region: str | None) -> float: ...


@dataclass(frozen=True)
class Context:
    """What the gates need beyond the horizon counters."""

    sticky_both: tuple[str, ...] = ()  # sticky keys seen on both variants (sample)
    sticky_both_count: int = 0
    sticky_untracked: int = 0


# Engines pickled with their kept windows name the class where it has always been imported from.
Context.__module__ = "pipeline.gates"


@dataclass
class Row:
    """One row of a gate as its function returns it; `judge` turns it into a model.GateRow."""

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
class Scope:
    """What one gate judges: the horizon, the config, the sequential evidence and the context."""

    gate: str
    h: WindowStats
    cfg: Config
    evidence: PValues
    ctx: Context = field(default_factory=Context)

    @property
    def canary(self) -> str:
        return self.cfg.canary

    @property
    def control(self) -> str:
        return self.cfg.control

    @property
    def t(self) -> Thresholds:
        return self.cfg.thresholds

    def p_value(self, region: str | None) -> float:
        """This gate's anytime-valid p-value in `region` (None: all regions pooled)."""
        return self.evidence.p_value(self.gate, region)

    def user_regions(self) -> list[str]:
        """Regions where the canary had user requests in the horizon, sorted."""
        return sorted({region for (variant, region) in self.h.c["user"] if variant == self.canary})

    def users(self) -> Counter[str]:
        """User requests per variant, all regions."""
        out: Counter[str] = Counter()
        for (variant, _region), n in self.h.c["user"].items():
            out[variant] += n
        return out

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
        alpha = self.t.alpha
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


# The config keys a gate may declare that it reads, as docs/config.md spells them.
SETTINGS = frozenset(
    [f"thresholds.{f.name}" for f in dataclasses.fields(Thresholds)]
    + [f"limits.{f.name}" for f in dataclasses.fields(Limits)]
    + [f"variants.<name>.{f.name}" for f in dataclasses.fields(VariantSpec)]
    + ["rollout.stage"]
)


@dataclass(frozen=True)
class Gate:
    """One gate, declared once.

    `stop_from`: the first stage of the ladder at which its failure is a hard
    stop (stops are cumulative up the ladder); None: it never stops a rollout.
    `settings`: the config keys its function reads (the control's and
    canary's names aside).  `per_region`: it emits one row per canary region.
    `samples`: for a gate that fails only on evidence, what one closed window
    adds to its sequential test (pipeline/evidence.py).
    """

    name: str
    stop_from: str | None
    settings: tuple[str, ...]
    per_region: bool
    judge: Callable[[Scope], list[Row]]
    samples: Sampler | None = None

    def __post_init__(self) -> None:
        if self.stop_from is not None and self.stop_from not in LADDER:
            raise ValueError(f"gate {self.name}: stop_from must be one of {LADDER} or None, "
                             f"got {self.stop_from!r}")
        unknown = sorted(set(self.settings) - SETTINGS)
        if unknown:
            raise ValueError(f"gate {self.name}: settings names no config key: {unknown}")

    def stops_at(self, stage: str) -> bool:
        """Whether a failure of this gate can be a hard stop at `stage`."""
        return self.stop_from is not None and stage_rank(stage) >= stage_rank(self.stop_from)


def values_of(counter: Counter[tuple[str, float]], variant: str) -> Counter[float]:
    """The value -> count multiset of one variant in a (variant, value) family."""
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
