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
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config
from pipeline.fleet import Fleet, FleetError, Router, load_dir

SCAN_S = 1.0  # how often the directory is looked at for changes, at most


class FleetControl:
    """The current fleet and its router; reloaded on change and on SIGHUP."""

    def __init__(self, path: str | Path, say: Callable[[str], None] = lambda _: None,
                 scan_s: float = SCAN_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.say = say
        self.scan_s = scan_s
        self.clock = clock
        self.lock = threading.Lock()
        self.hup = threading.Event()
        self.fleet = load_dir(self.path)  # FleetError: not a directory
        self.router = Router(self.fleet.configs)
        self.version = 0
        self.reloads = 0  # reloads done, for the metrics
        self._stamp = self._scan()
        self._next = clock() + scan_s
        for problem in self.fleet.problems:
            say(f"rollouts: skipped {problem}")

    def current(self) -> tuple[Fleet, Router]:
        """The fleet to route and judge with now (re-read first if the directory changed)."""
        if self.hup.is_set() or self.clock() >= self._next:
            self._maybe_reload()
        return self.fleet, self.router

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

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                for p in self.path.glob("*.toml")))
        except OSError:
            return ()

    def _maybe_reload(self) -> None:
        with self.lock:
            if not self.hup.is_set() and self.clock() < self._next:
                return  # another worker just looked
            forced = self.hup.is_set()
            self.hup.clear()
            self._next = self.clock() + self.scan_s
            stamp = self._scan()
            if stamp == self._stamp and not forced:
                return
            self._stamp = stamp
            try:
                new = load_dir(self.path, previous=self.fleet, generation=self.version + 1)
            except FleetError as exc:
                self.say(f"rollouts: not reloaded: {exc}; the running rollouts go on")
                return
            self._report(self.fleet, new)
            self.fleet, self.router = new, Router(new.configs)
            self.version += 1
            self.reloads += 1

    def _report(self, old: Fleet, new: Fleet) -> None:
        added = sorted(set(new.files) - set(old.files))
        removed = sorted(set(old.files) - set(new.files))
        changed = sorted(n for n in set(old.files) & set(new.files)
                         if old.files[n].digest != new.files[n].digest)
        for name in added:
            self.say(f"rollouts: + {name} ({Path(new.files[name].path).name}): judged from its next event")
        for name in changed:
            self.say(f"rollouts: ~ {name} ({Path(new.files[name].path).name}) changed")
        for name in sorted(set(new.files) & set(old.files)):
            if Path(new.files[name].path) != Path(old.files[name].path):
                self.say(f"rollouts: ~ {name} now from {Path(new.files[name].path).name}")
        for name in removed:
            self.say(f"rollouts: - {name}: its file is gone; its open windows close and it stops")
        for problem in sorted(set(new.problems) - set(old.problems)):
            self.say(f"rollouts: skipped {problem}")


__all__ = ["SCAN_S", "FleetControl"]
