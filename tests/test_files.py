"""JSONL sources: the stdin reader, and a stdin run stopped by SIGTERM / Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

from pipeline import scenarios
from pipeline.io.files import _PipeReader


def _drain(reader: _PipeReader, n: int = 3, timeout: float = 10) -> list[bytes]:
    """Every line the reader delivers until its end, read n at a time."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines, done = reader.read(n)
        assert len(lines) <= n
        got += lines
        if done:
            return got
    raise AssertionError(f"no end of input after {timeout} s; read {got!r}")


def test_pipe_reader_rebuilds_lines_split_across_writes() -> None:
    read_end, write_end = os.pipe()
    reader = _PipeReader(read_end)
    try:
        # A line split over three writes, blank lines, CRLF, and a last line with no newline.
        for piece in (b'{"a":', b"1", b'}\nsecond\n\n', b"third\r\n", b"x" * 200_000, b"\nlast"):
            os.write(write_end, piece)
            time.sleep(0.01)
        os.close(write_end)
        assert _drain(reader) == [b'{"a":1}', b"second", b"", b"third\r", b"x" * 200_000, b"last"]
    finally:
        reader.stop()
        os.close(read_end)


def test_pipe_reader_skips_lines_already_read_and_ends_on_an_empty_pipe() -> None:
    read_end, write_end = os.pipe()
    reader = _PipeReader(read_end, skip=2)
    try:
        os.write(write_end, b"one\ntwo\nthree\n")
        os.close(write_end)
        assert _drain(reader) == [b"three"]
    finally:
        reader.stop()
        os.close(read_end)


def test_pipe_reader_stops_while_the_pipe_stays_open() -> None:
    read_end, write_end = os.pipe()
    reader = _PipeReader(read_end)
    try:
        os.write(write_end, b"only\n")
        assert _drain_some(reader) == [b"only"]
        started = time.monotonic()
        reader.stop()
        assert not reader.thread.is_alive()
        assert time.monotonic() - started < 1.0
    finally:
        os.close(write_end)
        os.close(read_end)


def _drain_some(reader: _PipeReader, timeout: float = 10) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines, done = reader.read(10)
        assert not done
        if lines:
            return lines
    raise AssertionError("nothing read")


def _stop_a_stdin_run(tmp_path: Path, sig: signal.Signals, data: bytes, config: Path) -> None:
    """Feed stdin and keep it open, wait for a verdict, send `sig`: exit 0, summary, outputs whole."""
    verdicts = tmp_path / "v.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "-",
         "--verdicts", str(verdicts), "--dead-letters", str(tmp_path / "d.jsonl"), "--board", "off"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()  # and left open: the reader thread waits for more
        deadline = time.monotonic() + 60
        while not (verdicts.exists() and verdicts.read_bytes().endswith(b"\n")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no verdict within 60 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 0, f"{sig.name}: exit {code}\n{err}"
    assert "Fatal Python error" not in err, err
    assert err.strip().splitlines()[-1].startswith("canary-gate: stopped: "), err
    records = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert records and all(r["rollout"] == "chat-rag-v2" for r in records)
    assert (tmp_path / "d.jsonl").read_bytes().count(b"\n") == 1  # the bad line, flushed whole


def test_sigterm_and_ctrl_c_stop_a_stdin_run_with_exit_0(tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    data = b"\n".join(scenarios.generate("healthy", 1, 3)) + b"\nnot json\n"
    for attempt in range(10):  # the crash this guards against came on most stops, not all
        sig = signal.SIGTERM if attempt % 2 == 0 else signal.SIGINT
        run_dir = tmp_path / f"try{attempt}"
        run_dir.mkdir()
        _stop_a_stdin_run(run_dir, sig, data, config)
