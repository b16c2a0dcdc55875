"""Sticky keys routed to both variants (docs/gates.md, `sticky_flip`): a warning, never a failure."""

from __future__ import annotations

from pipeline.gates.base import Gate, Row, Scope
from pipeline.model import GateStatus


def sticky_flip(s: Scope) -> list[Row]:
    """Warns when a sticky key was seen on both variants; skipped at shadow, where all traffic is mirrored."""
    if s.cfg.stage == "shadow":
        return [Row(GateStatus.SKIPPED, "all traffic is mirrored at shadow")]
    note = (f"; {s.ctx.sticky_untracked} keys past the tracking bound not checked"
            if s.ctx.sticky_untracked else "")
    k = s.ctx.sticky_both_count
    if k:
        sample = ", ".join(repr(key) for key in s.ctx.sticky_both[:5])
        return [Row(GateStatus.WARN, f"{k} sticky keys seen on both variants (e.g. {sample}){note}",
                    observed=k, threshold=0)]
    return [Row(GateStatus.PASS, f"no sticky key seen on both variants{note}", observed=0, threshold=0)]


STICKY_FLIP = Gate("sticky_flip", stop_from=None, settings=("rollout.stage",), per_region=False,
                   judge=sticky_flip)
