"""Throughput of canary-gate over a generated stream: decode, engine, and the whole `run`.

Prints events/s for each stage measured side by side in one process run, so
ratios are comparable on a noisy machine.  Usage:

    .venv/bin/python bench/throughput.py [--events 1000000] [--scenario healthy]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config as config_mod  # noqa: E402
from pipeline import scenarios  # noqa: E402
from pipeline.codec import decode_batch  # noqa: E402
from pipeline.engine import Engine  # noqa: E402

DATA = ROOT / "bench" / "data"
# Production-like load: ~300 user requests/s per variant and region, so a
# 60 s window holds ~100k events and per-window costs weigh as they would live.
SCALE = 100.0


def _stream(scenario: str, events: int) -> tuple[Path, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{scenario}-{events}-x{SCALE:g}.jsonl"
    cfg = DATA / f"{scenario}.toml"
    cfg.write_text(scenarios.scenario_config(scenario))
    if not path.exists():
        per_minute = sum(1 for _ in scenarios.generate(scenario, 1, 2, traffic_scale=SCALE)) / 2
        minutes = max(1, int(events / per_minute) + 1)
        print(f"generating {events:,} events of {scenario} ({minutes} min of traffic)...", flush=True)
        n = 0
        with open(path.with_suffix(".tmp"), "wb") as f:
            for line in scenarios.generate(scenario, 1, minutes, traffic_scale=SCALE):
                f.write(line + b"\n")
                n += 1
                if n >= events:
                    break
        path.with_suffix(".tmp").rename(path)
    return path, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--scenario", default="healthy", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    path, cfg_path = _stream(args.scenario, args.events)
    cfg = config_mod.load(cfg_path)
    lines = path.read_bytes().splitlines()
    n = len(lines)

    t0 = time.perf_counter()
    batches = [decode_batch(lines[i : i + args.batch]) for i in range(0, n, args.batch)]
    t1 = time.perf_counter()
    engine = Engine(cfg)
    for batch in batches:
        engine.feed(batch)
    engine.close()
    t2 = time.perf_counter()
    out = DATA / "verdicts.jsonl"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg_path), "--source",
                    str(path), "--verdicts", str(out), "--batch-size", str(args.batch)],
                   check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    t3 = time.perf_counter()
    gz = path.with_suffix(".jsonl.gz")
    if not gz.exists():
        gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))

    decode_rate, engine_rate, run_rate = n / (t1 - t0), n / (t2 - t1), n / (t3 - t2)
    print(f"events                      {n:>12,}")
    print(f"decode only                 {decode_rate:>12,.0f} ev/s")
    print(f"engine only (pre-decoded)   {engine_rate:>12,.0f} ev/s")
    print(f"canary-gate run (whole CLI) {run_rate:>12,.0f} ev/s   ({t3 - t2:.1f} s, process start included)")
    print(f"run / decode-only ratio     {run_rate / decode_rate:>12.2f}")


if __name__ == "__main__":
    main()
