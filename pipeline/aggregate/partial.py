"""The summary of a micro-batch of decoded events, per event-time window (pure core): `Partial`.

Judging needs one stream-wide clock, so the `Engine` lives on one worker.  To
keep per-event work off that worker, events are summarised where they were
decoded, column-wise (`summarize_frame`, over a polars frame of `frame.SCHEMA`):
per event-time window the same counters and latency sketches as
`WindowStats`, but keyed by the raw label values (the label caps are
stream-wide state, applied by the judge), plus what the judge needs to decide
whether the summary may be used as is: the event times in arrival order, the
request ids per window (hashes to check, text for the exact path), the sticky
keys per window, and the label rows in order of first appearance.  The stream's
decoding workers and replay call the same function, so there is one summariser.

`Engine.feed_partial` checks the summary against its clock and the request ids
it holds (no late, future or duplicate event) and merges it, or falls back to
feeding the events one by one, so the verdicts are those of `Engine.feed`
either way.  `pipeline.feed` decides which runs of a batch are summarised.

It restates no rule of the stream's: populations, label rows, the sticky-key
population and value rounding are population.py's column forms; the request
families are counted by `families.count_requests` over the rows of one
group-by on `families.SIGNATURE`; the probe families are grouped on the fields
`families.TABLE` gives them and keyed by `Family.key_of`; the latency key is
`families.LATENCY_KEY`.  Only the work is column-wise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline import frame as frames
from pipeline.aggregate.families import (
    LATENCY_KEY,
    PHASES,
    POPULATION_AT,
    PROBE_FAMILIES,
    REQUEST_FAMILIES,
    SIGNATURE,
    Counters,
    LatencyKey,
    count_requests,
)
from pipeline.aggregate.sketch import PackedSketches
from pipeline.aggregate.stats import ClosedWindow
from pipeline.clock import windows_of
from pipeline.dedupe import repeats_in_frame
from pipeline.model import DecodeError, Event
from pipeline.population import (
    LABEL_FIELDS,
    LABELS,
    POPULATION,
    POPULATION_FIELDS,
    PROBE,
    PROBE_LABELS,
    ROWS,
    USER,
    USERS,
    label_rows_of_users,
    sticky_column,
)


@dataclass(frozen=True, slots=True)
class WindowPart:
    """One window's share of a batch."""

    wid: int
    stats: ClosedWindow  # raw label values
    sticky: dict[str, list[str]]  # configured variant -> sticky keys of its user requests


@dataclass(frozen=True, slots=True)
class RequestIds:
    """The request ids of a batch, per window (repeats within the batch dropped).

    Hashes (`pl.Series.hash`) for the judge to check against the ids its
    windows hold (`SeenIds.fits`); the text, compact, for when an exact check
    needs it (`SeenIds.settle`), so no Python string is made per event.
    """

    hashes: dict[int, npt.NDArray[np.uint64]]
    text: dict[int, pl.Series]

    def values(self, wid: int) -> list[str]:
        """The request ids of window `wid`, as text."""
        return self.text[wid].to_list()


@dataclass(frozen=True, slots=True)
class Partial:
    """A batch of decoded events, aggregated per window (windows in first-appearance order).

    A request_id seen twice in the batch (and window) counts once; the repeats
    are listed in `repeats` as (window, variant), in arrival order.
    """

    ts: npt.NDArray[np.float64]  # event times in arrival order
    repeated: npt.NDArray[np.bool_] | None  # which events repeat an earlier request_id (None: none)
    windows: list[WindowPart]
    labels: dict[str, list[Any]]  # ROWS -> label rows (LABEL_KINDS order) in order of first appearance
    repeats: list[tuple[int, str]]
    ids: RequestIds
    wids: npt.NDArray[np.int64] | None = None  # the window of each event (ts // size), when known

    @property
    def events(self) -> int:
        """Number of events summarised (repeats included)."""
        return len(self.ts)


# Everything the request families read of an event (families.SIGNATURE) and its window: events with
# equal values here count alike.
_GROUP_KEYS = ("wid", *SIGNATURE)
# Where a user request's label row sits in a signature row (user requests carry no probe labels).
_USER_LABELS = itemgetter(*(SIGNATURE.index(field) for kind, field in LABELS if kind not in PROBE_LABELS))
# What the counters and label caps read of a frame.
_NARROW = tuple(dict.fromkeys((*LABEL_FIELDS, *POPULATION_FIELDS,
                               *(f for f in SIGNATURE if f != "population"), "row")))
