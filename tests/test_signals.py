"""Signals from a run's first moment, config reloads in any encoding, what a stop reports (issue 15)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline import scenarios

pytestmark = pytest.mark.integration  # every test signals a `canary-gate run` subprocess

CONFIG = scenarios.scenario_config("healthy")


def _events(tmp_path: Path, minutes: int = 40) -> Path:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        path.write_bytes(b"\n".join(scenarios.generate("healthy", 7, minutes)) + b"\n")
    return path


def _start(tmp_path: Path, *extra: str, config: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    if config is None:
        config = tmp_path / "rollout.toml"
        config.write_text(CONFIG)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config),
         "--source", str(_events(tmp_path)),
         "--verdicts", str(tmp_path / "v.jsonl"), "--dead-letters", str(tmp_path / "dl.jsonl"), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def _caught(pid: int, sig: int, timeout: float = 10) -> None:
    """Wait until process `pid` has a handler for `sig` (its /proc status SigCgt mask).

    The handler must be there before the slow part of start-up: Bytewax's
    native module is not yet loaded when the handler first shows.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            maps = Path(f"/proc/{pid}/maps").read_text()
        except FileNotFoundError:
            break
        m = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
        if m and int(m.group(1), 16) >> (sig - 1) & 1:
            assert "_bytewax" not in maps, f"signal {sig} caught only after Bytewax was loaded"
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} never caught signal {sig}")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.5, 0.8])
def test_sigterm_at_any_moment_of_start_up_stops_cleanly_with_exit_0(tmp_path: Path, delay: float) -> None:
    proc = _start(tmp_path, "--recovery-dir", str(tmp_path / "rec"))
    _caught(proc.pid, signal.SIGTERM)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # never 143 (killed by the default action)
    assert re.search(r"canary-gate: (stopped before the run started|stopped: \d+ events|\d+ events)",
                     err), err


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3, 0.6])
def test_sighup_during_start_up_is_a_reload_not_a_death(tmp_path: Path, delay: float) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(CONFIG)
    proc = _start(tmp_path, config=config)
    _caught(proc.pid, signal.SIGHUP)
    time.sleep(delay)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err  # never 129
    assert re.search(r"\d+ verdicts", err), err


def test_a_non_utf8_config_is_one_line_at_start_and_not_reloaded_on_sighup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(CONFIG.encode().replace(b'name = "', b'name = "caf\xe9-', 1))
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(bad), "--source",
                          str(_events(tmp_path)), "--verdicts", str(tmp_path / "x.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"canary-gate: config error: {bad}: not UTF-8 text: byte 0xe9 on line 3 "
                                  "(save the file as UTF-8)"), res.stderr
    # A live run: paused at its 3rd chunk so the reload lands mid-run by construction.
    config = tmp_path / "rollout.toml"
    config.write_text(CONFIG)
    proc = _start(tmp_path, "--batch-size", "2000", config=config,
                  env={"CANARY_GATE_FAILPOINT": "chunk:3:pause"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "failpoint chunk:3: paused" in line:
            break
    config.write_bytes(bad.read_bytes())
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)  # then stop: the paused judge cannot finish by itself
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert f"SIGHUP: config not reloaded: {config}: not UTF-8 text: byte 0xe9 on line 3" in err, err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err, err
    assert proc.returncode == 130, err  # the stop, not the reload, ended it


def test_a_forced_stop_says_truthfully_that_no_snapshot_exists(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    proc = _start(tmp_path, "--recovery-dir", str(rec), "--snapshot-interval", "60",
                  env={"CANARY_GATE_FAILPOINT": "chunk:2:pause"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "failpoint chunk:2: paused" in line:
            break
    proc.send_signal(signal.SIGTERM)  # graceful: cannot finish, the judge is stuck
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # the second: at once
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"stopped at once before any snapshot: the next run with {rec} starts afresh" in err, err
    assert "open windows wait" not in err
