"""The journal of judged windows: which config made each verdict, kept in the recovery directory.

A crash between two snapshots leaves verdicts on the outputs that the last
snapshot does not cover; the resumed run judges those windows again.  For
the second copy to be the same verdict, it must be judged under the config
the first was, even when the resumed run was started with another stage or
other thresholds.  So the judge appends here, before its verdicts leave for
any output, the config of every window it judges; on resume the engine
makes the journaled windows after its snapshot again under their own config
(`Engine.reconfigure`) and the new config applies from the first window not
yet emitted.

`DIR/verdicts.journal` holds JSON lines:

    {"config": FP, "pickle": BASE64}            the config with fingerprint FP (once per file)
    {"from": END, "through": END, "config": FP}  the windows ending from..through were judged under FP

Durability: lines are written before the verdicts leave (which survives any
crash of the process) and fsync'd with each snapshot.  After a crash of the
machine itself, windows judged since the last snapshot may be judged again
under the resumed run's config.  Size: at a snapshot, once the file passes
COMPACT_BYTES it is rewritten without the windows that the snapshot before
the last one already covered.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import orjson

from pipeline.config import Config

JOURNAL_FILE = "verdicts.journal"
COMPACT_BYTES = 1 << 18


class JournalError(Exception):
    """The journal cannot be read; the message is one line naming the file."""


def _fingerprint(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


class VerdictJournal:
    """Appends (window end, config) of judged windows; answers which were emitted after a snapshot."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL_FILE
        self.configs: dict[str, Config] = {}  # fingerprint -> config, as read and written
        self.lines: list[tuple[float, float, str]] = []  # (from, through, fingerprint), in order
        if self.path.exists():
            self._read()
        # id(config) -> (config, fingerprint) of configs already defined; holding the config keeps its id
        self.known: dict[int, tuple[Config, str]] = {}
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.covered: deque[float] = deque(maxlen=3)  # what the last snapshots covered

    def _read(self) -> None:
        data = self.path.read_bytes()
        rows = data.split(b"\n")
        for n, row in enumerate(rows, 1):
            if not row:
                continue
            try:
                item = orjson.loads(row)
                if "pickle" in item:
                    config = pickle.loads(base64.b64decode(item["pickle"]))
                    if not isinstance(config, Config):
                        raise TypeError("not a config")
                    self.configs[item["config"]] = config
                else:
                    self.lines.append((float(item["from"]), float(item["through"]), str(item["config"])))
            except Exception as exc:  # any damage is reported the same way
                if n >= len(rows) - 1:  # a last line torn by a crash mid-write: it was never acted on
                    break
                raise JournalError(f"{self.path}: line {n} is damaged ({type(exc).__name__}); "
                                   "remove the file to resume without it") from None
        missing = {fp for _, _, fp in self.lines} - set(self.configs)
        if missing:
            raise JournalError(f"{self.path}: config {sorted(missing)[0]} is used but not defined; "
                               "remove the file to resume without it")

    def emitted_after(self, done: float | None, size: int) -> list[tuple[float, Config]]:
        """(window end, config) of every journaled window ending after `done` (None: all), in order."""
        out: list[tuple[float, Config]] = []
        for start, through, fp in self.lines:
            if done is not None and through <= done:
                continue
            end = start if done is None else max(start, done + size)
            while end <= through:
                out.append((end, self.configs[fp]))
                end += size
        return out

    def append(self, judged: Iterable[tuple[float, Config]]) -> None:
        """Record judged windows (before their verdicts leave): one line per run of one config."""
        chunks: list[bytes] = []
        group: list[float] = []
        current: Config | None = None
        for end, config in judged:
            if config is not current and group:
                chunks.append(self._line(group[0], group[-1], current))
                group = []
            current = config
            group.append(end)
        if group:
            chunks.append(self._line(group[0], group[-1], current))
        if chunks:
            os.write(self.fd, b"".join(chunks))

    def _line(self, start: float, through: float, config: Config | None) -> bytes:
        assert config is not None
        define = b""
        seen = self.known.get(id(config))
        if seen is not None:
            fp = seen[1]
        else:
            blob = pickle.dumps(config)
            fp = _fingerprint(blob)
            if fp not in self.configs:
                define = orjson.dumps({"config": fp, "pickle": base64.b64encode(blob).decode()}) + b"\n"
                self.configs[fp] = config
            self.known[id(config)] = (config, fp)
        self.lines.append((start, through, fp))
        return define + orjson.dumps({"from": start, "through": through, "config": fp}) + b"\n"

    def snapshot(self, covered: float | None) -> None:
        """A snapshot covering windows through `covered` is being taken: make the journal durable."""
        os.fsync(self.fd)
        if covered is None:
            return
        self.covered.append(covered)
        if len(self.covered) == self.covered.maxlen and os.fstat(self.fd).st_size > COMPACT_BYTES:
            self._compact(self.covered[0])

    def _compact(self, done: float) -> None:
        """Rewrite the file without the windows a snapshot two back already covered."""
        keep = [line for line in self.lines if line[1] > done]
        used = {fp for _, _, fp in keep}
        rows = [orjson.dumps({"config": fp, "pickle": base64.b64encode(pickle.dumps(c)).decode()})
                for fp, c in self.configs.items() if fp in used]
        rows += [orjson.dumps({"from": a, "through": b, "config": fp}) for a, b, fp in keep]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(r + b"\n" for r in rows))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.lines = keep
        self.configs = {fp: c for fp, c in self.configs.items() if fp in used}
        self.known = {k: seen for k, seen in self.known.items() if seen[1] in used}

    def close(self) -> None:
        os.close(self.fd)
