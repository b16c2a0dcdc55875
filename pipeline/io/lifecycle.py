"""Process-wide run control: the graceful-stop request and failpoints.

`STOP` is set by SIGTERM / Ctrl-C.  Sources then end their partitions
without marking them finished and the judge closes no window at the end of
input, so the final snapshot holds the open windows and the next run with the
same recovery directory carries on where this one stopped.

Failpoints make crash tests exact: ``CANARY_GATE_FAILPOINT=NAME:N`` kills the
process with SIGKILL the N-th time the code passes point NAME (``chunk``,
``window_close``, ``verdict_write``, ``snapshot``); ``NAME:N:pause`` instead
stops the process there, saying so on stderr, until something outside kills
it (a test's own ``kill -9`` at a point reached by construction, not by
racing the run).  Unset, a failpoint costs one global lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter

STOP = threading.Event()

POINTS = ("chunk", "window_close", "verdict_write", "snapshot")


def _parse(spec: str) -> tuple[str, int, bool] | None:
    """NAME:N[:pause] as (name, n, pause), or None if malformed."""
    name, _, rest = spec.partition(":")
    count, _, mode = rest.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1 or mode not in ("", "pause"):
        return None
    return name, int(count), mode == "pause"


def failpoint_error() -> str | None:
    """What is wrong with CANARY_GATE_FAILPOINT, if anything (checked by the command line)."""
    spec = os.environ.get("CANARY_GATE_FAILPOINT", "")
    if spec and _parse(spec) is None:
        return (f"CANARY_GATE_FAILPOINT must be NAME:N or NAME:N:pause with NAME one of "
                f"{', '.join(POINTS)}, got {spec!r}")
    return None


def _armed() -> tuple[str, int, bool] | None:
    return _parse(os.environ.get("CANARY_GATE_FAILPOINT", ""))


_ARMED = _armed()
_HITS: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Crash here (SIGKILL, no clean-up) when this is the armed point's N-th pass."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _HITS[name] += 1
    if _HITS[name] != _ARMED[1]:
        return
    if _ARMED[2]:
        sys.stderr.write(f"canary-gate: failpoint {name}:{_ARMED[1]}: paused (pid {os.getpid()})\n")
        sys.stderr.flush()
        while True:  # until killed from outside; signal handlers still run, so sleep in slices
            time.sleep(1)
    sys.stderr.write(f"canary-gate: failpoint {name}:{_ARMED[1]}: killing the process\n")
    sys.stderr.flush()
    time.sleep(0.2)  # stderr may pass through a forwarding thread (cli._without_panic_noise)
    os.kill(os.getpid(), signal.SIGKILL)


_FAILURE: list[str] = []


def fail(reason: str) -> None:
    """Stop the run as on SIGTERM, and make it exit non-zero with `reason` (first one wins)."""
    if not _FAILURE:
        _FAILURE.append(reason)
    STOP.set()


def failure() -> str | None:
    """Why the run was stopped by `fail`, if it was."""
    return _FAILURE[0] if _FAILURE else None


_SNAPSHOT: list[float] = []


def snapshot_taken() -> None:
    """The judge's state was just handed to a snapshot (the summary says what a stop kept)."""
    _SNAPSHOT[:] = [time.time()]


def last_snapshot() -> float | None:
    """Wall time of the judge's last snapshot in this process, if any."""
    return _SNAPSHOT[0] if _SNAPSHOT else None


def reset() -> None:
    """Forget a stop request and its failure (a new run in the same process, e.g. in tests)."""
    STOP.clear()
    _FAILURE.clear()
