"""File outputs that survive crashes, rotation and full disks (issue 15).

Unit tests drive `_LinePartition` directly over real files; the end-to-end
tests run the command line, crash it with a failpoint (CANARY_GATE_FAILPOINT,
pipeline/io/lifecycle.py), tamper with its output as logrotate or a lost page
cache would, and resume it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from pipeline import scenarios
from pipeline.io.files import (
    TAIL_BYTES,
    JsonlSink,
    OutputMismatch,
    OutputState,
    OutputWriteError,
    _LinePartition,
)


def _raw(line: bytes) -> bytes:
    return line


def _part(path: Path | str, resume: OutputState | int | None = None,
          flag: str = "--verdicts") -> _LinePartition:
    return _LinePartition(str(path), _raw, resume, flag)


def _lines(tag: str, n: int, width: int = 40) -> list[bytes]:
    return [f'{{"n":"{tag}-{i}","pad":"{"x" * width}"}}\n'.encode() for i in range(n)]


def _expected_state(content: bytes) -> OutputState:
    tail = content[-TAIL_BYTES:]
    return OutputState(len(content), len(tail), hashlib.sha256(tail).hexdigest())


def _written(path: Path, *batches: list[bytes]) -> OutputState:
    """A partition that writes `batches` to a new file at `path`, snapshots and closes: the state."""
    part = _part(path)
    for batch in batches:
        part.write_batch(batch)
    state = part.snapshot()
    part.close()
    assert isinstance(state, OutputState)
    return state


def _fingerprint(path: Path) -> tuple[bytes, int, int]:
    """The file's bytes, size and modification time: what a refused resume must leave as it was."""
    info = path.stat()
    return path.read_bytes(), info.st_size, info.st_mtime_ns


