"""JSONL sources and sinks: files, gzip files and standard streams."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import itertools
import os
import queue
import select
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from pipeline.engine import Report
from pipeline.io.chunk import BATCH_SIZE, Chunk
from pipeline.io.lifecycle import STOP, fail, failpoint
from pipeline.model import DeadLetter

_T = TypeVar("_T")


def open_lines(path: str) -> IO[bytes]:
    """Open a JSONL file for binary reading: a path or a .gz path (stdin is read by `_PipeReader`)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


class _PipeReader:
    """Reads a pipe (stdin) on a thread so the dataflow never blocks waiting for a line.

    The thread reads the file descriptor with `os.read` after `select` says there is
    data, never through `sys.stdin.buffer`: a thread blocked inside a buffered
    reader holds its lock, and interpreter shutdown, which flushes and closes
    `sys.stdin`, then aborts the process (`_enter_buffered_busy`).  Waiting in
    `select` with a timeout also lets `stop` end the thread within POLL_S.
    Lines travel in blocks (one per `os.read`) to keep the queue's cost per line low.
    """

    POLL_S = 0.1
    READ_BYTES = 1 << 16

    def __init__(self, fd: int = 0, skip: int = 0, capacity: int = 256) -> None:
        self.fd = fd
        self.skip = skip
        # Backpressure: at most `capacity` blocks (of up to READ_BYTES each) wait in memory.
        self.queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=capacity)
        self.pending: list[bytes] = []  # lines of a block taken from the queue but not yet read
        self.ended = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True, name="canary-gate-stdin")
        self.thread.start()

    def _put(self, item: list[bytes] | None) -> bool:
        """Queue a block (or the end); False if asked to stop while the queue was full."""
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self) -> None:
        rest: list[bytes] = []  # the start of a line not yet ended (joined once its newline comes)
        while not self.stopping.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], self.POLL_S)
                if not ready:
                    continue
                data = os.read(self.fd, self.READ_BYTES)
            except OSError as exc:  # stdin closed under us or not readable: the run fails saying so
                fail(f"reading stdin: {exc.strerror or exc}")
                return
            if not data:
                break
            if b"\n" not in data:
                rest.append(data)
                continue
            lines = data.split(b"\n")
            lines[0] = b"".join([*rest, lines[0]])
            tail = lines.pop()
            rest = [tail] if tail else []
            if self.skip:
                dropped = min(self.skip, len(lines))
                del lines[:dropped]
                self.skip -= dropped
            if lines and not self._put(lines):
                return
        if self.stopping.is_set():
            return
        if rest and not self.skip:
            self._put([b"".join(rest)])  # a last line without a newline
        self._put(None)

    def read(self, n: int) -> tuple[list[bytes], bool]:
        """Up to n lines that have arrived, and whether the end was reached."""
        lines: list[bytes] = []
        while len(lines) < n and not self.ended:
            if not self.pending:
                try:
                    block = self.queue.get_nowait() if lines else self.queue.get(timeout=0.05)
                except queue.Empty:
                    break
                if block is None:
                    self.ended = True
                    break
                self.pending = block
            take = n - len(lines)
            lines += self.pending[:take]
            del self.pending[:take]
        return lines, self.ended and not self.pending

    def stop(self) -> None:
        """Ask the thread to end and wait briefly for it (it never holds a Python I/O lock)."""
        self.stopping.set()
        self.thread.join(timeout=2 * self.POLL_S + 1)


