"""Signals of `run`: graceful stop, stop at once, and SIGHUP stage reloads.

The handlers are installed at the very start of `run`, before Bytewax is
imported: importing it, reaching a broker and opening the recovery directory
take a while, and a signal in that time must not kill the process with the
default action.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pipeline import config as config_mod
from pipeline.cli.common import say
from pipeline.io.lifecycle import STOP

STOP_GRACE_S = 10.0  # a graceful stop that takes longer than this becomes an immediate one

HUP_EARLY = threading.Event()  # a SIGHUP came before the run could apply one
FOLLOWERS: list[subprocess.Popen[bytes]] = []  # processes 1..N-1 of a local cluster
TIMERS: list[threading.Timer] = []  # the graceful stop's deadline, cancelled once the run ended


def catch_early() -> None:
    """Own SIGTERM, SIGINT and SIGHUP from the start of `run`, before anything slow.

    A stop is remembered (the run then ends before it starts, exit 0) and a
    reload is applied once the run's stage control exists.
    """
    signal.signal(signal.SIGTERM, stop_gracefully)
    signal.signal(signal.SIGINT, stop_gracefully)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: HUP_EARLY.set())


def stop_gracefully(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM / Ctrl-C: end the input, flush outputs, take a final snapshot; second: at once."""
    signal_followers()
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()
    at_terminal = sys.stdin is not None and sys.stdin.isatty()  # None: started with stdin closed
    say("stopping: flushing outputs" + (" (again to stop at once)" if at_terminal else ""))

    def overdue() -> None:  # e.g. a sink waiting on an unreachable broker
        say(f"graceful stop took over {STOP_GRACE_S:g} s: stopping at once")
        signal.raise_signal(signal.SIGINT)

    timer = threading.Timer(STOP_GRACE_S, overdue)
    timer.daemon = True
    timer.start()
    TIMERS.append(timer)


def signal_followers() -> None:
    """A stop of process 0 stops its followers too (the cluster ends together)."""
    for proc in FOLLOWERS:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def install_reload(path: str | None, control: Any) -> None:
    """SIGHUP re-reads `path` and applies its stage to `control`; one that came early is applied now."""
    if path is None or not hasattr(signal, "SIGHUP"):
        return
    reload = reload_stage(path, control)
    signal.signal(signal.SIGHUP, reload)
    if HUP_EARLY.is_set():  # the file may have changed after it was read at start-up
        reload(signal.SIGHUP, None)


def reload_stage(path: str, control: Any) -> Callable[[int, FrameType | None], None]:
    """A SIGHUP handler: a new `rollout.stage` applies; other changes are named (they need a restart)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            new = config_mod.load(path)
        except config_mod.ConfigError as exc:
            say(f"SIGHUP: config not reloaded: {exc}")
            return
        except Exception as exc:  # a reload must never end a live run
            say(f"SIGHUP: config not reloaded: {type(exc).__name__}: {exc}")
            return
        if new.stage != control.stage:
            say(f"SIGHUP: stage {control.stage} -> {new.stage} (promotion clock restarts; "
                "evidence and any latched stop start afresh)")
            control.stage = new.stage
        changed = [k for k, v in new.effective().items() if k != "rollout" and v != control.base.get(k)]
        changed += [f"rollout.{k}" for k, v in new.effective()["rollout"].items()
                    if k != "stage" and v != control.base["rollout"][k]]
        if changed:
            say(f"SIGHUP: only the stage is applied while running; restart to apply {', '.join(changed)}")

    return handler


def stop_handlers_during_run() -> dict[int, Any]:
    """Route SIGTERM / SIGINT to the graceful stop while the dataflow runs; the handlers replaced."""
    return {sig: signal.signal(sig, stop_gracefully) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers `stop_handlers_during_run` replaced; cancel the graceful stop's deadline."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    for timer in TIMERS:
        timer.cancel()


def ignore_stops() -> None:
    """Ignore stop signals from here on (a finished command must keep its exit code)."""
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
