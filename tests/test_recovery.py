"""The recovery directory's lock, pre-flight check and error texts, on real files and processes (issue 15).

Read-only and full file systems are tmpfs mounts in a user and mount namespace
(`unshare -rm`), so these tests need no privileges beyond user namespaces
(CI runs as root, where they always work); without them the tests fail.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_config

from pipeline import scenarios
from pipeline.io import recovery
from pipeline.io.recovery import RecoveryError

SCENARIO = "schema_violations"
IN_USE = re.compile(r"--recovery-dir (\S+) is in use by another canary-gate run \(pid (\d+), "
                    r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\): stop it, or use another directory$")

# Root-cause texts of runs that Bytewax 0.21 ended, captured from real runs of `canary-gate run`
# (the exception's str; the CLI printed "run failed: RuntimeError: " before it).
REAL = {
    "corrupt": '(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { code: '
               'NotADatabase, extended_code: 26 }, Some("file is not a database"))',
    "read-only": '(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { '
                 'code: ReadOnly, extended_code: 8 }, Some("attempt to write a readonly database"))',
    "full": '(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { code: '
            'DiskFull, extended_code: 13 }, Some("database or disk is full"))',
    "full at init": 'called `Result::unwrap()` on an `Err` value: RusqliteError { query: "", err: '
                    'SqliteFailure(Error { code: DiskFull, extended_code: 13 }, Some("database or disk is '
                    'full")) }',
    "malformed": '(src/run.rs:167:13) error unpacking ExecutionMeta: SqliteFailure(Error { code: '
                 'DatabaseCorrupt, extended_code: 11 }, Some("database disk image is malformed"))',
    "locked": '(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value: SqliteFailure(Error { code: '
              'DatabaseBusy, extended_code: 5 }, Some("database is locked"))',
    "missing": "Missing recovery partitions {PartitionIndex(1)} of 2; can't resume",
    "none": "No recovery partitions found on any worker; can't resume",
}


# -- helpers -------------------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def _run_args(tmp_path: Path, recovery_dir: Path, *extra: str) -> list[str]:
    source = tmp_path / "events.jsonl"
    if not source.exists():
        source.write_bytes(b"\n".join(scenarios.generate("healthy", 7, 40)) + b"\n")
    config = tmp_path / "rollout.toml"
    if not config.exists():
        config.write_text(scenarios.scenario_config(SCENARIO))
    return ["run", "--config", str(config), "--source", str(source), "--verdicts", str(tmp_path / "v.jsonl"),
            "--dead-letters", str(tmp_path / "dl.jsonl"), "--batch-size", "100",
            "--recovery-dir", str(recovery_dir), "--snapshot-interval", "0.05", *extra]


def _file_run(tmp_path: Path, recovery_dir: Path, *extra: str,
              kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    """A real run over a file; with kill_at it SIGKILLs itself at that window, leaving its -wal."""
    env = {"CANARY_GATE_FAILPOINT": f"window_close:{kill_at}"} if kill_at else None
    res = _cli(*_run_args(tmp_path, recovery_dir, *extra), env=env)
    assert res.returncode == (-signal.SIGKILL if kill_at else 0), res.stderr
    return res


def _holder(path: Path, process_id: int = 0) -> subprocess.Popen[str]:
    """Another process that takes lock(path, process_id) and keeps it until killed."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.io.recovery import lock\n"
            "held = lock(Path(sys.argv[1]), int(sys.argv[2]), command='holder')\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(process_id)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "locked\n", proc.stderr.read() if proc.stderr else line
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@functools.cache
def _namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    script = ('d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d"; '
              'r=$?; rmdir "$d"; exit $r')
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", script],
                           capture_output=True, text=True, timeout=30, check=False)
    return probe.returncode == 0


def _in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root of a new user and mount namespace (mounts vanish with it)."""
    assert _namespaces(), "needs unshare -rm (user and mount namespaces)"
    return subprocess.run(["unshare", "-rm", "sh", "-ec", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def _python(code: str) -> str:
    """A shell command running Python code with the repository importable."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def _check_printing(path: Path, workers: int = 1) -> str:
    return _python("import sys\nfrom pathlib import Path\nfrom pipeline.io import recovery\n"
                   f"try:\n    print(recovery.check(Path({str(path)!r}), {workers}))\n"
                   "except recovery.RecoveryError as exc:\n    print(f'ERROR {exc}')\n")