class _FilePartition(StatefulSourcePartition[Chunk, int]):
    def __init__(self, path: str, batch_size: int, skip: int) -> None:
        self.path = path
        self.name = "stdin" if path == "-" else Path(path).name
        self.batch_size = batch_size
        self.line_no = skip
        self.stream: IO[bytes] | None = None
        self.pipe: _PipeReader | None = None
        if path == "-":
            self.pipe = _PipeReader(0, skip)  # fd 0: the process's standard input
        else:
            self.stream = open_lines(path)
            self.line_no = sum(1 for _ in itertools.islice(self.stream, skip))
        self.done = False

    def _read(self) -> list[bytes]:
        if self.pipe is not None:
            raw, self.done = self.pipe.read(self.batch_size)
            return raw
        assert self.stream is not None
        raw = list(itertools.islice(self.stream, self.batch_size))
        self.done = len(raw) < self.batch_size
        return raw

    def next_batch(self) -> list[Chunk]:
        if self.done or STOP.is_set():
            raise StopIteration  # on a stop, not `last`: the rest is read after a restart
        raw = self._read()
        chunks = []
        start, first = 0, self.line_no + 1
        # Blank lines are not messages; split around them so line numbers stay exact.
        for i, line in enumerate(raw):
            if not line.strip():
                if i > start:
                    chunks.append(Chunk("0", [x.rstrip(b"\r\n") for x in raw[start:i]],
                                        self.name, first + start))
                start = i + 1
        if start < len(raw) or (self.done and not chunks):
            chunks.append(Chunk("0", [x.rstrip(b"\r\n") for x in raw[start:]], self.name,
                                first + start))
        self.line_no += len(raw)
        if self.done:
            chunks[-1] = Chunk("0", chunks[-1].lines, self.name, chunks[-1].first, last=True)
        return chunks

    def snapshot(self) -> int:
        return self.line_no

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.stop()
        if self.stream is not None:
            self.stream.close()


class JsonlSource(FixedPartitionedSource[Chunk, int]):
    """Reads a JSONL file (plain, .gz or '-') in micro-batches, as one partition."""

    def __init__(self, path: str, batch_size: int = BATCH_SIZE) -> None:
        if path != "-" and not Path(path).is_file():
            raise FileNotFoundError(f"source file not found: {path}")
        self.path = path
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(self.path, self.batch_size, resume_state or 0)


def verdict_line(report: Report) -> bytes:
    """One verdict as a JSONL line."""
    return orjson.dumps(report.verdict.to_record()) + b"\n"


def dead_letter_line(dead: DeadLetter) -> bytes:
    """One dead letter as a JSONL line: the original line and the reason."""
    return orjson.dumps(dead.to_record()) + b"\n"


TAIL_BYTES = 4096  # how much of a file output's end a snapshot vouches for (a hash of it)


class OutputMismatch(Exception):
    """A file output no longer holds what the recovery snapshot covered; resuming would corrupt it.

    Raised before anything is written: the file is left exactly as it was found.
    """


