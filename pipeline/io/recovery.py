"""The recovery directory: who may use it, whether Bytewax can, and what its failures mean (issue 15).

`--recovery-dir DIR` holds Bytewax's state partitions, one SQLite file per
partition (`part-<i>.sqlite3`, tables parts, exs, fronts, commits, snaps,
journal mode WAL), next to canary-gate's own files: the marker
`canary-gate.json` (what run the state belongs to), `verdicts.journal`
(pipeline/io/journal.py), `snapshots.json` (below) and one lock file per
process of a run, `lock.<process id>`.

Why each piece exists:

- `prepare` ties a directory to one run (source, outputs, worker count,
  windows, limits): state resumed under another would be wrong.
- `lock` makes a directory one run's at a time.  Two runs on it would both
  write snapshots and outputs; the second is refused, naming the first's
  pid.  The lock is an flock, so the kernel drops it when its process dies
  and a crashed run never blocks the next one.
- `check` runs before the dataflow and turns what Bytewax would report as a
  Rust panic (a damaged, read-only or full database) into one line.
- Bytewax writes through SQLite's write-ahead log and only folds it into the
  database file when a run ends cleanly, so after a crash the snapshots live
  in `part-<i>.sqlite3-wal`.  Deleting that file makes the next run start
  from an older point, or the beginning, without a word from Bytewax or
  SQLite.  `check` sees it in two ways: the `-shm` index SQLite leaves
  behind still counts frames the missing log held; and `snapshots.json`
  records the epoch the directory resumed from at each start (and, with
  `watch`, as the run commits snapshots), so going back below it is noticed
  even when the index went too.
- `explain` turns the text of a run-ending Bytewax/SQLite error into one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.config import Config

RECOVERY_FILE = "canary-gate.json"  # what a recovery directory holds state of
RECORD_FILE = "snapshots.json"  # the epoch the directory resumed from at the last start
LOCK_PREFIX = "lock."  # lock.<process id>: held for the life of a run; lock.init: while creating
INIT_LOCK = "lock.init"
TABLES = ("parts", "exs", "fronts", "commits", "snaps")  # Bytewax 0.21's recovery schema
WAL_ALLOWANCE_BYTES = 4 << 20  # SQLite folds its log into the database every 1000 pages: ~4 MiB of log
AFRESH = "restore it or start afresh with a new directory"


class RecoveryError(Exception):
    """The recovery directory cannot be used; the message is one line naming it."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n // 1024} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.1f} GiB"