def _run_dict(tmp_path: Path, workers: int = 1) -> dict[str, object]:
    return {"rollout": "r", "workers": workers, "source": str(tmp_path / "events.jsonl"),
            "verdicts": str(tmp_path / "v.jsonl"), "dead_letters": str(tmp_path / "dl.jsonl")}


# -- the lock ------------------------------------------------------------------------------------

def test_a_second_lock_is_refused_naming_the_holder_until_the_holder_is_killed(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RecoveryError) as caught:
            recovery.lock(tmp_path, 0)
        m = IN_USE.match(str(caught.value))
        assert m, caught.value
        assert m.group(1) == str(tmp_path) and int(m.group(2)) == holder.pid
        # another process id of the same directory (a local cluster's follower) is free
        with recovery.lock(tmp_path, 1) as follower:
            assert follower.held
        # a second local cluster collides on lock.0 again
        with pytest.raises(RecoveryError, match="is in use by another canary-gate run"):
            recovery.lock(tmp_path, 0)
    finally:
        _kill(holder)
    # the dead holder's file is left with its pid: it does not block, and is taken over
    assert json.loads((tmp_path / "lock.0").read_text())["pid"] == holder.pid
    with recovery.lock(tmp_path, 0, command="second") as held:
        info = json.loads((tmp_path / "lock.0").read_text())
        assert info["pid"] == os.getpid() and info["command"] == "second"
        assert held.path == tmp_path / "lock.0"
    assert not held.held


def test_a_cluster_holds_one_lock_per_process(tmp_path: Path) -> None:
    first, second = _holder(tmp_path, 0), _holder(tmp_path, 1)
    try:
        for process_id, holder in ((0, first), (1, second)):
            with pytest.raises(RecoveryError) as caught:
                recovery.lock(tmp_path, process_id)
            assert f"(pid {holder.pid}, started " in str(caught.value)
    finally:
        _kill(first)
        _kill(second)


def test_the_lock_is_one_per_open_file_even_in_one_process(tmp_path: Path) -> None:
    with recovery.lock(tmp_path, 0), pytest.raises(RecoveryError, match=f"pid {os.getpid()}, started"):
        recovery.lock(tmp_path, 0)
    recovery.lock(tmp_path, 0).release()


# -- prepare -------------------------------------------------------------------------------------

def test_prepare_creates_locks_then_resumes_or_refuses(tmp_path: Path) -> None:
    cfg = make_config()
    rec = tmp_path / "new" / "rec"
    with recovery.prepare(rec, cfg, _run_dict(tmp_path)) as held:
        assert held.held
        assert sorted(p.name for p in rec.iterdir()) == ["canary-gate.json", "lock.0", "lock.init",
                                                          "part-0.sqlite3"]
        # a second run, even in this process, is refused before it reads anything
        with pytest.raises(RecoveryError, match=r"is in use by another canary-gate run \(pid \d+"):
            recovery.prepare(rec, cfg, _run_dict(tmp_path))
    with recovery.prepare(rec, cfg, _run_dict(tmp_path)):  # the same run resumes
        pass
    with pytest.raises(RecoveryError, match="holds a run with workers 1; this run has workers 2: resume with "
                                            "the same, or use a new directory"):
        recovery.prepare(rec, cfg, _run_dict(tmp_path, workers=2))
    recovery.lock(rec, 0).release()  # a refused run gave its lock back

    with pytest.raises(RecoveryError, match="stdin cannot be read again"):
        recovery.prepare(rec, cfg, {**_run_dict(tmp_path), "source": "-"})
    with pytest.raises(RecoveryError, match="a gzip output cannot be cut back to a snapshot"):
        recovery.prepare(rec, cfg, {**_run_dict(tmp_path), "verdicts": "v.jsonl.gz"})