_PROBE_COLUMNS = tuple(dict.fromkeys(
    c for f in PROBE_FAMILIES for c in (*f.fields, *((f.when.field,) if f.when is not None else ()))))
_REQUEST_NAMES = tuple(f.name for f in REQUEST_FAMILIES)
_FEW_WINDOWS = 64  # up to this many windows in a batch, rows are split by comparison, not sorting
_NO_SKETCHES = PackedSketches.from_values(np.zeros(0, dtype=np.int64), np.zeros(0), 0)


def _counter() -> Counter[Any]:
    """An empty Counter, without `Counter.__init__`'s argument handling (a summary makes thousands)."""
    return Counter.__new__(Counter)


def summarize_frame(events: pl.DataFrame, size: float, variants: tuple[str, ...]) -> Partial:
    """The `Partial` of a frame of accepted events (frame.SCHEMA, arrival order = `row` ascending).

    Computed column-wise: one group-by over everything the counters and label
    caps read (on categorical codes), one over the pings and probes, one sort
    to number the latency keys and one pass of sketch bins.  Wide text columns
    are hashed rather than copied.  The label rows come in order of first
    appearance (each group's first row), so the judge's caps admit them as
    `Engine.feed` would event by event, whatever the caps already hold.
    """
    return summarize_runs(events, [(0, len(events))], size, variants)[0]


