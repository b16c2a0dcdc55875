"""Smoke runs of the benchmarks: tiny sizes, proving the scripts still work (figures are not judged)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("throughput.py", ["--events", "20000", "--rounds", "1"], r"b/a \d+\.\d+\s+c/a \d+\.\d+"),
        ("memory.py", ["--keys", "20", "--per-key", "5", "--windows", "12"], r"RSS growth\s+-?\d+\.\d MB"),
        ("kafka_throughput.py", ["--events", "20000", "--partitions", "2", "--rounds", "1"],
         r"b/a \d+\.\d+\s+c/b \d+\.\d+"),
        ("replay.py", ["--events", "20000", "--rounds", "1", "--core-events", "5000"],
         r"b/a \d+\.\d+\s+b/c \d+\.\d+"),
        ("fleet.py", ["--rollouts", "3", "--events", "6000", "--rounds", "1", "--batch", "1000",
                      "--fleet-batch", "2000"], r"at equal batches: core \d+\.\d+"),
        ("judgement.py", ["--seeds", "1", "--detect-seeds", "1", "--rate", "1"],
         r"false hard stops \d+/24 .*\n(.*\n)*.*warm p95 x2, sigma 0.8 +at 10%"),
    ],
)
def test_benchmark_script_runs(script: str, args: list[str], expect: str) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(expect, res.stdout), res.stdout
