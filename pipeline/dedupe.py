"""Request-id de-duplication: a request counts once per event-time window.

The rule (docs/events.md, "Duplicates"): an event whose `request_id` already
came in the same window is dropped and counted under `duplicates` for its
variant; each window remembers at most `limits.dedupe_max_ids` ids (past
that, ids are not remembered and `dedupe_overflow` counts them).  Events
without a request_id are never duplicates.

Within a batch, first appearance kept, the summaries apply it with
`repeats_in_events` (decoded events) and `repeats_in_frame` (a polars frame).
Across batches, `SeenIds` holds each open window's ids: `admit` decides one
event as it arrives (`Engine.feed`), `fits` whether a summarised batch's ids
(their hashes) may be merged as they are (`Engine.fits`), and `keeps_all`
whether a window can remember that many more; all three read the same ids
and the same cap.
"""

from __future__ import annotations

import enum
from collections import Counter
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline.model import Event

_RID = attrgetter("request_id")


def repeats_in_events(events: list[Event], wids: npt.NDArray[np.int64]) -> tuple[
        list[Event], npt.NDArray[np.int64], npt.NDArray[np.bool_] | None, list[tuple[int, str]]]:
    """The events without those whose request_id already came in the same window of the batch.

    Returns (kept events, their windows, which events were dropped or None, (window, variant)
    of each dropped one in arrival order).
    """
    rids = list(map(_RID, events))
    present = [r for r in rids if r is not None] if None in rids else rids
    if len(set(present)) == len(present):
        return events, wids, None, []
    twice = {r for r, n in Counter(present).items() if n > 1}
    suspects = np.flatnonzero(np.fromiter(map(twice.__contains__, rids), dtype=np.bool_, count=len(rids)))
    seen: set[tuple[int, str]] = set()
    drop: list[int] = []
    repeats: list[tuple[int, str]] = []
    for i in suspects.tolist():
        key = (int(wids[i]), rids[i])
        if key in seen:
            drop.append(i)
            repeats.append((key[0], events[i].variant))
        else:
            seen.add(key)
    if not drop:
        return events, wids, None, []
    mask = np.zeros(len(events), dtype=np.bool_)
    mask[drop] = True
    keep = np.flatnonzero(~mask)
    return [events[i] for i in keep.tolist()], wids[keep], mask, repeats


def repeats_in_frame(events: pl.DataFrame, wids: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint64],
             present: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_] | None, list[tuple[int, str]]]:
    """`repeats_in_events` for a frame: which rows repeat a request_id of the same window.

    Candidates by hash with one sort (the top bits of a hash of window and id,
    the row's position packed below them), then confirmed on the text among
    those few rows, in arrival order.
    """
    at = np.flatnonzero(present)
    if len(at) < 2:
        return None, []
    key = hashes[at] + wids[at].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps around
    bits = np.uint64(max(1, (len(at) - 1).bit_length()))
    packed = (key >> bits << bits) | np.arange(len(at), dtype=np.uint64)
    packed.sort()
    top = packed >> bits
    same = top[1:] == top[:-1]
    if not same.any():
        return None, []
    twice = np.zeros(len(at), dtype=np.bool_)
    twice[1:] |= same
    twice[:-1] |= same
    rows = np.sort(at[(packed[twice] & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)])
    suspects = pl.DataFrame({"at": rows, "wid": wids[rows], "request_id": events["request_id"].gather(rows),
                             "variant": events["variant"].gather(rows).cast(pl.String)})
    again = suspects.filter(~pl.struct("wid", "request_id").is_first_distinct())
    if again.is_empty():
        return None, []
    repeated = np.zeros(len(wids), dtype=np.bool_)
    repeated[again["at"].to_numpy()] = True
    return repeated, [(int(w), str(v)) for w, v in again.select("wid", "variant").iter_rows()]


class Admit(enum.Enum):
    """What `SeenIds.admit` decided about one event's request id."""

    NEW = "new"  # first in its window: counted, and remembered
    DUPLICATE = "duplicate"  # came before in its window: dropped, counted under `duplicates`
    OVERFLOW = "overflow"  # first, but its window remembers no more ids: counted under `dedupe_overflow`


_NEW, _DUPLICATE, _OVERFLOW = Admit.NEW, Admit.DUPLICATE, Admit.OVERFLOW  # a member lookup costs per event