def summarize_runs(events: pl.DataFrame, runs: Sequence[tuple[int, int]], size: float | Sequence[float],
                   variants: tuple[str, ...] | Sequence[tuple[str, ...]]) -> list[Partial]:
    """`summarize_frame` of each run of rows [start, stop) of `events` (ascending, disjoint), in one pass.

    A summary costs a few milliseconds whatever its size (a score of polars
    queries), so the runs of a batch are summarised together: every query
    groups by (run, window) instead of window, and the result is cut per run.
    Each summary is exactly the one `summarize_frame` makes of its run alone.
    `size` and `variants` are the window size and configured variants of every
    run, or one of each per run (a fleet's rollouts, each with its own config).
    """
    sizes = [float(size)] * len(runs) if isinstance(size, int | float) else [float(x) for x in size]
    configured: list[tuple[str, ...]] = (
        [variants] * len(runs) if variants and isinstance(variants[0], str)  # type: ignore[list-item]
        else list(variants))  # type: ignore[arg-type]
    if runs[0][0] == 0 and runs[-1][1] == len(events) and all(
            a[1] == b[0] for a, b in pairwise(runs)):  # the runs tile the frame: nothing to pick
        picked = events
    else:
        picked = events[np.concatenate([np.arange(start, stop) for start, stop in runs]).tolist()]
    lengths = np.array([stop - start for start, stop in runs], dtype=np.int64)
    ts = picked["ts"].to_numpy()
    real = windows_of(ts, sizes[0]) if len(set(sizes)) == 1 else np.floor_divide(
        ts, np.repeat(np.array(sizes), lengths)).astype(np.int64)
    low = int(real.min()) if len(real) else 0
    span = int(real.max()) - low + 1 if len(real) else 1
    wids = np.repeat(np.arange(len(runs), dtype=np.int64) * span, lengths) + (real - low)  # (run, window)
    rid = picked["request_id"]
    hashes = rid.hash().to_numpy()
    present = rid.is_not_null().to_numpy()
    repeated, repeats = repeats_in_frame(picked, wids, hashes, present)
    keep = np.ones(len(ts), dtype=np.bool_) if repeated is None else ~repeated
    narrow = picked.select(*_NARROW).with_columns(wid=pl.Series(wids, dtype=pl.Int64), population=POPULATION)
    if repeated is not None:
        narrow = narrow.filter(pl.Series(keep))
    groups = narrow.group_by(_GROUP_KEYS).agg(n=pl.len(), first=pl.col("row").min())
    counters: dict[int, Counters] = {}
    firsts: list[dict[tuple[Any, ...], int]] = [{} for _ in runs]  # per run: label row -> its first row
    groups = groups.sort("wid")  # one pass over the groups, cut per (run, window): no query per window
    group_wids = groups["wid"].to_numpy()
    all_rows = groups.select(*SIGNATURE, "n").rows()  # as count_requests reads them
    all_firsts = groups["first"].to_list()
    cut = np.flatnonzero(np.r_[True, group_wids[1:] != group_wids[:-1], True]).tolist()
    for lo, hi in pairwise(cut):
        wid = int(group_wids[lo])
        rows = all_rows[lo:hi]
        window = counters[wid] = {name: _counter() for name in _REQUEST_NAMES}
        count_requests(window, rows, None)  # as WindowStats.add_many, with raw labels
        mine = firsts[wid // span]
        for row, first in zip(rows, all_firsts[lo:hi], strict=True):
            if row[POPULATION_AT] == USERS:
                (label_row,) = label_rows_of_users([_USER_LABELS(row)])
                if mine.get(label_row, first) >= first:
                    mine[label_row] = first

    def family(wid: int, name: str) -> Counter[Any]:
        window = counters.get(wid)
        if window is None:
            window = counters[wid] = {}
        found = window.get(name)
        if found is None:
            found = window[name] = _counter()
        return found

    masks = picked.select(user=USER, probe=PROBE)
    user = masks["user"].to_numpy()
    others = ~user & keep  # pings and probes: label rows with their probe labels
    if others.any():
        other_rows = (picked.select(*LABEL_FIELDS, "row").with_columns(wid=pl.Series(wids, dtype=pl.Int64))
                      .filter(pl.Series(others)).group_by("wid", *LABEL_FIELDS).agg(pl.col("row").min()))
        for wid, *values, first in other_rows.iter_rows():
            mine, key = firsts[wid // span], tuple(values)
            if mine.get(key, first) >= first:
                mine[key] = first
    probes = masks["probe"].to_numpy() & keep
    if probes.any():
        _probe_counters(picked.select(_PROBE_COLUMNS).filter(pl.Series(probes))
                        .with_columns(wid=pl.Series(wids[probes], dtype=pl.Int64)), family)
    users = user & keep
    latency = _latency(picked, users, wids)
    canary, gives = _sticky_rows(picked, lengths, configured)
    sticky = _sticky(picked, gives & keep, canary, wids)
    window_rows = _rows_by_window(wids, present & keep)
    parts: list[list[WindowPart]] = [[] for _ in runs]
    for wid in _windows_in_order(wids, keep):
        keys, packed = latency.get(wid, ([], _NO_SKETCHES))
        closed = ClosedWindow({f: c for f, c in counters.get(wid, {}).items() if c}, keys, packed)
        parts[wid // span].append(WindowPart(wid % span + low, closed,
                                             {v: sticky.get((wid, i), [])
                                              for i, v in enumerate(configured[wid // span])}))
    by_run: list[list[tuple[int, str]]] = [[] for _ in runs]
    for wid, variant in repeats:
        by_run[wid // span].append((wid % span + low, variant))
    hashes_of: list[dict[int, npt.NDArray[np.uint64]]] = [{} for _ in runs]
    text_of: list[dict[int, pl.Series]] = [{} for _ in runs]
    if window_rows:  # one gather of the ids' text for every window, then a slice (no copy) per window
        text = rid.gather(np.concatenate(list(window_rows.values())))
        offset = 0
        for wid, at in window_rows.items():
            hashes_of[wid // span][wid % span + low] = hashes[at]
            text_of[wid // span][wid % span + low] = text.slice(offset, len(at))
            offset += len(at)
    out = []
    ends = np.cumsum(lengths).tolist()
    for k, (start, stop) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        mask = None if repeated is None or not repeated[start:stop].any() else repeated[start:stop]
        labels = {ROWS: sorted(firsts[k], key=firsts[k].__getitem__)}
        out.append(Partial(ts[start:stop], mask, parts[k], labels, by_run[k],
                           RequestIds(hashes_of[k], text_of[k]), real[start:stop]))
    return out


def summarize(items: Sequence[Event | DecodeError], size: float, variants: tuple[str, ...]) -> Partial | None:
    """`summarize_frame` of decoded events (None if one is a decode error), for callers holding `Event`s.

    The decoding workers and replay have frames; this is for events made one
    by one (benchmarks, tests).
    """
    if not items or any(type(item) is not Event for item in items):
        return None
    events: Sequence[Event] = items  # type: ignore[assignment]  # checked just above
    return summarize_frame(frames.from_events(events, range(len(events))), size, variants)


def _windows_in_order(wids: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_]) -> list[int]:
    """The windows of the kept rows, in order of first appearance."""
    kept = wids[keep]
    if len(kept) == 0:
        return []
    low, high = int(kept.min()), int(kept.max())
    if low == high:
        return [low]
    if high - low < _FEW_WINDOWS:  # far-apart times (a late event from years ago) count no range
        distinct = np.flatnonzero(np.bincount(kept - low)) + low
        return sorted(distinct.tolist(), key=lambda w: int(np.argmax(kept == w)))
    values, first = np.unique(kept, return_index=True)
    ordered: list[int] = values[np.argsort(first)].tolist()
    return ordered


def _rows_by_window(wids: npt.NDArray[np.int64],
                    mask: npt.NDArray[np.bool_]) -> dict[int, npt.NDArray[np.int64]]:
    """Positions of the masked rows, per window."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return {}
    of = wids[rows]
    low, high = int(of.min()), int(of.max())
    if low == high:
        return {low: rows}
    if high - low < _FEW_WINDOWS:  # a few windows: one comparison each beats a sort
        return {w: rows[of == w] for w in range(low, high + 1) if (of == w).any()}
    order = np.argsort(of, kind="stable")
    chunks = np.split(rows[order], np.flatnonzero(np.diff(of[order])) + 1)
    return {int(wids[chunk[0]]): chunk for chunk in chunks}


def _probe_counters(probes: pl.DataFrame, family: Callable[[int, str], Counter[Any]]) -> None:
    """The probe families (families.PROBE_FAMILIES) with raw labels: one group-by each, on its key fields."""
    for f in PROBE_FAMILIES:
        picked = probes if f.when is None else probes.filter(f.when.column)
        for wid, *values, n in picked.group_by("wid", *f.fields).len().iter_rows():
            family(wid, f.name)[f.key_of(values)] += n


def _latency(events: pl.DataFrame, users: npt.NDArray[np.bool_],
             wids: npt.NDArray[np.int64]) -> dict[int, tuple[list[LatencyKey], PackedSketches]]:
    """Per window: the latency keys (variant, region, cold) of user requests and their packed sketches.

    Each row gets one integer key from its window and the categorical codes of
    variant and region (window first, so keys sort by window); the keys are
    numbered, every sketch of every window is binned in one pass, and the
    packed result is cut per window.
    """
    out: dict[int, tuple[list[LatencyKey], PackedSketches]] = {}
    at = np.flatnonzero(users)
    if len(at) == 0:
        return out
    window = wids[at]
    low = int(window.min())
    variant_f, region_f, cold_f = LATENCY_KEY
    variant = events[variant_f].to_physical().to_numpy()[at].astype(np.int64)
    region = events[region_f].to_physical().to_numpy()[at].astype(np.int64)
    cold = events[cold_f].to_numpy()[at]
    span = (int(window.max()) - low + 1, int(variant.max()) + 1, int(region.max()) + 1)
    if span[0] * span[1] * span[2] * 2 <= max(1 << 22, 4 * len(at)):
        combined = (((window - low) * span[1] + variant) * span[2] + region) * 2 + cold
        seen = np.bincount(combined, minlength=span[0] * span[1] * span[2] * 2) > 0
        keys = np.flatnonzero(seen)
        number = np.cumsum(seen) - 1  # key value -> its rank among the keys present
        code = number[combined]
    else:  # codes too wide to count densely: number the keys by sorting
        combined = np.stack([window - low, variant, region, cold.astype(np.int64)], axis=1)
        keys, code = np.unique(combined, axis=0, return_inverse=True)
        code = code.ravel()
    # Number the keys by window, then by first appearance (as `WindowStats` adds them one by one).
    first = np.empty(len(keys), dtype=np.int64)
    first[code[::-1]] = np.arange(len(code) - 1, -1, -1)  # the last write of a key wins: its first row
    order = np.lexsort((first, window[first]))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    code = rank[code]
    some = at[first[order]]  # the first row of each key, in the new order
    described = events.select(LATENCY_KEY)[some.tolist()].rows()
    key_window = wids[some]  # non-decreasing: keys sort by window first
    packed = PackedSketches.from_columns(code, [events[phase].to_numpy()[at] for phase in PHASES], len(keys))
    starts = np.flatnonzero(np.r_[True, key_window[1:] != key_window[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        out[int(key_window[lo])] = ([(str(v), str(r), bool(c)) for v, r, c in described[lo:hi]],
                                    packed.slice(3 * lo, 3 * hi))
    return out


def _sticky_rows(events: pl.DataFrame, lengths: npt.NDArray[np.int64],
                 configured: list[tuple[str, ...]]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per row: whether its variant is its run's canary, and whether it gives a sticky key (its run's rule).

    The rule is population.sticky_column, evaluated once per distinct variants pair among the runs.
    """
    run_of = np.repeat(np.arange(len(lengths)), lengths)
    variant = events["variant"].cast(pl.String)
    canary = np.zeros(len(events), dtype=np.bool_)
    gives = np.zeros(len(events), dtype=np.bool_)
    for pair in dict.fromkeys(configured):
        mine = np.isin(run_of, [k for k, v in enumerate(configured) if v == pair])
        gives |= mine & events.select(sticky_column(pair)).to_series().to_numpy()
        canary |= mine & (variant == pair[1]).to_numpy()
    return canary, gives


def _sticky(events: pl.DataFrame, gives: npt.NDArray[np.bool_], canary: npt.NDArray[np.bool_],
            wids: npt.NDArray[np.int64]) -> dict[tuple[int, int], list[str]]:
    """Sticky keys of the rows that give one (population.sticky_column), per (window, 0 control / 1 canary).

    Distinct by hash with one sort, so only one string per distinct key leaves
    polars: each row's key is a 64-bit hash of the sticky key mixed with its
    window and variant, its top bits packed above the row's position, and
    sorted; equal tops are one key.  A second, independent hash must agree
    within every run of equal tops, else two keys collided and the distinct
    texts are taken instead (both colliding: odds about n**2 / 2**108).
    """
    code = canary.astype(np.int64)  # a row that gives a key is of its run's control (0) or canary (1)
    at = np.flatnonzero(gives)
    if len(at) == 0:
        return {}
    sticky = events["sticky"]
    window = wids[at]
    place = ((window - window.min()) * 2 + code[at]).astype(np.uint64)
    first = sticky.hash(seed=1).to_numpy()[at] ^ (place * np.uint64(0x9E3779B97F4A7C15))
    bits = np.uint64(max(1, (len(at) - 1).bit_length()))
    packed = (first >> bits << bits) | np.arange(len(at), dtype=np.uint64)
    packed.sort()
    top = packed >> bits
    starts = np.flatnonzero(np.r_[True, top[1:] != top[:-1]])
    order = (packed & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)  # positions in `at`
    second = (sticky.hash(seed=2).to_numpy()[at] ^ (place * np.uint64(0xC2B2AE3D27D4EB4F)))[order]
    runs = np.repeat(starts, np.diff(np.r_[starts, len(at)]))
    if bool((second != second[runs]).any()):  # a collision: distinct by text
        picked = pl.DataFrame({"wid": window, "variant": code[at], "sticky": sticky.gather(at)}).unique()
        key_wid, key_variant = picked["wid"].to_numpy(), picked["variant"].to_numpy()
        texts = picked["sticky"]
    else:
        rows = at[order[starts]]
        key_wid, key_variant, texts = wids[rows], code[rows], sticky.gather(rows)
    # One list of texts in (window, variant) order, cut per (window, variant): no query per group.
    by = np.lexsort((key_variant, key_wid))
    values = texts.gather(by).to_list()
    key_wid, key_variant = key_wid[by], key_variant[by]
    cut = np.flatnonzero(np.r_[True, (key_wid[1:] != key_wid[:-1]) | (key_variant[1:] != key_variant[:-1]),
                               True]).tolist()
    return {(int(key_wid[lo]), int(key_variant[lo])): values[lo:hi] for lo, hi in pairwise(cut)}


__all__ = ["Partial", "RequestIds", "WindowPart", "summarize", "summarize_frame", "summarize_runs"]
