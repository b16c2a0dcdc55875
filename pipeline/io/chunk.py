"""The unit that sources hand to the dataflow: a micro-batch of raw messages."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Messages per micro-batch, at most (`run --batch-size`).  Decoding and summarising a batch
# column-wise has a fixed cost of a few milliseconds, so large batches pay: on the reference
# machine the pure core runs ~185k ev/s at 5,000 and ~410k at 20,000 (bench/throughput.py --batch).
# A Kafka poll takes what has arrived, so a large cap adds no wait at low rates.
BATCH_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class Chunk:
    """A micro-batch of raw messages from one source partition, in delivery order."""

    partition: str
    lines: list[bytes]
    name: str  # "events.jsonl" for files, "telemetry/3" for a Kafka partition
    first: int  # line number of lines[0] (files)
    last: bool = False  # the partition has no more data after this chunk
    offsets: list[int] | None = None  # Kafka offset of each message, when from Kafka
    lag: int | None = None  # Kafka: messages left behind this chunk, when just measured
    down: bool = False  # Kafka: the broker cannot be reached (an empty chunk saying so)
    # Kafka, for the dead-letter output: each message's key and headers (None when no message
    # has any) and timestamp in ms since the epoch.
    keys: list[bytes | None] | None = None
    timestamps: list[int] | None = None
    headers: list[list[tuple[str, bytes | None]] | None] | None = None

    def locate(self, i: int) -> str:
        """Where message i came from: "file:line" or "topic/partition@offset"."""
        if self.offsets is not None:
            return f"{self.name}@{self.offsets[i]}"
        return f"{self.name}:{self.first + i}"

    def index_of(self, source: str | None) -> int | None:
        """The index of the Kafka message that `locate` named `source`, if it is in this chunk."""
        if self.offsets is None or source is None:
            return None
        name, _, offset = source.rpartition("@")
        if name != self.name or not offset.isdigit():
            return None
        i = bisect.bisect_left(self.offsets, int(offset))  # a partition's offsets only grow
        return i if i < len(self.offsets) and self.offsets[i] == int(offset) else None