def _os_problem(exc: OSError) -> str:
    """An OSError as the few words a user acts on."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "not writable (permission denied)"
    return exc.strerror or str(exc)


# -- the lock ------------------------------------------------------------------------------------

class Lock:
    """One process's hold on a recovery directory; released on `release()`, exit or death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path  # the lock file
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (the file stays: removing it would let two runs lock two files)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock(path: Path, process_id: int = 0, command: str | None = None) -> Lock:
    """Hold `path` for this process of a run: `lock.<process_id>`, exclusive, not waiting.

    One file per process id, so the processes of one local cluster each hold
    their own while two clusters (or two single runs) collide on lock.0.  The
    holder writes its pid, start time and command into the file for the
    message a second run gets.  A file left by a dead run is simply taken
    over: the kernel released its flock when the process died.
    """
    file = path / f"{LOCK_PREFIX}{process_id}"
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RecoveryError(f"--recovery-dir {path}: {_os_problem(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecoveryError(f"--recovery-dir {path} is in use by another canary-gate run ({_holder(file)}): "
                            "stop it, or use another directory") from None
    except OSError as exc:  # e.g. ENOLCK on a file system without locks
        os.close(fd)
        raise RecoveryError(f"--recovery-dir {path}: cannot lock {file.name}: {_os_problem(exc)}") from None
    info = {"pid": os.getpid(), "started": _now(),
            "command": (command if command is not None else " ".join(sys.argv))[:300]}
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same; check() reports the space
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return Lock(file, fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(file: Path, wait_s: float = 0.5) -> str:
    """'pid N, started T' of the lock's holder, read from its file.

    The holder writes the file just after it takes the lock, so an empty
    file or a dead pid (the previous holder's) is read again for a moment.
    """
    deadline = time.monotonic() + wait_s
    info: dict[str, Any] = {}
    while True:
        try:
            found = json.loads(file.read_text(encoding="utf-8"))
            info = found if isinstance(found, dict) else {}
        except (OSError, ValueError):
            info = {}
        pid = info.get("pid")
        if (isinstance(pid, int) and _alive(pid)) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not isinstance(info.get("pid"), int):
        return "pid unknown"
    return f"pid {info['pid']}" + (f", started {info['started']}" if info.get("started") else "")


@contextlib.contextmanager
def _initializing(path: Path, timeout_s: float = 30.0) -> Iterator[None]:
    """Serialize creation between the processes of a cluster that start together on a new directory."""
    try:
        fd = os.open(path / INIT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RecoveryError(f"--recovery-dir {path}: {_os_problem(exc)}") from None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RecoveryError(f"--recovery-dir {path}: another canary-gate process has been "
                                        f"creating it for {timeout_s:g} s: try again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the only descriptor of the file releases the flock


# -- prepare: tie the directory to one run -------------------------------------------------------

def prepare(path: Path, cfg: Config | None, run: dict[str, Any], process_id: int = 0) -> Lock:
    """Create a recovery directory, or check that this run may resume from it; hold it for the run.

    The state in it is partitioned by worker count and tied to the source, the
    outputs (file outputs are cut back to their snapshot length) and the
    config's windows and limits; a run that differs in any of them would
    resume wrongly, so it is refused with the difference named.  `run` holds
    rollout, workers (in total), source, verdicts and dead_letters.

    Nothing in the directory changes before the lock is held: the directory
    is created (when new), then locked, then initialized.  The returned lock
    must be kept until the run ends.
    """
    source, verdicts, dead = run["source"], run["verdicts"], run["dead_letters"]
    if source == "-":
        raise RecoveryError("--recovery-dir needs a file or Kafka source: stdin cannot be read again")
    for target, flag in ((verdicts, "--verdicts"), (dead, "--dead-letters")):
        if target and target.endswith(".gz"):
            raise RecoveryError(f"{flag} {target}: a gzip output cannot be cut back to a snapshot; "
                                "with --recovery-dir write plain JSONL")

    def file_of(target: str | None) -> str | None:  # only file outputs are cut back on resume
        return None if not target or target == "-" or target.startswith("kafka://") else str(
            Path(target).resolve())

    run = {**run, "source": source if source.startswith("kafka://") else str(Path(source).resolve()),
           "verdicts": file_of(verdicts), "dead_letters": file_of(dead)}
    # A fleet's rollouts check their own fixed settings as each resumes (flow._RolloutJudge).
    expected = {**run, "fixed": {"control": cfg.control, "canary": cfg.canary,
                                 "windows": dataclasses.asdict(cfg.windows),
                                 "limits": dataclasses.asdict(cfg.limits)} if cfg is not None else "fleet"}
    if path.exists() and not (path / RECOVERY_FILE).exists() and (not path.is_dir() or _foreign(path)):
        raise RecoveryError(f"--recovery-dir {path}: exists and is not a canary-gate recovery directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecoveryError(f"--recovery-dir {path}: cannot create: {_os_problem(exc)}") from None
    held = lock(path, process_id)
    try:
        with _initializing(path):
            _resume_or_create(path, expected)
    except BaseException:
        held.release()
        raise
    return held


def _foreign(path: Path) -> bool:
    """Whether a directory without a marker holds anything but lock files (left by a failed start)."""
    return any(not entry.name.startswith(LOCK_PREFIX) for entry in path.iterdir())


def _resume_or_create(path: Path, expected: dict[str, Any]) -> None:
    marker = path / RECOVERY_FILE
    if marker.exists():
        try:
            found = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RecoveryError(f"--recovery-dir {path}: unreadable {RECOVERY_FILE}: {exc}") from None
        want, have = _flat(expected), _flat(found)
        differ = [k for k in want if have.get(k) != want[k]]
        if differ:
            was = ", ".join(f"{k} {have.get(k)}" for k in differ)
            now = ", ".join(f"{k} {want[k]}" for k in differ)
            raise RecoveryError(f"--recovery-dir {path} holds a run with {was}; this run has {now}: "
                                "resume with the same, or use a new directory")
        return
    if _foreign(path):
        raise RecoveryError(f"--recovery-dir {path}: exists and is not a canary-gate recovery directory")
    from bytewax.recovery import init_db_dir

    try:
        init_db_dir(path, expected["workers"])  # type: ignore[no-untyped-call]
        marker.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
    except BaseException as exc:  # Bytewax panics (PanicException is a BaseException) on a full disk
        reason = _os_problem(exc) if isinstance(exc, OSError) else _creation_problem(exc)
        if reason is None:
            raise
        _undo_creation(path)
        raise RecoveryError(f"--recovery-dir {path}: cannot create: {reason}") from None


def _creation_problem(exc: BaseException) -> str | None:
    """Why Bytewax could not create the partitions, or None for an exception that is no such failure."""
    if not isinstance(exc, RuntimeError) and type(exc).__name__ != "PanicException":
        return None
    text = str(exc)
    for pattern, _, short in _SQLITE_PROBLEMS:
        if pattern.search(text):
            return short
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def _undo_creation(path: Path) -> None:
    """Remove what a failed creation left, so the next run may create the directory again."""
    for entry in path.iterdir():
        if entry.name == RECOVERY_FILE or ".sqlite3" in entry.name:
            with contextlib.suppress(OSError):
                entry.unlink()


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"fixed": {"windows": {"size_s": 60}}} -> {"windows.size_s": 60} (the "fixed" level dropped)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}" if key != "fixed" else prefix.rstrip(".")
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}." if name else ""))
        else:
            out[name] = value
    return out


# -- check: the pre-flight before the dataflow ---------------------------------------------------

def part_files(path: Path, workers: int) -> list[Path]:
    """The partition files `bytewax.recovery.init_db_dir(path, workers)` creates."""
    return [path / f"part-{i}.sqlite3" for i in range(workers)]


def check(path: Path, workers: int) -> list[str]:
    """Check that Bytewax can use the directory; return warnings (one line each) to print.

    Raises RecoveryError, one line, for what would end the run with a Rust
    panic: a partition that is missing, not a database, damaged or not
    Bytewax's; a read-only file system or file; too little free space.
    Warns when snapshots were lost with a deleted `-wal` file.  Records the
    epoch it resumes from in snapshots.json (so call it with the lock held,
    before the dataflow starts, in one process of a cluster: process 0,
    before it starts the others).
    """
    if not path.is_dir():
        raise RecoveryError(f"--recovery-dir {path}: no such directory")
    parts = part_files(path, workers)
    _check_writable(path, parts)
    _check_partition_files(path, parts)
    lost = [p for p in parts if _wal_lost(p)]  # before any connection: opening one rebuilds the -shm
    for index, part in enumerate(parts):
        _check_partition(path, part, index, workers)
    _check_space(path, parts)
    epoch = latest_epoch(path, workers)
    warnings = []
    if lost:
        names = ", ".join(f"{p.name}-wal" for p in lost)
        warnings.append(f"--recovery-dir {path}: {names} missing or cut short, and with it snapshots "
                        f"of the last run (was a -wal file deleted?): {_from_where(epoch)}")
    recorded = _recorded(path)
    if not lost and recorded is not None and (epoch is None or epoch < recorded):
        warnings.append(f"--recovery-dir {path}: " + (
            "no snapshot found although runs were recorded" if epoch is None else
            "snapshots recorded before are gone")
            + f" (was a -wal file deleted?): {_from_where(epoch)}")
    if epoch != recorded:
        _record(path, epoch)  # lower too: a loss is reported once
    return warnings


def _from_where(epoch: int | None) -> str:
    return "starting from the beginning" if epoch is None else "resuming from an older snapshot"


def _check_writable(path: Path, parts: list[Path]) -> None:
    """Read-only mounts stop even root; file modes stop other users (root writes through them)."""
    for target in [path, *[p for p in parts if p.exists()]]:
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            continue
        if read_only:
            where = "" if target == path else f"{target.name}: "
            raise RecoveryError(f"--recovery-dir {path}: {where}read-only file system")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RecoveryError(f"--recovery-dir {path}: not writable (permission denied)")
    for part in parts:
        for file in (part, part.with_name(part.name + "-wal"), part.with_name(part.name + "-shm")):
            if file.exists() and not os.access(file, os.R_OK | os.W_OK):
                raise RecoveryError(f"--recovery-dir {path}: {file.name} is not writable (permission denied)")


def _check_partition_files(path: Path, parts: list[Path]) -> None:
    """Bytewax opens every *.sqlite3 in the directory; each expected one must be there, no other."""
    for part in parts:
        if not part.is_file():
            raise RecoveryError(f"--recovery-dir {path}: {part.name} is missing: {AFRESH}")
    names = {p.name for p in parts}
    for entry in sorted(path.glob("*.sqlite3")):
        if entry.name not in names:
            raise RecoveryError(f"--recovery-dir {path}: {entry.name} is not a partition of this run "
                                "(Bytewax reads every *.sqlite3 in it): remove it, or use a new directory")


def _check_space(path: Path, parts: list[Path]) -> None:
    """Ask for room for one log cycle (~4 MiB) plus the largest partition again.

    Snapshots go to the -wal log first, which grows to about 4 MiB before
    SQLite copies it into the database, and each snapshot rewrites the state,
    so a partition can grow by its own size.  Less than that and the run
    would fail part-way with "database or disk is full".  A floor, not a
    promise: a long run's state can outgrow it.
    """
    st = os.statvfs(path)
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    need = WAL_ALLOWANCE_BYTES + max([0, *(p.stat().st_size for p in parts if p.exists())])
    if free < need:
        raise RecoveryError(f"--recovery-dir {path}: no space left on the device "
                            f"({_size(free)} free, {_size(need)} needed)")


def _connect(part: Path) -> sqlite3.Connection:
    """A read-only connection that leaves no file behind.

    With no -wal file, `immutable=1` reads the database file alone and, unlike
    `mode=ro`, creates no empty -wal and -shm; with one, `mode=ro` reads
    through the log as Bytewax will.
    """
    wal = part.with_name(part.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    return sqlite3.connect(f"file:{quote(str(part.resolve()))}?{mode}", uri=True, timeout=5.0)


def _check_partition(path: Path, part: Path, index: int, workers: int) -> None:
    try:
        con = _connect(part)
        try:
            verdict = [row[0] for row in con.execute("PRAGMA quick_check")]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in TABLES if t not in tables]
            held = con.execute("SELECT part_index, part_count FROM parts").fetchall() if not missing else []
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise RecoveryError(_database_problem(path, part.name, str(exc))) from None
    if verdict != ["ok"]:
        lines = [x for x in "\n".join(map(str, verdict)).splitlines() if x and not x.startswith("***")]
        detail = lines[0] if lines else "quick_check failed"
        raise RecoveryError(f"--recovery-dir {path}: {part.name} is damaged ({detail}): {AFRESH}")
    if missing:
        raise RecoveryError(f"--recovery-dir {path}: {part.name} is not a Bytewax recovery partition "
                            f"(no table {missing[0]}): {AFRESH}")
    if held != [(index, workers)]:
        what = ", ".join(f"{i} of {n}" for i, n in held) or "none"
        raise RecoveryError(f"--recovery-dir {path}: {part.name} holds partition {what}, not {index} of "
                            f"{workers}: {AFRESH}")


def _database_problem(path: Path, name: str, text: str) -> str:
    for pattern, what, _ in _SQLITE_PROBLEMS:
        if pattern.search(text):
            return f"--recovery-dir {path}: {name} {what}"
    return f"--recovery-dir {path}: {name}: {text}: {AFRESH}"


# -- snapshots lost with a deleted -wal ----------------------------------------------------------

# The first 48 bytes of a -shm file (SQLite's WalIndexHdr, native byte order): iVersion, unused,
# iChange, isInit, bigEndCksum, szPage, mxFrame, nPage, aFrameCksum, aSalt, aCksum.  The header is
# stored twice (a reader trusts it when both copies agree); nBackfill, the frames already copied
# into the database file, follows at byte 96.
_SHM_HEADER = struct.Struct("=IIIBBHII8s8s8s")
_WAL_INDEX_VERSION = 3007000
_WAL_HEADER_BYTES = 32
_WAL_FRAME_HEADER_BYTES = 24


def _wal_lost(part: Path) -> bool:
    """Whether the -shm index counts committed frames that neither the database nor the -wal holds.

    After a crash SQLite leaves `-wal` and `-shm`; a clean end removes both.
    The index's mxFrame is the last committed frame and nBackfill how many
    of them were checkpointed into the database file; any in between exist
    only in the log.  If the log is gone, shorter than those frames, or
    another log (other salt), they are lost.  The next SQLite connection
    rebuilds the index, so this must run before any opens the database.
    """
    shm, wal = part.with_name(part.name + "-shm"), part.with_name(part.name + "-wal")
    try:
        with open(shm, "rb") as f:
            head = f.read(100)
    except OSError:
        return False
    if len(head) < 100 or head[:48] != head[48:96]:
        return False
    version, _, _, init, _, page, frames, _, _, salt, _ = _SHM_HEADER.unpack(head[:48])
    (backfilled,) = struct.unpack("=I", head[96:100])
    if version != _WAL_INDEX_VERSION or not init or frames <= backfilled:
        return False
    page_size = 65536 if page == 1 else page
    try:
        with open(wal, "rb") as f:
            wal_head = f.read(_WAL_HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return True
    except OSError:
        return False
    needed = _WAL_HEADER_BYTES + int(frames) * (_WAL_FRAME_HEADER_BYTES + int(page_size))
    return size < needed or wal_head[16:24] != salt


def latest_epoch(path: Path, workers: int | None = None) -> int | None:
    """The epoch the next run resumes from, as Bytewax's tables say; None before any snapshot.

    Bytewax shards `fronts` (execution, worker, frontier) over the
    partitions; the newest execution's lowest worker frontier is where the
    next one resumes.  It never decreases from one run to the next, unless
    snapshots are lost.
    """
    parts = part_files(path, workers) if workers is not None else sorted(path.glob("*.sqlite3"))
    rows: list[tuple[int, int]] = []
    for part in parts:
        try:
            con = _connect(part)
            try:
                rows += con.execute("SELECT ex_num, worker_frontier FROM fronts").fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise RecoveryError(_database_problem(path, part.name, str(exc))) from None
    if not rows:
        return None
    newest = max(ex for ex, _ in rows)
    return min(front for ex, front in rows if ex == newest)


def _recorded(path: Path) -> int | None:
    try:
        epoch = json.loads((path / RECORD_FILE).read_text(encoding="utf-8")).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def remember(path: Path, workers: int | None = None) -> None:
    """Record the epoch the directory resumes from now in snapshots.json.

    `check` does this at each start; a caller may do it again after a run
    that ended without crashing, to raise the mark the next start compares
    against.
    """
    epoch = latest_epoch(path, workers)
    if epoch != _recorded(path):
        _record(path, epoch)


def _record(path: Path, epoch: int | None) -> None:
    """Write snapshots.json whole (temporary file, rename): a torn record would warn wrongly."""
    tmp = path / f"{RECORD_FILE}.tmp"
    try:
        tmp.write_text(json.dumps({"epoch": epoch, "recorded": _now()}) + "\n", encoding="utf-8")
        os.replace(tmp, path / RECORD_FILE)
    except OSError as exc:
        raise RecoveryError(f"--recovery-dir {path}: cannot write {RECORD_FILE}: "
                            f"{_os_problem(exc)}") from None


class Watcher:
    """Raises the mark in snapshots.json as a run commits snapshots, from a daemon thread.

    `check` records where a run starts; a run that then crashes and loses its
    -wal together with its -shm would take the snapshots it made itself out
    of sight of the next check.  Reading the small `fronts` table every few
    seconds (read-only: in WAL mode readers never block Bytewax's writer)
    keeps the mark close behind the run.  Best effort: a read that fails is
    skipped, the run reports its own failures.
    """

    def __init__(self, path: Path, workers: int, every_s: float) -> None:
        self.path, self.workers, self.every_s = path, workers, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="canary-gate-recovery-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Record the epoch the directory would resume from now, if it is above the mark."""
        try:
            epoch = latest_epoch(self.path, self.workers)
            recorded = _recorded(self.path)
            if epoch is not None and (recorded is None or epoch > recorded):
                _record(self.path, epoch)
        except (RecoveryError, OSError):
            pass

    def stop(self) -> None:
        """End the thread; record once more (after a run's end, its last snapshot)."""
        self._stopped.set()
        self._thread.join(timeout=10)
        self.poll()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def watch(path: Path, workers: int, every_s: float = 5.0) -> Watcher:
    """Keep snapshots.json up with a running run (process 0's, for all partitions); stop() after."""
    return Watcher(path, workers, every_s)


# -- explain: what a failed run's error means ----------------------------------------------------

# (pattern, what it says of a named file, what it says of the directory).  Matched against the SQLite
# message ("database or disk is full") and against rusqlite's error code name ("code: DiskFull"), which
# is what Bytewax's panics print: SqliteFailure(Error { code: DiskFull, extended_code: 13 }, Some(...)).
_SQLITE_PROBLEMS: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), what, short) for pattern, what, short in (
        (r"database or disk is full|code: DiskFull\b", "cannot grow: the device is full",
         "no space left on the device"),
        (r"attempt to write a readonly database|code: ReadOnly\b",
         "is read-only (attempt to write a readonly database)", "read-only database"),
        (r"file is not a database|code: NotADatabase\b",
         f"is not a valid database (file is not a database): {AFRESH}", "file is not a database"),
        (r"database disk image is malformed|code: DatabaseCorrupt\b",
         f"is damaged (database disk image is malformed): {AFRESH}", "database disk image is malformed"),
        (r"database (?:table )?is locked|code: Database(?:Busy|Locked)\b",
         "is locked by another program (database is locked): stop it, then run again", "database is locked"),
        (r"unable to open database file|code: CannotOpen\b",
         "cannot be opened (unable to open database file)", "unable to open database file"),
        (r"disk I/O error|code: SystemIoFailure\b", "cannot be read or written (disk I/O error)",
         "disk I/O error"),
    ))

