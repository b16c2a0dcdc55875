"""Runs a built dataflow on Bytewax: workers, cluster addresses, recovery, one-line failures.

The command line decides what to run; this module is the only place that
starts Bytewax's runtime.  Bytewax's Rust side prints a panic (several lines,
often a backtrace note) when a Python exception or a failed recovery-database
call ends the dataflow; the command line reports the cause in one line
instead, so stderr is passed through a filter while the dataflow runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig


@dataclass(frozen=True)
class Cluster:
    """Where a dataflow runs: threads per process and, for a cluster, every process's address."""

    workers: int = 1  # worker threads in this process
    addresses: list[str] | None = None  # a cluster's processes, when there is more than one
    process_id: int = 0

    @property
    def total(self) -> int:
        """Workers over all processes."""
        return len(self.addresses or [None]) * self.workers


def execute(flow: Dataflow, cluster: Cluster, *, recovery_dir: str | None = None,
            snapshot_interval_s: float = 10.0) -> None:
    """Run `flow` to its end on `cluster`, snapshotting to `recovery_dir` every `snapshot_interval_s`.

    Raises what the dataflow raised (Bytewax wraps it; the first exception of
    the chain is the cause) and KeyboardInterrupt on a stop at once.
    """
    recovery = RecoveryConfig(Path(recovery_dir)) if recovery_dir else None  # type: ignore[no-untyped-call]
    with without_panic_noise():
        cli_main(flow, workers_per_process=cluster.workers,  # type: ignore[no-untyped-call]
                 process_id=cluster.process_id if cluster.addresses else None,
                 addresses=cluster.addresses,
                 epoch_interval=timedelta(seconds=snapshot_interval_s),
                 recovery_config=recovery)


# What Bytewax's Rust side prints when a Python exception or a failed recovery-database
# call ends the dataflow: a "panicked at" line, the panic's message (which may run over
# several lines), then the RUST_BACKTRACE note.
_PANIC_START = re.compile(rb"^thread '.*' panicked at ")
_PANIC_END = re.compile(rb"^note: run with `RUST_BACKTRACE")
_PANIC_MAX_LINES = 40  # a panic with no closing note stops hiding lines after this many


@contextlib.contextmanager
def without_panic_noise() -> Iterator[None]:
    """Forward stderr through a filter that drops Rust panic lines (set CANARY_GATE_DEBUG=1 to keep)."""
    if os.environ.get("CANARY_GATE_DEBUG"):
        yield
        return
    os.environ["RUST_BACKTRACE"] = "0"
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        hiding = 0  # lines left to hide of the panic being printed
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if _PANIC_START.match(line):
                    hiding = _PANIC_MAX_LINES
                elif hiding:
                    hiding = 0 if _PANIC_END.match(line) else hiding - 1
                elif not line.startswith(b"Box<dyn Any>"):
                    os.write(saved, line)

    pump = threading.Thread(target=forward, name="canary-gate-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump drains and ends
        pump.join(timeout=5)
        os.close(saved)
