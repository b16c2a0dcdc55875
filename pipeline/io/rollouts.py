"""The rollouts directory of a fleet run (`run --rollouts DIR`), as this process sees it now.

Decoding workers ask it which rollouts to route to (`current`), once per
chunk; judges ask it for their rollout's config, once per item and tick.
It re-reads the directory when a file was added, changed or removed (it
looks at most every SCAN_S seconds: names, sizes and modification times) and
at once after SIGHUP (`request_reload`), so changes take effect at the next
batch.  A bad file is reported in one line and skipped; the rollouts already
running go on.  Each process of a cluster reads the directory itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.config import Config
from pipeline.fleet import Fleet, FleetError, Router, load_dir

SCAN_S = 1.0  # how often the directory is looked at for changes, at most


class Reader(Protocol):
    """Where a fleet's rollout definitions come from: a directory, or a compacted topic."""

    def stamp(self) -> Hashable:
        """Changes whenever the definitions may have (cheap: called at most every SCAN_S)."""
        ...

    def load(self, previous: Fleet | None, generation: int) -> Fleet:
        """The definitions now, as a fleet (FleetError if they cannot be read at all)."""
        ...


@dataclass(frozen=True)
class DirectoryReader:
    """A directory of `*.toml` files, one rollout each."""

    path: Path

    def stamp(self) -> Hashable:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                for p in self.path.glob("*.toml")))
        except OSError:
            return ()

    def load(self, previous: Fleet | None, generation: int) -> Fleet:
        return load_dir(self.path, previous, generation)


class FleetControl:
    """The current fleet and its router; reloaded on change and on SIGHUP."""

    def __init__(self, source: str | Path | Reader, say: Callable[[str], None] = lambda _: None,
                 scan_s: float = SCAN_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader: Reader = (source if not isinstance(source, str | Path)
                               else DirectoryReader(Path(source)))
        self.say = say
        self.scan_s = scan_s
        self.clock = clock
        self.lock = threading.Lock()
        self.hup = threading.Event()
        fleet = self.reader.load(None, 0)  # FleetError: cannot be read at all
        self._now = (fleet, Router(fleet.configs))  # swapped whole: readers never see half a reload
        self.version = 0
        self.reloads = 0  # reloads done, for the metrics
        self._stamp = self.reader.stamp()
        self._next = clock() + scan_s
        for problem in self.fleet.problems:
            say(f"rollouts: skipped {problem}")

    def current(self) -> tuple[Fleet, Router]:
        """The fleet to route and judge with now (re-read first if the directory changed)."""
        if self.hup.is_set() or self.clock() >= self._next:
            self._maybe_reload()
        return self._now

    @property
    def fleet(self) -> Fleet:
        """The fleet as last read (without looking at the source again)."""
        return self._now[0]

    def config(self, name: str) -> Config | None:
        """The current config of rollout `name`; None once its file is gone (or never was)."""
        return self.current()[0].get(name)

    def generation(self, name: str) -> int | None:
        """Which load took rollout `name` in (None: not in the fleet now); see `RolloutFile`."""
        found = self.current()[0].files.get(name)
        return None if found is None else found.generation

    def stage(self, name: str) -> str | None:
        found = self.fleet.get(name)
        return None if found is None else found.stage

    def request_reload(self) -> None:
        """SIGHUP: re-read the directory before the next batch."""
        self.hup.set()

    def _maybe_reload(self) -> None:
        with self.lock:
            if not self.hup.is_set() and self.clock() < self._next:
                return  # another worker just looked
            forced = self.hup.is_set()
            self.hup.clear()
            self._next = self.clock() + self.scan_s
            stamp = self.reader.stamp()
            if stamp == self._stamp and not forced:
                return
            self._stamp = stamp
            try:
                new = self.reader.load(self.fleet, self.version + 1)
            except FleetError as exc:
                self.say(f"rollouts: not reloaded: {exc}; the running rollouts go on")
                return
            self._report(self.fleet, new)
            self._now = (new, Router(new.configs))
            self.version += 1
            self.reloads += 1

    def _report(self, old: Fleet, new: Fleet) -> None:
        added = sorted(set(new.files) - set(old.files))
        removed = sorted(set(old.files) - set(new.files))
        changed = sorted(n for n in set(old.files) & set(new.files)
                         if old.files[n].digest != new.files[n].digest)
        for name in added:
            self.say(f"rollouts: + {name} ({new.files[name].shown}): judged from its next event")
        for name in changed:
            self.say(f"rollouts: ~ {name} ({new.files[name].shown}) changed")
        for name in sorted(set(new.files) & set(old.files)):
            if new.files[name].path != old.files[name].path:
                self.say(f"rollouts: ~ {name} now from {new.files[name].shown}")
        for name in removed:
            self.say(f"rollouts: - {name}: its file is gone; its open windows close and it stops")
        for problem in sorted(set(new.problems) - set(old.problems)):
            self.say(f"rollouts: skipped {problem}")


__all__ = ["SCAN_S", "DirectoryReader", "FleetControl", "Reader"]
