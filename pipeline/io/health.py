"""Source health shared by the sources, the judge and the metrics collector.

Broker-agnostic on purpose: a file run builds the same dataflow and the same
collector as a Kafka run, and importing this module loads no Kafka client.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SourceHealth:
    """Per-partition consumption counters, shared with the metrics collector."""

    consumed: Counter[str] = field(default_factory=Counter)
    lag: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, partition: str, n: int, lag: int | None) -> None:
        """n messages consumed from `partition`; `lag` messages left behind it."""
        with self.lock:
            self.consumed[partition] += n
            if lag is not None:
                self.lag[partition] = lag