_DIR_MESSAGES = {
    "no space left on the device": "no space left on the device: free some, then run again to resume "
                                   "from the last snapshot",
    "read-only database": "a recovery database is read-only (attempt to write a readonly database): make "
                          "the directory and its files writable, then run again",
    "file is not a database": "a recovery database is not a valid database (file is not a database): "
                              f"{AFRESH}",
    "database disk image is malformed": "a recovery database is damaged (database disk image is "
                                        f"malformed): {AFRESH}",
    "database is locked": "a recovery database is locked by another program (database is locked): stop it, "
                          "then run again",
    "unable to open database file": "a recovery database cannot be opened (unable to open database file)",
    "disk I/O error": "a recovery database cannot be read or written (disk I/O error): check the device",
}

_MISSING = re.compile(r"Missing recovery partitions \{([^}]*)\} of (\d+)")


def explain(text: str, path: Path | str | None = None) -> str | None:
    """One line for the error that ended a run, if it is the recovery directory's; else None.

    `text` is the exception's message (its root cause's, or the whole
    chain's): Bytewax reports SQLite failures as Rust panics such as
    "(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value:
    SqliteFailure(Error { code: DiskFull, extended_code: 13 }, Some("database
    or disk is full"))", and lost partitions as MissingPartitionsError /
    NoPartitionsError.
    """
    where = f"--recovery-dir {path}" if path is not None else "the recovery directory"
    if m := _MISSING.search(text):
        names = ", ".join(f"part-{i}.sqlite3" for i in re.findall(r"\d+", m.group(1)))
        return f"{where}: {names} missing (of {m.group(2)} partitions): {AFRESH}"
    if "No recovery partitions found" in text:
        return f"{where}: no part-*.sqlite3 partition files in it: {AFRESH}"
    for pattern, _, short in _SQLITE_PROBLEMS:
        if pattern.search(text):
            return f"{where}: {_DIR_MESSAGES[short]}"
    return None