def test_prepare_changes_nothing_in_a_directory_another_run_holds(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    holder = _holder(rec)  # a run between taking the lock and creating the partitions
    try:
        with pytest.raises(RecoveryError, match=f"pid {holder.pid}"):
            recovery.prepare(rec, make_config(), _run_dict(tmp_path))
        assert [p.name for p in rec.iterdir()] == ["lock.0"]
    finally:
        _kill(holder)
    with recovery.prepare(rec, make_config(), _run_dict(tmp_path)):  # lock files alone are no obstacle
        assert (rec / "part-0.sqlite3").exists()


def test_prepare_leaves_a_foreign_directory_alone(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "notes.txt").write_text("mine")
    with pytest.raises(RecoveryError, match="exists and is not a canary-gate recovery directory"):
        recovery.prepare(rec, make_config(), _run_dict(tmp_path))
    assert [p.name for p in rec.iterdir()] == ["notes.txt"]


def test_prepare_on_a_full_device_fails_in_one_line_and_leaves_no_partition(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    code = ("from pathlib import Path\nimport sys\nsys.path.insert(0, 'tests')\n"
            "from conftest import make_config\nfrom pipeline.io import recovery\n"
            f"rec = Path({str(mount / 'rec')!r})\n"
            "run = {'rollout': 'r', 'workers': 4, 'source': 'e.jsonl', 'verdicts': 'v.jsonl',"
            " 'dead_letters': 'd.jsonl'}\n"
            "try:\n    recovery.prepare(rec, make_config(), run)\n    print('CREATED')\n"
            "except recovery.RecoveryError as exc:\n    print(f'ERROR {exc}')\n"
            "print(sorted(p.name for p in rec.iterdir()))\n")
    res = _in_namespace(f"mount -t tmpfs -o size=64k tmpfs {_q(mount)}\n{_python(code)}")
    assert res.returncode == 0, res.stderr
    assert f"ERROR --recovery-dir {mount / 'rec'}: cannot create: no space left on the device\n" in res.stdout
    assert "['lock.0', 'lock.init']" in res.stdout  # the next run may create it again
    assert "Traceback" not in res.stderr


# -- check ---------------------------------------------------------------------------------------

def test_check_passes_a_healthy_directory_and_leaves_no_files_behind(tmp_path: Path) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _file_run(tmp_path, clean)
    _file_run(tmp_path, crashed, "--workers", "2", kill_at=10)
    for rec, workers in ((clean, 1), (crashed, 2)):
        before = {p.name for p in rec.iterdir()}
        assert recovery.check(rec, workers) == []
        assert {p.name for p in rec.iterdir()} == before | {"snapshots.json"}  # no -wal, -shm made
    assert "part-0.sqlite3-wal" not in os.listdir(clean)  # a clean end folds the log into the database
    assert {"part-0.sqlite3-wal", "part-1.sqlite3-wal"} <= set(os.listdir(crashed))
    epoch = recovery.latest_epoch(crashed)
    assert isinstance(epoch, int) and epoch > 1
    assert json.loads((crashed / "snapshots.json").read_text())["epoch"] == epoch
    # the run resumes from it as if nothing had looked
    assert "resumed from" in _file_run(tmp_path, crashed, "--workers", "2").stderr


def test_check_names_a_corrupted_or_damaged_partition(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec)
    part = rec / "part-0.sqlite3"
    good = part.read_bytes()
    part.write_bytes(os.urandom(len(good)))
    with pytest.raises(RecoveryError) as caught:
        recovery.check(rec, 1)
    assert str(caught.value) == (f"--recovery-dir {rec}: part-0.sqlite3 is not a valid database (file is not "
                                 "a database): restore it or start afresh with a new directory")
    damaged = bytearray(good)
    for offset in range(2 * 4096, len(damaged), 3 * 4096):  # pages, keeping the header
        damaged[offset:offset + 1500] = os.urandom(1500)
    part.write_bytes(bytes(damaged))
    with pytest.raises(RecoveryError, match=r"^--recovery-dir \S+: part-0.sqlite3 is damaged \(.+\): restore "
                                            r"it or start afresh with a new directory$"):
        recovery.check(rec, 1)
    part.write_bytes(b"")  # SQLite reads an empty file as an empty database: not Bytewax's
    with pytest.raises(RecoveryError, match=r"part-0\.sqlite3 is not a Bytewax recovery partition"):
        recovery.check(rec, 1)
    part.unlink()
    with pytest.raises(RecoveryError, match=r"part-0.sqlite3 is missing: restore it or start afresh"):
        recovery.check(rec, 1)


def test_check_refuses_partitions_of_another_layout(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, "--workers", "2")
    shutil.copy(rec / "part-0.sqlite3", rec / "part-2.sqlite3")
    with pytest.raises(RecoveryError, match=r"part-2\.sqlite3 is not a partition of this run"):
        recovery.check(rec, 2)
    shutil.move(rec / "part-2.sqlite3", rec / "part-1.sqlite3")
    with pytest.raises(RecoveryError, match=r"part-1.sqlite3 holds partition 0 of 2, not 1 of 2"):
        recovery.check(rec, 2)


@pytest.mark.parametrize("where", ["file system", "file"])
def test_check_reports_a_read_only_file_system_in_one_line(tmp_path: Path, where: str) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    mount = tmp_path / "mnt"
    mount.mkdir()
    target = mount / "rec"
    part = _q(target / "part-0.sqlite3")
    make_ro = (f"mount -o remount,ro {_q(mount)}" if where == "file system" else
               f"mount --bind {part} {part}\nmount -o remount,bind,ro {part}")
    res = _in_namespace(f"mount -t tmpfs -o size=16m tmpfs {_q(mount)}\ncp -a {_q(rec)} {_q(target)}\n"
                        f"{make_ro}\n{_check_printing(target)}")
    assert res.returncode == 0, res.stderr
    where_text = "" if where == "file system" else "part-0.sqlite3: "
    assert res.stdout == f"ERROR --recovery-dir {target}: {where_text}read-only file system\n", res.stdout


def test_check_reports_a_full_device_in_one_line(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    with recovery.prepare(rec, make_config(), _run_dict(tmp_path)):
        pass
    mount = tmp_path / "mnt"
    mount.mkdir()
    res = _in_namespace(f"mount -t tmpfs -o size=256k tmpfs {_q(mount)}\n"
                        f"cp -a {_q(rec)} {_q(mount / 'rec')}\n{_check_printing(mount / 'rec')}")
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(rf"ERROR --recovery-dir {re.escape(str(mount / 'rec'))}: no space left on the device "
                        r"\(\d+ KiB free, 4\.0 MiB needed\)\n", res.stdout), res.stdout


# -- snapshots lost with a -wal file -------------------------------------------------------------

def test_a_deleted_wal_after_a_crash_is_warned_of(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    assert recovery.latest_epoch(rec) is not None
    (rec / "part-0.sqlite3-wal").unlink()
    assert recovery.check(rec, 1) == [
        f"--recovery-dir {rec}: part-0.sqlite3-wal missing or cut short, and with it snapshots of the last "
        "run (was a -wal file deleted?): starting from the beginning"]
    assert recovery.latest_epoch(rec) is None  # what Bytewax now sees: nothing
    _file_run(tmp_path, rec)  # Bytewax and SQLite say nothing: the run reads from the start
    assert recovery.check(rec, 1) == []  # warned once: the run rebuilt SQLite's index


def test_a_wal_cut_short_is_warned_of(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    wal = rec / "part-0.sqlite3-wal"
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size // 2)
    (warning,) = recovery.check(rec, 1)
    assert "part-0.sqlite3-wal missing or cut short" in warning


def test_snapshots_lost_with_the_wal_and_its_index_are_warned_of_by_the_record(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    assert recovery.check(rec, 1) == []  # the start of the next run records where it resumes
    recorded = json.loads((rec / "snapshots.json").read_text())["epoch"]
    assert isinstance(recorded, int) and recorded == recovery.latest_epoch(rec)
    for suffix in ("-wal", "-shm"):  # and then both files go before the run opens them
        (rec / f"part-0.sqlite3{suffix}").unlink()
    assert recovery.check(rec, 1) == [
        f"--recovery-dir {rec}: no snapshot found although runs were recorded (was a -wal file deleted?): "
        "starting from the beginning"]
    assert recovery.check(rec, 1) == []  # said once


def test_a_watcher_keeps_the_record_up_with_a_running_run(tmp_path: Path) -> None:
    """Snapshots a resumed run made itself, lost with its -wal and -shm after a crash, are noticed."""
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    assert recovery.check(rec, 1) == []
    started = recovery.latest_epoch(rec)
    assert started is not None
    with recovery.watch(rec, 1, every_s=0.02):
        run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *_run_args(tmp_path, rec)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CANARY_GATE_FAILPOINT": "window_close:20:pause"})
        try:
            assert run.stderr is not None
            for line in run.stderr:
                if "paused" in line:
                    break
            deadline = time.monotonic() + 10
            while json.loads((rec / "snapshots.json").read_text())["epoch"] <= started:
                assert time.monotonic() < deadline, "the record did not follow the run"
                time.sleep(0.02)
        finally:
            _kill(run)
    reached = json.loads((rec / "snapshots.json").read_text())["epoch"]
    assert reached > started
    for suffix in ("-wal", "-shm"):
        (rec / f"part-0.sqlite3{suffix}").unlink()
    assert (recovery.latest_epoch(rec) or 0) < reached  # the run's own snapshots went with its log
    (warning,) = recovery.check(rec, 1)
    assert warning.startswith(f"--recovery-dir {rec}: ")
    assert "(was a -wal file deleted?)" in warning
    assert warning.endswith(("starting from the beginning", "resuming from an older snapshot"))


# -- explain -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sample", "expected"), [
    ("corrupt", "a recovery database is not a valid database (file is not a database): restore it or start "
                "afresh with a new directory"),
    ("read-only", "a recovery database is read-only (attempt to write a readonly database): make the "
                  "directory and its files writable, then run again"),
    ("full", "no space left on the device: free some, then run again to resume from the last snapshot"),
    ("full at init", "no space left on the device: free some, then run again to resume from the last "
                     "snapshot"),
    ("malformed", "a recovery database is damaged (database disk image is malformed): restore it or start "
                  "afresh with a new directory"),
    ("locked", "a recovery database is locked by another program (database is locked): stop it, then run "
               "again"),
    ("missing", "part-1.sqlite3 missing (of 2 partitions): restore it or start afresh with a new directory"),
    ("none", "no part-*.sqlite3 partition files in it: restore it or start afresh with a new directory"),
])
def test_explain_turns_real_bytewax_failures_into_one_line(sample: str, expected: str) -> None:
    assert recovery.explain(REAL[sample], Path("/var/rec")) == f"--recovery-dir /var/rec: {expected}"
    assert recovery.explain(REAL[sample]) == f"the recovery directory: {expected}"


@pytest.mark.parametrize("text", [
    "", "boom", "KafkaError{code=_TRANSPORT,val=-195,str=\"Connection refused\"}",
    "(src/run.rs:167:13) error in step canary_gate.judge: ValueError: bad window",
])
def test_explain_leaves_other_failures_alone(text: str) -> None:
    assert recovery.explain(text, "/var/rec") is None


def _failure_line(res: subprocess.CompletedProcess[str]) -> str:
    (line,) = [x for x in res.stderr.splitlines() if "run failed: " in x]
    return line.split("run failed: ", 1)[1]


def test_explain_names_a_disk_that_fills_during_a_real_run(tmp_path: Path) -> None:
    """The run's own stderr, whether or not the CLI already explains it (then check may refuse first)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    args = " ".join(shlex.quote(a) for a in _run_args(tmp_path, mount / "rec"))
    res = _in_namespace(f"mount -t tmpfs -o size=1200k tmpfs {_q(mount)}\n"
                        f"{shlex.quote(sys.executable)} -m pipeline.cli {args} || echo rc=$?")
    assert re.search(r"^rc=[12]$", res.stdout, re.MULTILINE), (res.stdout, res.stderr)
    text = next((x.split(": ", 1)[1] for x in res.stderr.splitlines()
                 if ": error: " in x or "run failed: " in x), "")
    said = recovery.explain(text, mount / "rec") or text
    assert "no space left on the device" in said, res.stderr


def test_explain_names_a_database_locked_by_another_program_in_a_real_run(tmp_path: Path) -> None:
    """A lock the pre-flight check cannot see (it only reads): Bytewax waits 5 s, then panics."""
    rec = tmp_path / "rec"
    _file_run(tmp_path, rec, kill_at=10)
    other = sqlite3.connect(rec / "part-0.sqlite3", isolation_level=None, timeout=10)
    try:
        other.execute("BEGIN EXCLUSIVE")
        res = _cli(*_run_args(tmp_path, rec))
    finally:
        other.close()
    assert res.returncode == 1, res.stderr
    text = _failure_line(res)
    said = recovery.explain(text, rec) or text
    assert said.endswith("a recovery database is locked by another program (database is locked): stop it, "
                         "then run again"), res.stderr
