"""Process-wide run control: the graceful-stop request and failpoints.

`STOP` is set by SIGTERM / Ctrl-C.  Sources then end their partitions
without marking them finished and the judge closes no window at the end of
input, so the final snapshot holds the open windows and the next run with the
same recovery directory carries on where this one stopped.

Failpoints make crash tests exact: ``CANARY_GATE_FAILPOINT=NAME:N`` kills the
process with SIGKILL the N-th time the code passes point NAME (``chunk``,
``window_close``, ``verdict_write``, ``snapshot``).  Unset, a failpoint costs
one global lookup.
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


def failpoint_error() -> str | None:
    """What is wrong with CANARY_GATE_FAILPOINT, if anything (checked by the command line)."""
    spec = os.environ.get("CANARY_GATE_FAILPOINT", "")
    name, _, count = spec.partition(":")
    if spec and (name not in POINTS or not count.isdigit() or int(count) < 1):
        return f"CANARY_GATE_FAILPOINT must be NAME:N with NAME one of {', '.join(POINTS)}, got {spec!r}"
    return None


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get("CANARY_GATE_FAILPOINT", "")
    if not spec or failpoint_error():
        return None
    name, _, count = spec.partition(":")
    return name, int(count)


_ARMED = _armed()
_HITS: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Crash here (SIGKILL, no clean-up) when this is the armed point's N-th pass."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _HITS[name] += 1
    if _HITS[name] == _ARMED[1]:
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
