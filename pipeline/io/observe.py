"""A sink that hands every output to a callback in this process (metrics, tallies)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition


class _ObservePartition(StatelessSinkPartition[Any]):
    def __init__(self, sink: ObserveSink) -> None:
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        with self.sink.lock:
            for item in items:
                self.sink.observe(item)


class ObserveSink(DynamicSink[Any]):
    """Calls `observe(item)` for each item, serialised across worker threads."""

    def __init__(self, observe: Callable[[Any], None]) -> None:
        self.observe = observe
        self.lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ObservePartition:
        return _ObservePartition(self)
