"""Scenario streams at production-like load for the benchmarks, generated once and cached."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import scenarios  # noqa: E402

DATA = ROOT / "bench" / "data"
# Production-like load: ~300 user requests/s per variant and region, so a 60 s
# window holds ~100k events and per-window costs weigh as they would live.
SCALE = 100.0


def lines_file(scenario: str, events: int) -> Path:
    """A JSONL file of the first `events` events of `scenario` at SCALE (cached under bench/data)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{scenario}-{events}-x{SCALE:g}.jsonl"
    if not path.exists():
        per_minute = sum(1 for _ in scenarios.generate(scenario, 1, 2, traffic_scale=SCALE)) / 2
        minutes = max(1, int(events / per_minute) + 1)
        print(f"generating {events:,} events of {scenario} ({minutes} min of traffic)...", flush=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for n, line in enumerate(scenarios.generate(scenario, 1, minutes, traffic_scale=SCALE)):
                if n >= events:
                    break
                f.write(line + b"\n")
        tmp.rename(path)
    return path