class SeenIds:
    """The request ids of each open window, at most `cap` per window (limits.dedupe_max_ids).

    Two forms of the same ids.  Text (`by_window`), which `admit` reads one
    event at a time.  Hashes, sorted, which `fits` reads to check a summarised
    batch (a hash in common, a repeat or a collision, means "not sure": the
    batch then goes event by event and `admit` decides exactly).  A batch
    merged after `fits` is remembered by its hashes, its text kept aside as
    polars columns (`waiting`) until `admit` needs it (`settle`), so no Python
    string is made per summarised event.  Ids admitted one by one are hashed
    when `fits` next asks.  A pickle holds the text only (it settles first), as
    engines always pickled it; the hashes are made again after a resume.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.by_window: dict[int, set[str]] = {}
        self._init_forms()

    def _init_forms(self) -> None:
        self.hashed: dict[int, list[npt.NDArray[np.uint64]]] = {}  # sorted runs, sizes halving
        self.fresh: dict[int, list[str]] = {}  # text admitted since the window was last hashed
        self.waiting: dict[int, list[pl.Series]] = {}  # text merged by hash, not yet in by_window
        self.counts: Counter[int] = Counter()  # ids in `waiting`, per window

    @classmethod
    def restore(cls, cap: int, by_window: dict[int, set[str]]) -> SeenIds:
        """The ids of a snapshot: text per open window."""
        seen = cls(cap)
        seen.__setstate__({"cap": cap, "by_window": by_window})
        return seen

    def __getstate__(self) -> dict[str, Any]:
        self.settle()
        return {"cap": self.cap, "by_window": self.by_window}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cap = state["cap"]
        self.by_window = state["by_window"]
        self._init_forms()
        self.fresh = {wid: list(ids) for wid, ids in self.by_window.items() if ids}

    def open(self, wid: int) -> None:
        """Start remembering the ids of window `wid`."""
        self.by_window[wid] = set()

    def close(self, wid: int) -> None:
        """Forget the ids of a window that closed."""
        self.by_window.pop(wid, None)
        for table in (self.hashed, self.fresh, self.waiting, self.counts):
            table.pop(wid, None)

    def admit(self, wid: int, rid: str) -> Admit:
        """Decide one event with request id `rid` in (open) window `wid`, remembering it if there is room.

        Every id merged by hash must have been settled (`settle`) first.
        """
        ids = self.by_window[wid]
        if rid in ids:
            return _DUPLICATE
        if len(ids) < self.cap:
            ids.add(rid)
            fresh = self.fresh.get(wid)
            if fresh is None:
                self.fresh[wid] = [rid]
            else:
                fresh.append(rid)
            return _NEW
        return _OVERFLOW

    def keeps_all(self, wid: int, n: int) -> bool:
        """Whether window `wid` can remember `n` more ids (else some would be counted as overflow)."""
        return len(self.by_window.get(wid, ())) + self.counts[wid] + n <= self.cap

    def fits(self, wid: int, hashes: npt.NDArray[np.uint64]) -> bool:
        """Whether a batch's distinct ids of window `wid` (their hashes) would each be `Admit.NEW` in turn.

        False also when a hash collides with another id's: the caller then takes the exact path.
        """
        if not self.keeps_all(wid, len(hashes)):
            return False
        runs = self._runs(wid)
        if not runs or len(hashes) == 0:
            return True
        probe = np.sort(hashes)
        for run in runs:
            at = np.searchsorted(run, probe)
            at[at == len(run)] = 0
            if bool((run[at] == probe).any()):
                return False
        return True

    def remember(self, wid: int, hashes: npt.NDArray[np.uint64], text: pl.Series) -> None:
        """Add the ids of a batch that `fits` to window `wid` (if still open): hashes now, text later."""
        if wid not in self.by_window or len(hashes) == 0:
            return
        self._add_run(wid, np.sort(hashes))
        self.waiting.setdefault(wid, []).append(text)
        self.counts[wid] += len(text)

    def settle(self) -> None:
        """Hand the text of every id merged by hash to `by_window`, for `admit`."""
        for wid, columns in self.waiting.items():
            ids = self.by_window[wid]
            for text in columns:
                ids.update(text.to_list())
        self.waiting.clear()
        self.counts.clear()

    def _runs(self, wid: int) -> list[npt.NDArray[np.uint64]]:
        """The window's hash runs, with the ids admitted one by one since the last call hashed in."""
        fresh = self.fresh.pop(wid, None)
        if fresh:
            self._add_run(wid, np.sort(pl.Series(fresh, dtype=pl.String).hash().to_numpy()))
        return self.hashed.get(wid, [])

    def _add_run(self, wid: int, run: npt.NDArray[np.uint64]) -> None:
        """Add a sorted run; merge the last two while the newer is at least half the older (log runs)."""
        runs = self.hashed.setdefault(wid, [])
        runs.append(run)
        while len(runs) > 1 and 2 * len(runs[-1]) >= len(runs[-2]):
            last = runs.pop()
            merged = np.concatenate([runs[-1], last])
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            runs[-1] = merged


__all__ = ["Admit", "SeenIds", "repeats_in_events", "repeats_in_frame"]