class OutputWriteError(Exception):
    """Writing a file output failed (a full disk, an I/O error): the message names the flag and file."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # the OSError's, for callers that tell a full disk from other failures


@dataclass(frozen=True)
class OutputState:
    """What a snapshot knows of a file output: its length, and a hash of the bytes just before it.

    The hash lets a resumed run notice a file that was rewritten or replaced while the
    run was stopped, which a length alone cannot (a file rotated and refilled since).
    """

    position: int
    tail_length: int  # min(TAIL_BYTES, position) when taken: the bytes the hash covers
    tail_sha256: str


def _say(message: str) -> None:
    """A one-line note to the user, as the command line writes them."""
    sys.stderr.write(f"canary-gate: {message}\n")
    sys.stderr.flush()


def _gzip_writer(path: str) -> IO[bytes]:
    """A gzip output, opened for writing (closed by the partition)."""
    return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]


def _fsync_directory(path: str) -> None:
    """Make a newly created file's directory entry durable (a file fsync alone does not)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory; the file's own fsync still holds
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class _LinePartition(StatefulSinkPartition[Any, OutputState | int | None]):
    """Appends lines to one file; the state is the file's length after the last batch (and a tail hash).

    Exactly-once across crashes: `snapshot` flushes and fsyncs the file before handing
    out its state, so the snapshot never covers bytes that a machine crash could lose,
    and on resume the file is cut back to the snapshot's length, so lines written after
    it (and written again by the resumed run) appear once.  A resume first checks that
    the file still holds what the snapshot covered (its length and the hash of its last
    TAIL_BYTES bytes before that point) and raises `OutputMismatch`, writing nothing,
    if it does not: cutting back or NUL-padding a truncated or replaced file would lose
    records silently.  A file missing on resume was rotated away (or deleted) while the
    run was stopped: a new one is started, with a note on stderr.

    Rotation while running: rotate by rename (logrotate's default, not ``copytruncate``).
    Before each batch one ``os.stat`` of the path tells whether it still names the open
    file; if not, the old file is fsynced and closed and the batch goes to a new file at
    the path (or, if something already created one there, to its end), with a note on
    stderr.  A ``copytruncate`` cannot be seen reliably while running (the file keeps
    its identity); a resume detects it.  A crash after a rotation and before the next
    snapshot leaves a snapshot of the old file: the resume refuses the new one
    (`OutputMismatch`), and moving it aside lets the run start it afresh.

    Standard output, gzip files and non-regular files (/dev/null, FIFOs) are written as
    before: no fsync, no state, no checks.  Any OSError while writing becomes an
    `OutputWriteError` naming the flag and the file.
    """

    def __init__(self, path: str, render: Any, resume: OutputState | int | None,
                 flag: str = "output") -> None:
        self.path = path
        self.render = render
        self.flag = flag
        self.stdout = path == "-"
        self.position: int | None = None  # None: not a plain file, no state
        self.tail = b""  # the last TAIL_BYTES bytes before `position`
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open plain file
        self.dirty = False  # written since the last fsync
        self.stream: IO[bytes]
        if self.stdout:
            self.stream = sys.stdout.buffer
        elif path.endswith(".gz"):
            self.stream = self._guard(lambda: _gzip_writer(path))
        elif resume is not None:
            self._resume(resume)
        else:
            self._start(truncate=True)

    # -- opening -----------------------------------------------------------------------

    def _start(self, truncate: bool) -> None:
        """Open the path for writing: a new file (its directory synced), or an existing one, cut or kept."""
        created = not os.path.lexists(self.path)
        if truncate or created:
            self.stream = self._guard(lambda: open(self.path, "wb"))  # noqa: SIM115 - closed in close()
        else:  # someone else created a file at the path (logrotate's `create`): append after it
            self.stream = self._guard(  # created if it went again meanwhile; closed in close()
                lambda: os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), "r+b"))
        self._adopt(self._guard(lambda: self.stream.seek(0, os.SEEK_END)))
        if created and self.position is not None:
            self._guard(lambda: _fsync_directory(self.path))

    def _adopt(self, position: int) -> None:
        """Track the open file from `position` on, if it is a regular file (else: no state)."""
        info = self._guard(lambda: os.fstat(self.stream.fileno()))
        if not stat.S_ISREG(info.st_mode):
            self.position, self.identity = None, None
            return
        self.identity = (info.st_dev, info.st_ino)
        self.position = position
        self.dirty = True
        self.tail = self._read_tail(position, min(TAIL_BYTES, position)) if position else b""

    def _read_tail(self, position: int, length: int) -> bytes:
        """The `length` bytes of the open file before `position` (the file position is left undefined)."""
        self._guard(lambda: self.stream.seek(position - length))
        return self._guard(lambda: self.stream.read(length))

    def _resume(self, state: OutputState | int) -> None:
        """Reopen the file a snapshot covered; check it still holds those bytes, then cut it back to them."""
        position = state.position if isinstance(state, OutputState) else int(state)
        if not os.path.lexists(self.path):
            if position:
                _say(f"{self.flag} {self.path}: not found; the snapshot covered {position} bytes of it "
                     f"(rotated by rename?): starting a new file")
            self._start(truncate=True)
            return
        self.stream = self._guard(lambda: open(self.path, "rb"))  # noqa: SIM115 - read-only until checked
        info = self._guard(lambda: os.fstat(self.stream.fileno()))
        if not stat.S_ISREG(info.st_mode):  # /dev/null and the like: nothing to check or cut
            self.stream.close()
            self._start(truncate=True)
            return
        try:
            problem = self._mismatch(state, position, info.st_size)
        finally:
            self.stream.close()
        if problem is not None:
            raise OutputMismatch(f"{self.flag} {self.path} {problem}: restore the file or move it aside, "
                                 f"or start afresh with a new --recovery-dir; rotate by rename, never "
                                 f"copytruncate")
        self.stream = self._guard(lambda: open(self.path, "r+b"))  # noqa: SIM115 - closed in close()
        self._guard(lambda: self.stream.truncate(position))
        self._adopt(position)
        self._guard(lambda: self.stream.seek(position))

    def _mismatch(self, state: OutputState | int, position: int, size: int) -> str | None:
        """Why the (read-only) open file does not hold what the snapshot covered, or None if it does."""
        if size < position:
            return (f"is {size} bytes but the snapshot in the recovery directory covers {position} "
                    f"(truncated, rotated with copytruncate, or replaced since?)")
        if not isinstance(state, OutputState):  # a snapshot from before tail hashes: the length is all
            return None
        tail = self._read_tail(position, state.tail_length)
        if len(tail) != state.tail_length or hashlib.sha256(tail).hexdigest() != state.tail_sha256:
            return (f"does not hold what the snapshot in the recovery directory covers (its last bytes "
                    f"before offset {position} differ: rewritten, or replaced since?)")
        return None

    # -- writing -----------------------------------------------------------------------

    def _guard(self, action: Callable[[], _T]) -> _T:
        """Run an I/O action; an OSError becomes a one-line `OutputWriteError` naming the flag and file.

        Raised outside the `except` so the error carries no chained OSError: the command
        line reports an error's root cause, which must be this message.
        """
        try:
            return action()
        except OSError as exc:
            problem = exc
        raise OutputWriteError(f"{self.flag} {self.path}: {problem.strerror or problem}", problem.errno)

    def _rotated(self) -> bool:
        """Whether the path no longer names the open file (renamed or removed while running)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell (e.g. a permission change): keep writing where we are
        return (info.st_dev, info.st_ino) != self.identity

    def _follow_rotation(self) -> None:
        """Close the rotated file (durably) and carry on in a new file at the path."""
        self._sync()
        self.stream.close()
        _say(f"{self.flag} {self.path}: renamed or removed while running: continuing in a new file there")
        self._start(truncate=False)

    def _sync(self) -> None:
        """Flush and fsync the file if written since the last sync."""
        if self.dirty:
            self._guard(self.stream.flush)
            self._guard(lambda: os.fsync(self.stream.fileno()))
            self.dirty = False

    def write_batch(self, values: list[Any]) -> None:
        data = b"".join(self.render(v) for v in values)
        if self.identity is not None and self._rotated():
            self._follow_rotation()
        self._guard(lambda: self._write(data, len(values) > 1))
        if self.position is not None:
            self.position += len(data)
            self.tail = data[-TAIL_BYTES:] if len(data) >= TAIL_BYTES else (self.tail + data)[-TAIL_BYTES:]
            self.dirty = True

    def _write(self, data: bytes, split: bool) -> None:
        if split:
            half = len(data) // 2
            self.stream.write(data[:half])
            self.stream.flush()
            failpoint("verdict_write")  # crash tests: die half-way through a write
            self.stream.write(data[half:])
        else:
            self.stream.write(data)
            failpoint("verdict_write")
        self.stream.flush()

    def snapshot(self) -> OutputState | None:
        """The state to resume from; the bytes it covers are on disk (fsynced) before it is returned."""
        if self.position is None:
            return None
        self._sync()
        return OutputState(self.position, len(self.tail), hashlib.sha256(self.tail).hexdigest())

    def close(self) -> None:
        if not self.stdout:
            with contextlib.suppress(OSError):  # a failed write already failed the run and said why
                self.stream.close()


class JsonlSink(FixedPartitionedSink[Any, OutputState | int | None]):
    """Writes rendered items as JSONL lines to one file (or '-' for stdout), from one worker.

    `flag` is the command-line flag the file came from (``--verdicts``), for error messages.
    """

    def __init__(self, path: str, render: Any, flag: str = "output") -> None:
        self.path = path
        self.render = render
        self.flag = flag

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: OutputState | int | None) -> _LinePartition:
        return _LinePartition(self.path, self.render, resume_state, self.flag)