# -- resume checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["state", "int"])
def test_resume_refuses_a_file_shorter_than_the_snapshot_and_leaves_it_alone(tmp_path: Path,
                                                                             kind: str) -> None:
    path = tmp_path / "v.jsonl"
    state = _written(path, _lines("a", 50), _lines("b", 50))
    with path.open("r+b") as f:  # a lost page cache, or copytruncate and a little written since
        f.truncate(state.position // 3)
    before = _fingerprint(path)
    with pytest.raises(OutputMismatch) as caught:
        _part(path, state if kind == "state" else state.position)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--verdicts {path} is {state.position // 3} bytes but the snapshot in the "
                              f"recovery directory covers {state.position} "), message
    assert "copytruncate" in message and "--recovery-dir" in message
    assert _fingerprint(path) == before, "a refused resume changed the file"
    assert b"\0" not in path.read_bytes()


def test_resume_refuses_a_file_whose_covered_bytes_changed(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    state = _written(path, _lines("a", 200))
    content = path.read_bytes()
    # the same length, one byte different just before the snapshot's end (a rotated file refilled)
    changed = content[: state.position - 10] + b"Z" + content[state.position - 9:]
    path.write_bytes(changed)
    before = _fingerprint(path)
    with pytest.raises(OutputMismatch, match=rf"^--verdicts {re.escape(str(path))} does not hold what the "
                                             rf"snapshot in the recovery directory covers .*before offset "
                                             rf"{state.position} differ"):
        _part(path, state)
    assert _fingerprint(path) == before
    # a longer file that is another file altogether is refused too, before being cut back
    path.write_bytes(b"x" * (state.position + 500))
    before = _fingerprint(path)
    with pytest.raises(OutputMismatch):
        _part(path, state)
    assert _fingerprint(path) == before


def test_resume_cuts_back_lines_written_after_the_snapshot_and_keeps_the_tail_check(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    part = _part(path)
    part.write_batch(_lines("a", 300))  # more than TAIL_BYTES
    state = part.snapshot()
    part.write_batch(_lines("lost", 3))  # after the snapshot: the crash comes before the next one
    kept = path.read_bytes()[: state.position] if isinstance(state, OutputState) else b""
    assert isinstance(state, OutputState) and state.tail_length == TAIL_BYTES
    resumed = _part(path, pickle.loads(pickle.dumps(state)))  # states travel pickled
    resumed.write_batch(_lines("b", 2))  # fewer bytes than TAIL_BYTES: the tail spans both runs
    again = resumed.snapshot()
    assert path.read_bytes() == kept + b"".join(_lines("b", 2))
    assert again == _expected_state(path.read_bytes())
    resumed.write_batch(_lines("lost", 1))
    _part(path, again).close()  # the tail carried over from the file checks out
    assert path.read_bytes() == kept + b"".join(_lines("b", 2))


def test_an_old_integer_state_resumes_with_the_length_check_only(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    state = _written(path, _lines("a", 100))
    content = path.read_bytes()
    path.write_bytes(content.replace(b"a-5", b"A-5") + b"partial line after the snapsh")
    part = _part(path, state.position)  # a snapshot taken before tail hashes: the length is all it has
    part.write_batch(_lines("b", 1))
    again = part.snapshot()
    part.close()
    assert path.read_bytes() == content.replace(b"a-5", b"A-5") + _lines("b", 1)[0]
    assert again == _expected_state(path.read_bytes())  # its tail was read back from the file
    before = _fingerprint(path)
    with pytest.raises(OutputMismatch, match=r" is \d+ bytes but the snapshot in the recovery directory"):
        _part(path, len(before[0]) + 1)
    assert _fingerprint(path) == before


def test_a_file_missing_on_resume_starts_a_new_one_and_says_so(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.jsonl"
    state = _written(path, _lines("a", 10))
    old = path.read_bytes()
    path.rename(tmp_path / "v.jsonl.1")  # rotated by rename while the run was stopped
    part = _part(path, state)
    part.write_batch(_lines("b", 2))
    assert part.snapshot() == _expected_state(b"".join(_lines("b", 2)))
    part.close()
    assert path.read_bytes() == b"".join(_lines("b", 2))
    assert (tmp_path / "v.jsonl.1").read_bytes() == old
    err = capsys.readouterr().err
    assert err == (f"canary-gate: --verdicts {path}: not found; the snapshot covered {state.position} bytes "
                   f"of it (rotated by rename?): starting a new file\n")


# -- durability ----------------------------------------------------------------------------------

def test_snapshot_fsyncs_the_file_before_returning_its_state(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, int]] = []  # (kind, size) of each fsync, when it was made
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "v.jsonl"
    part = _part(path)
    assert synced == [("dir", synced[0][1])], "a new file's directory is synced once"
    data = b"".join(_lines("a", 200))
    part.write_batch(_lines("a", 200))
    assert synced[1:] == [], "no fsync per write"
    state = part.snapshot()
    assert synced[1:] == [("file", len(data))], "the file is synced, whole, before the state is handed out"
    assert state == _expected_state(path.read_bytes())
    assert part.snapshot() == state and len(synced) == 2, "nothing written since: no second fsync"
    part.close()
    # an existing file cut back on resume is not a new directory entry
    synced.clear()
    part = _part(path, state)
    part.write_batch(_lines("b", 1))
    part.snapshot()
    part.close()
    assert [kind for kind, _ in synced] == ["file"]
    # gzip files and standard output are never synced (and still work without a recovery directory)
    synced.clear()
    gz = _part(tmp_path / "v.jsonl.gz")
    gz.write_batch(_lines("c", 3))
    assert gz.snapshot() is None
    gz.close()
    assert synced == []
    import gzip

    assert gzip.decompress((tmp_path / "v.jsonl.gz").read_bytes()) == b"".join(_lines("c", 3))


def test_the_snapshot_state_tracks_the_last_bytes_written(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    part = _part(path)
    for n, width in [(1, 10), (3, 5000), (2, 10), (1, 9000), (40, 30)]:
        part.write_batch(_lines("t", n, width))
        assert part.snapshot() == _expected_state(path.read_bytes())
    part.close()


# -- rotation while running ----------------------------------------------------------------------

def test_rotation_by_rename_while_running_continues_in_a_new_file(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.jsonl"
    part = _part(path)
    part.write_batch(_lines("a", 5))
    part.snapshot()
    path.rename(tmp_path / "v.jsonl.1")  # logrotate without copytruncate
    part.write_batch(_lines("b", 4))
    part.write_batch(_lines("c", 1))
    state = part.snapshot()
    assert (tmp_path / "v.jsonl.1").read_bytes() == b"".join(_lines("a", 5))
    assert path.read_bytes() == b"".join(_lines("b", 4) + _lines("c", 1))
    assert state == _expected_state(path.read_bytes())
    err = capsys.readouterr().err
    assert err == (f"canary-gate: --verdicts {path}: renamed or removed while running: "
                   f"continuing in a new file there\n")
    # logrotate's `create`: a new file is already at the path: it is appended to, not overwritten
    path.rename(tmp_path / "v.jsonl.2")
    path.write_bytes(b"# created by logrotate\n")
    part.write_batch(_lines("d", 2))
    assert path.read_bytes() == b"# created by logrotate\n" + b"".join(_lines("d", 2))
    assert part.snapshot() == _expected_state(path.read_bytes())
    # removed outright: a new file as well
    path.unlink()
    part.write_batch(_lines("e", 1))
    part.close()
    assert path.read_bytes() == _lines("e", 1)[0]
    # a resume from the state taken after the rotation checks the new file
    assert _part(tmp_path / "v.jsonl.2", state).snapshot() == state


# -- write errors --------------------------------------------------------------------------------

def test_a_write_to_a_full_device_fails_naming_the_file() -> None:
    part = _part("/dev/full")
    assert part.snapshot() is None  # not a regular file: no state, no fsync
    with pytest.raises(OutputWriteError) as caught:
        part.write_batch(_lines("a", 3))
    assert str(caught.value) == "--verdicts /dev/full: No space left on device"
    assert caught.value.errno == 28
    # no chained OSError: the command line reports an error's root cause, which must be this one
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    part.close()
    sink = JsonlSink("/dev/full", _raw)  # the old positional form still works; the flag defaults
    with pytest.raises(OutputWriteError, match=r"^output /dev/full: No space left on device$"):
        sink.build_part("out", "0", None).write_batch(_lines("a", 1))


def test_a_resume_onto_dev_null_writes_as_before(tmp_path: Path) -> None:
    part = _part("/dev/null", 12345)  # not a regular file: nothing to check or cut back
    part.write_batch(_lines("a", 2))
    assert part.snapshot() is None
    part.close()


# -- the command line ----------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "rollout.toml"
    config.write_text(scenarios.scenario_config("healthy"))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(scenarios.generate("healthy", 7, 40)) + b"\n")
    return config, source


def _run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
         verdicts: Path | None = None) -> subprocess.CompletedProcess[str]:
    config, source = tmp_path / "rollout.toml", tmp_path / "events.jsonl"
    return _cli("run", "--config", str(config), "--source", str(source),
                "--verdicts", str(verdicts or tmp_path / "v.jsonl"),
                "--dead-letters", str(tmp_path / "dl.jsonl"),
                "--batch-size", "100", "--snapshot-interval", "0.05", *extra, env=env)


def _crash(tmp_path: Path) -> int:
    """A run with a recovery directory, killed mid-way; the verdict bytes its last snapshot covers."""
    res = _run(tmp_path, "--recovery-dir", str(tmp_path / "rec"),
               env={"CANARY_GATE_FAILPOINT": "window_close:25"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    covered = _covered(tmp_path / "rec")
    assert 0 < covered <= (tmp_path / "v.jsonl").stat().st_size
    return covered


def _covered(recovery: Path) -> int:
    """The verdict file length in the recovery directory's newest snapshot (read from Bytewax's store).

    Tests need it to tamper with the file deterministically: whether a snapshot covers
    half the file depends on timing.
    """
    states = []
    for db in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(db) as conn:
            states += conn.execute("SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE "
                                   "'%verdicts_0' AND ser_change IS NOT NULL").fetchall()
    assert states, f"no snapshot of the verdict sink in {recovery}"
    state = pickle.loads(max(states)[1])
    return state.position if isinstance(state, OutputState) else int(state)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_resume_onto_a_truncated_output_fails_naming_it_and_leaves_it_alone(tmp_path: Path) -> None:
    _setup(tmp_path)
    covered = _crash(tmp_path)
    verdicts = tmp_path / "v.jsonl"
    with verdicts.open("r+b") as f:  # copytruncate, or a page cache lost in a machine crash
        f.truncate(covered // 2)
    before = _fingerprint(verdicts)
    res = _run(tmp_path, "--recovery-dir", str(tmp_path / "rec"))
    last = res.stderr.strip().splitlines()[-1]
    assert f"{verdicts} is {covered // 2} bytes but the snapshot in the recovery directory covers " \
           f"{covered} " in last, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert _fingerprint(verdicts) == before, "a refused resume changed the file"
    assert b"\0" not in verdicts.read_bytes()
    # exit 2 (a problem the user must fix, like a recovery directory that does not match the run):
    # pipeline/cli/run.py maps OutputMismatch to it
    assert res.returncode == 2, res.stderr


def test_an_output_rotated_by_rename_between_runs_continues_in_a_new_file(tmp_path: Path) -> None:
    _setup(tmp_path)
    clean = _run(tmp_path, verdicts=tmp_path / "clean.jsonl")
    assert clean.returncode == 0, clean.stderr
    expected = {r["id"]: r for r in _records(tmp_path / "clean.jsonl")}
    covered = _crash(tmp_path)
    verdicts = tmp_path / "v.jsonl"
    verdicts.rename(tmp_path / "v.jsonl.1")
    res = _run(tmp_path, "--recovery-dir", str(tmp_path / "rec"))
    assert res.returncode == 0, res.stderr
    # the flag is named once pipeline/cli/run.py passes it to JsonlSink; "output" until then
    note = (rf"canary-gate: --verdicts {re.escape(str(verdicts))}: not found; the snapshot covered "
            rf"{covered} bytes of it \(rotated by rename\?\): starting a new file")
    assert re.search(note, res.stderr), res.stderr
    got = _records(tmp_path / "v.jsonl.1") + _records(verdicts)
    assert {r["id"] for r in got} == set(expected), "a verdict is missing or unexpected"
    for record in got:  # a verdict written to both files is the same verdict
        assert record == expected[record["id"]], record["id"]
    assert b"\0" not in verdicts.read_bytes()


def _unshare_works() -> str:
    """Why `unshare -rm` (a private mount namespace, as root inside it) cannot mount a tmpfs here, or ''."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                         capture_output=True, text=True, check=False, timeout=30)
    return "" if res.returncode == 0 else f"unshare -rm cannot mount a tmpfs: {res.stderr.strip()}"


def test_a_full_disk_fails_the_run_with_one_line_naming_the_file(tmp_path: Path) -> None:
    problem = _unshare_works()
    assert not problem, problem
    _setup(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    verdicts = small / "v.jsonl"  # ~140 KB of verdicts into a 64 KiB file system
    mount = ("unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1" && shift && exec "$@"',
             "sh", str(small))
    config, source = tmp_path / "rollout.toml", tmp_path / "events.jsonl"
    res = _cli("run", "--config", str(config), "--source", str(source), "--verdicts", str(verdicts),
               "--dead-letters", str(tmp_path / "dl.jsonl"), "--batch-size", "100", prefix=mount)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Errno" not in res.stderr, res.stderr
    assert re.fullmatch(rf"canary-gate: run failed: --verdicts {re.escape(str(verdicts))}: "
                        rf"No space left on device", res.stderr.strip()), res.stderr
