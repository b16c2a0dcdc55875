"""The unit that sources hand to the dataflow: a micro-batch of raw messages."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Messages per micro-batch, at most (`run --batch-size`).  Decoding and summarising a batch
# column-wise has a fixed cost of a few milliseconds, so large batches pay: on the reference
# machine the pure core runs ~185k ev/s at 5,000 and ~410k at 20,000 (bench/throughput.py --batch).
# A Kafka poll takes what has arrived, so a large cap adds no wait at low rates.
BATCH_SIZE = 20_000
# A fleet run (run --rollouts) summarises each batch per rollout and window, a cost per rollout that
# larger batches spread: with 50 rollouts, a fleet reading 100,000-message batches judges at ~0.85 of
# the rate of one rollout reading 20,000 over the same events; at 20,000 both, ~0.66 (bench/fleet.py).
FLEET_BATCH_SIZE = 100_000


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
    # A picked chunk (`pick`): where each line sat in the chunk it was picked from (files: for `locate`).
    at: list[int] | None = None

    def locate(self, i: int) -> str:
        """Where message i came from: "file:line" or "topic/partition@offset"."""
        if self.offsets is not None:
            return f"{self.name}@{self.offsets[i]}"
        return f"{self.name}:{self.first + (i if self.at is None else self.at[i])}"

    def pick_many(self, groups: Sequence[npt.NDArray[np.int64]]) -> list[Chunk]:
        """`pick` of each group of rows (ascending), the lists indexed once for all of them."""
        if not groups:
            return []
        columns = [None if values is None else _objects(values)
                   for values in (self.lines, self.offsets, self.keys, self.timestamps, self.headers)]
        at = None if self.at is None else np.asarray(self.at, dtype=np.int64)
        out = []
        for rows in groups:
            lines, offsets, keys, stamps, headers = (None if c is None else c[rows].tolist() for c in columns)
            assert lines is not None
            where = (rows if at is None else at[rows]).tolist()
            out.append(Chunk(self.partition, lines, self.name, self.first, self.last, offsets, self.lag,
                             self.down, keys, stamps, headers, where))
        return out

    def pick(self, rows: list[int], last: bool | None = None) -> Chunk:
        """The chunk of the messages at `rows` (ascending), each keeping its place and Kafka origin.

        Fleet mode hands each rollout its own messages of a chunk this way.  `last`
        defaults to this chunk's (a picked chunk ends the partition as its source did).
        """
        def take(values: list[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in rows]

        where = rows if self.at is None else [self.at[i] for i in rows]
        return Chunk(self.partition, [self.lines[i] for i in rows], self.name, self.first,
                     self.last if last is None else last, take(self.offsets), self.lag, self.down,
                     take(self.keys), take(self.timestamps), take(self.headers), where)

    def index_of(self, source: str | None) -> int | None:
        """The index of the Kafka message that `locate` named `source`, if it is in this chunk."""
        if self.offsets is None or source is None:
            return None
        name, _, offset = source.rpartition("@")
        if name != self.name or not offset.isdigit():
            return None
        i = bisect.bisect_left(self.offsets, int(offset))  # a partition's offsets only grow
        return i if i < len(self.offsets) and self.offsets[i] == int(offset) else None


def _objects(values: list[Any]) -> npt.NDArray[np.object_]:
    """A list as a numpy array of its objects (no copy of the objects), for indexing many times."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
