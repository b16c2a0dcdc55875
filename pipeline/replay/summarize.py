"""Column-wise summaries of archived events: a polars frame -> the stream's `Partial`.

`summarize_frame` builds, with a handful of group-bys, the per-window
aggregates the stream builds per micro-batch (`partial.summarize`): counters
keyed by raw label values, latency sketches, sticky keys per window, and
the request ids separately (as hashes, and text when needed).

It restates no rule of the stream's: populations, label rows, the sticky-key
population and value rounding are population.py's column forms; the request
families are counted by the stream's own `families.count_requests` over the
rows of one group-by on `families.SIGNATURE`; the probe families are grouped
on the fields `families.TABLE` gives them and keyed by `Family.key_of`; the
latency key is `families.LATENCY_KEY`.  Only the work is column-wise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

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
from pipeline.aggregate.partial import Partial, WindowPart
from pipeline.aggregate.sketch import PackedSketches
from pipeline.aggregate.stats import ClosedWindow, LabelCaps
from pipeline.clock import windows_of
from pipeline.dedupe import repeats_in_frame
from pipeline.population import (
    LABEL_FIELDS,
    LABEL_KINDS,
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
_FEW_WINDOWS = 64  # up to this many windows in a batch, rows are split by comparison, not sorting
_NO_SKETCHES = PackedSketches.from_values(np.zeros(0, dtype=np.int64), np.zeros(0), 0)


@dataclass(frozen=True, slots=True)
class RequestIds:
    """The request ids of a batch's windows (repeats dropped): hashes to check, text when needed."""

    hashes: dict[int, npt.NDArray[np.uint64]]
    rows: dict[int, npt.NDArray[np.int64]]  # window -> positions in `column`
    column: pl.Series

    def values(self, wid: int) -> list[str]:
        """The request ids of window `wid`, as text."""
        return self.column.gather(self.rows[wid]).to_list()


def summarize_frame(events: pl.DataFrame, size: float, variants: tuple[str, ...],
                    caps: LabelCaps | None = None) -> tuple[Partial, RequestIds]:
    """The `Partial` of a frame of accepted events (arrival order), as `partial.summarize` builds it.

    Computed column-wise: one group-by over everything the counters and label
    caps read (on categorical codes), one over the probes, one sort to number
    the latency keys and one pass of sketch bins.  Wide text columns are
    hashed rather than copied.  Request ids are not listed in the Partial (a
    Python string per event would cost more than all the rest); they come back
    separately for `Replayer` to check and keep.
    """
    ts = events["ts"].to_numpy()
    wids = windows_of(ts, size)
    rid = events["request_id"]
    hashes = rid.hash().to_numpy()
    present = rid.is_not_null().to_numpy()
    repeated, repeats = repeats_in_frame(events, wids, hashes, present)
    keep = np.ones(len(ts), dtype=np.bool_) if repeated is None else ~repeated
    narrow = events.select(*_NARROW).with_columns(wid=pl.Series(wids, dtype=pl.Int64), population=POPULATION)
    if repeated is not None:
        narrow = narrow.filter(pl.Series(keep))
    groups = narrow.group_by(_GROUP_KEYS).agg(n=pl.len())
    counters: dict[int, Counters] = {}
    user_rows: list[tuple[Any, ...]] = []
    for (wid,), window_groups in groups.partition_by("wid", as_dict=True, include_key=False).items():
        rows = window_groups.rows()
        window = counters[int(wid)] = {f.name: Counter() for f in REQUEST_FAMILIES}
        count_requests(window, rows, None)  # as WindowStats.add_many, with raw labels
        user_rows += [_USER_LABELS(row) for row in rows if row[POPULATION_AT] == USERS]

    def family(wid: int, name: str) -> Counter[Any]:
        window = counters.get(wid)
        if window is None:
            window = counters[wid] = {}
        found = window.get(name)
        if found is None:
            found = window[name] = Counter()
        return found

    masks = events.select(user=USER, probe=PROBE)
    user = masks["user"].to_numpy()
    label_rows = dict.fromkeys(label_rows_of_users(dict.fromkeys(user_rows)))
    others = ~user & keep  # pings and probes: label rows with their probe labels
    if others.any():
        label_rows.update(dict.fromkeys(
            events.select(LABEL_FIELDS).filter(pl.Series(others)).unique().rows()))
    labels = {ROWS: _in_order(label_rows, narrow, caps)}
    probes = masks["probe"].to_numpy() & keep
    if probes.any():
        _probe_counters(events.select(_PROBE_COLUMNS).filter(pl.Series(probes))
                        .with_columns(wid=pl.Series(wids[probes], dtype=pl.Int64)), family)
    users = user & keep
    latency = _latency(events, users, wids)
    sticky = _sticky(events, events.select(sticky_column(variants)).to_series().to_numpy() & keep, wids,
                     variants)
    window_rows = _rows_by_window(wids, present & keep)
    ids = RequestIds({w: hashes[r] for w, r in window_rows.items()}, window_rows, rid)
    parts = []
    for wid in _windows_in_order(wids, keep):
        keys, packed = latency.get(wid, ([], _NO_SKETCHES))
        closed = ClosedWindow({f: c for f, c in counters.get(wid, {}).items() if c}, keys, packed)
        parts.append(WindowPart(wid, closed, [], {v: sticky.get((wid, v), []) for v in variants}))
    return Partial(ts, repeated, parts, labels, repeats, wids), ids


