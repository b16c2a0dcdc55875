"""Memory of the engine state at 1,000 variant x region keys x 60 windows of horizon.

Feeds synthetic events (2 variants x 500 regions, warm and cold, ~30 events per
key per window) through 61 one-minute windows with a 60-minute horizon, then
prints the resident-set growth of the process and the pickled state size.
Target: <= 300 MB.  Usage: .venv/bin/python bench/memory.py [--keys 1000] [--per-key 30]
       .venv/bin/python bench/memory.py --grid --per-key 3   # keys x windows table
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config as config_mod  # noqa: E402
from pipeline.aggregate.partial import summarize  # noqa: E402
from pipeline.engine import Engine  # noqa: E402
from pipeline.model import DecodeError, Event  # noqa: E402

START = 1_756_274_400.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _config(keys: int, horizon: int = 60) -> config_mod.Config:
    return config_mod.parse(f"""
[rollout]
name = "memory"
control = "control"
canary = "canary"
stage = "50%"
[windows]
size_s = 60
horizon_s = {60 * horizon}
[limits]
max_label_values = {keys}
""")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _grid(per_key: int) -> None:
    """One fresh process per cell, so each peak RSS is its own."""
    print(f"peak RSS in MB ({per_key} events per key per window, horizon + 1 windows fed)")
    print(f"{'keys':>8} " + " ".join(f"{f'{w} windows':>12}" for w in (10, 60, 240)))
    for keys in (10, 100, 1000, 10000):
        cells = []
        for windows in (10, 60, 240):
            res = subprocess.run([sys.executable, __file__, "--keys", str(keys), "--per-key", str(per_key),
                                  "--windows", str(windows + 1), "--horizon", str(windows)],
                                 capture_output=True, text=True, check=True)
            m = re.search(r"peak RSS\s+([\d.]+) MB", res.stdout)
            cells.append(f"{float(m.group(1)) if m else float('nan'):>12.0f}")
        print(f"{keys:>8} " + " ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000, help="variant x region keys")
    ap.add_argument("--per-key", type=int, default=30, help="events per key per window")
    ap.add_argument("--windows", type=int, default=61)
    ap.add_argument("--horizon", type=int, default=60, help="windows kept in the horizon")
    ap.add_argument("--grid", action="store_true",
                    help="peak RSS over keys (10..10k) x horizon windows (10, 60, 240), one process each")
    args = ap.parse_args()
    if args.grid:
        _grid(args.per_key)
        return
    rng = random.Random(1)
    regions = [f"region-{i:04d}" for i in range(args.keys // 2)]
    engine = Engine(_config(args.keys, args.horizon))
    gc.collect()
    base = _rss_mb()
    started = time.perf_counter()
    fed = 0
    for w in range(args.windows):
        batch = []
        for region in regions:
            for variant in ("control", "canary"):
                for j in range(args.per_key):
                    ts = START + w * 60 + rng.random() * 60
                    cold = j % 20 == 0
                    lat = rng.lognormvariate(7.0, 0.5) * (4 if cold else 1)
                    batch.append(Event(ts, "chat.rag.answer", variant, f"s{j}", region, cold, False, None,
                                       lat * 0.1, lat * 0.3, lat, 200, None, False, None, None, None,
                                       None, None, -1, None, None, 0, 0, None, None))
        batch.sort(key=lambda e: e.ts)
        for i in range(0, len(batch), 5000):  # the dataflow's path: summarise per chunk, then judge
            chunk: list[Event | DecodeError] = list(batch[i : i + 5000])
            part = summarize(chunk, 60.0, ("control", "canary"))
            assert part is not None
            engine.feed_partial(part, "0", lambda chunk=chunk: chunk)  # type: ignore[misc]
        fed += len(batch)
    gc.collect()
    grown = _rss_mb() - base
    peak = _peak_mb()  # before pickling: the pickle buffer below is the benchmark's, not the engine's
    state = len(pickle.dumps(engine))
    elapsed = time.perf_counter() - started
    print(f"keys (variant x region)     {args.keys:>10,}")
    print(f"windows fed / in horizon    {args.windows:>10} / {engine.n}")
    print(f"events                      {fed:>10,}   ({fed / elapsed:,.0f} ev/s)")
    print(f"latency keys in horizon     {len(engine.horizon.latency):>10,}")
    print(f"RSS growth                  {grown:>10.1f} MB")
    print(f"pickled state               {state / 2**20:>10.1f} MB")
    print(f"peak RSS                    {peak:>10.1f} MB   (target <= 300 MB)")


if __name__ == "__main__":
    main()