def _in_order(rows: dict[tuple[Any, ...], None], narrow: pl.DataFrame,
              caps: LabelCaps | None) -> list[tuple[Any, ...]]:
    """The label rows in order of first appearance, as the caps must be offered them.

    Order decides which values keep their own label only when a cap could
    fill: when every label kind, with what `caps` holds already, stays below
    half its cap, every value is admitted whatever the order, and the order
    of the group-by is as good (finding first appearances costs a second
    group-by).
    """
    if caps is not None:
        values: dict[str, set[Any]] = {kind: set() for kind in LABEL_KINDS}
        for row in rows:
            for kind, value in zip(LABEL_KINDS, row, strict=True):
                if value is not None:
                    values[kind].add(value)
        if all(len(caps.kinds.get(kind, ())) + len(found) < caps.cap(kind) // 2
               for kind, found in values.items()):
            return list(rows)
    firsts = (narrow.group_by(LABEL_FIELDS).agg(first=pl.col("row").min()).sort("first")
              .drop("first").rows())
    return firsts


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
    some = np.zeros(len(keys), dtype=np.int64)
    some[code] = at  # a row of each key
    described = events.select(LATENCY_KEY)[some.tolist()].rows()
    key_window = wids[some]  # non-decreasing: keys sort by window first
    packed = PackedSketches.from_columns(code, [events[phase].to_numpy()[at] for phase in PHASES], len(keys))
    starts = np.flatnonzero(np.r_[True, key_window[1:] != key_window[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        out[int(key_window[lo])] = ([(str(v), str(r), bool(c)) for v, r, c in described[lo:hi]],
                                    packed.slice(3 * lo, 3 * hi))
    return out


def _sticky(events: pl.DataFrame, gives: npt.NDArray[np.bool_], wids: npt.NDArray[np.int64],
            variants: tuple[str, ...]) -> dict[tuple[int, str], list[str]]:
    """Sticky keys of the rows that give one (population.sticky_column), per (window, variant).

    Distinct by hash with one sort, so only one string per distinct key leaves
    polars: each row's key is a 64-bit hash of the sticky key mixed with its
    window and variant, its top bits packed above the row's position, and
    sorted; equal tops are one key.  A second, independent hash must agree
    within every run of equal tops, else two keys collided and the distinct
    texts are taken instead (both colliding: odds about n**2 / 2**108).
    """
    wanted = pl.Series(variants, dtype=pl.Categorical).to_physical().to_numpy()
    code = events["variant"].to_physical().to_numpy()
    at = np.flatnonzero(gives)
    if len(at) == 0:
        return {}
    sticky = events["sticky"]
    window = wids[at]
    place = ((window - window.min()) * 2 + (code[at] == wanted[1])).astype(np.uint64)
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
    else:
        rows = at[order[starts]]
        picked = pl.DataFrame({"wid": wids[rows], "variant": code[rows], "sticky": sticky.gather(rows)})
    names = dict(zip(wanted.tolist(), variants, strict=True))
    out: dict[tuple[int, str], list[str]] = {}
    for (wid, variant), group in picked.partition_by("wid", "variant", as_dict=True).items():
        out[(int(wid), names[int(variant)])] = group["sticky"].to_list()
    return out


__all__ = ["RequestIds", "summarize_frame"]
