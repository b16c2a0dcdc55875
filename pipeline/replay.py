"""Replay and backtest: judge archived telemetry with the stream's own gates.

An archive (JSONL, JSONL.gz, Parquet; see archive.py) is read in large
batches of decoded events, a polars frame each.  Per batch, polars builds the
same per-window aggregates the stream builds per micro-batch (`Partial`:
counters keyed by raw label values, latency sketches, request ids and sticky
keys per window) with a handful of group-bys, and the stream's `Engine` merges
them under its event-time clock, label caps and horizon and judges every
window with `gates.judge`.  So a replay says what the stream would have said:

* a batch is merged whole only when the engine finds no event in it late,
  future or a duplicate under its clock (`Engine._fits`, as for the stream's
  partial aggregates); otherwise it is split in halves down to small pieces,
  and a small piece goes through `Engine.feed` event by event;
* dead letters are fed in their place in the stream, between the segments of
  valid events around them, so each counts in the window the stream counts it.

`rejudge` re-runs the gates and decisions over the kept closed windows under
other thresholds (what-if), without reading the archive again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl

from pipeline import config as config_mod
from pipeline import frame as frames
from pipeline.config import Config
from pipeline.engine import Engine, Output, Report
from pipeline.gates import Context
from pipeline.judgement import Judgement
from pipeline.model import DecodeError, Event, Verdict, format_time
from pipeline.partial import Partial, WindowPart
from pipeline.sketch import PackedSketches
from pipeline.stats import LABEL_KINDS, PHASES, ROWS, ClosedWindow, LabelCaps, LatencyKey, WindowStats

PARTITION = "0"  # an archive is one stream, as a file source is
SMALL = 512  # segments shorter than this are fed event by event (a summary costs more)
SPLIT_MIN = 4096  # a misfitting batch is halved down to this size, then fed event by event

# Everything the counters read of an event (stats._SIGNATURE, with whether it is a probe) and its
# window: events with equal values here count alike.
_GROUP_KEYS = ("wid", "variant", "region", "x_warm", "probe", "status", "failure_phase", "has_retrieval",
               "index_hash", "metric", "analyzer", "cache_prefix", "cache_hit")
_LABEL_COLUMNS = ("variant", "region", "index_hash", "metric", "analyzer", "cache_prefix", "probe_topic",
                  "probe_question")  # stats._LABEL_ROW's order
# What the counters and label caps read of a frame.
_NARROW = tuple(dict.fromkeys((*_LABEL_COLUMNS, "x_warm", "status", "failure_phase", "has_retrieval",
                               "cache_hit", "row")))
_FEW_WINDOWS = 64  # up to this many windows in a batch, rows are split by comparison, not sorting
_NO_SKETCHES = PackedSketches.from_values(np.zeros(0, dtype=np.int64), np.zeros(0), 0)
_PROBE_COLUMNS = ("variant", "probe_question", "probe_topic", "probe_paraphrase", "probe_seed", "delta_s",
                  "coverage", "lambda_state")


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
    wids = np.floor_divide(ts, size).astype(np.int64)  # Python's // on floats, as the engine
    rid = events["request_id"]
    hashes = rid.hash().to_numpy()
    present = rid.is_not_null().to_numpy()
    repeated, repeats = _repeats(events, wids, hashes, present)
    keep = np.ones(len(ts), dtype=np.bool_) if repeated is None else ~repeated
    narrow = events.select(*_NARROW).with_columns(
        wid=pl.Series(wids, dtype=pl.Int64), probe=pl.col("probe_question").is_not_null())
    if repeated is not None:
        narrow = narrow.filter(pl.Series(keep))
    groups = narrow.group_by(_GROUP_KEYS).agg(n=pl.len())
    counters: dict[int, dict[str, Counter[Any]]] = {}

    def family(wid: int, name: str) -> Counter[Any]:
        window = counters.get(wid)
        if window is None:
            window = counters[wid] = {}
        found = window.get(name)
        if found is None:
            found = window[name] = Counter()
        return found

    label_rows: dict[tuple[Any, ...], None] = {}
    for (wid, variant, region, ping, probe, status, phase, has_r, ih, metric, analyzer, prefix, hit,
         n) in groups.iter_rows():
        if not probe:  # a probe's label row has its topic and question: taken below
            label_rows[(variant, region, ih, metric, analyzer, prefix, None, None)] = None
        family(wid, "events")[variant] += n  # as WindowStats.add_many, with raw labels
        if ping:
            family(wid, "x_warm")[(variant, region)] += n
            continue
        if probe:
            continue
        family(wid, "user")[(variant, region)] += n
        family(wid, "statuses")[(variant, region, status)] += n
        if status >= 500:
            family(wid, "errors")[(variant, region)] += n
            family(wid, "classes")[(variant, status, phase or "none")] += n
        if has_r:
            family(wid, "index_obs")[(variant, region, ih, metric, analyzer)] += n
        if prefix is not None:
            family(wid, "prefixes")[(variant, prefix)] += n
        if hit is not None:
            family(wid, "cache")[(variant, "n")] += n
            if hit:
                family(wid, "cache")[(variant, "hit")] += n
    ping = events["x_warm"].to_numpy()
    probe = events["probe_question"].is_not_null().to_numpy()
    if probe.any():
        label_rows.update(dict.fromkeys(
            events.select(_LABEL_COLUMNS).filter(pl.Series(probe & keep)).unique().rows()))
    labels = {ROWS: _in_order(label_rows, narrow, caps)}
    probes = ~ping & probe & keep
    if probes.any():
        _probe_counters(events.select(_PROBE_COLUMNS).filter(pl.Series(probes))
                        .with_columns(wid=pl.Series(wids[probes], dtype=pl.Int64)), family)
    users = ~ping & ~probe & keep
    latency = _latency(events, users, wids)
    sticky = _sticky(events, users, wids, variants)
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
    firsts = (narrow.group_by(_LABEL_COLUMNS).agg(first=pl.col("row").min()).sort("first")
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


def _repeats(events: pl.DataFrame, wids: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint64],
             present: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_] | None, list[tuple[int, str]]]:
    """Events whose request_id came before in the same window (as `Engine.feed` drops them).

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


def _probe_counters(probes: pl.DataFrame, family: Callable[[int, str], Counter[Any]]) -> None:
    """The probe families of WindowStats._add_probes, with raw labels."""
    for wid, variant, n in probes.group_by("wid", "variant").len().rows():
        family(wid, "probes")[variant] += n
    for wid, variant, value, n in (probes.filter(pl.col("delta_s").is_not_null())
                                   .group_by("wid", "variant", "delta_s").len().rows()):
        family(wid, "delta_s")[(variant, round(value, 4))] += n  # Python's rounding, as the stream
    for wid, variant, topic, value, n in (probes.filter(pl.col("coverage").is_not_null())
                                          .group_by("wid", "variant", "probe_topic", "coverage")
                                          .len().rows()):
        family(wid, "coverage")[(variant, topic, round(value, 4))] += n
    for wid, *key, n in (probes.filter(pl.col("lambda_state") >= 0)
                         .group_by("wid", "variant", "probe_question", "probe_paraphrase", "probe_seed",
                                   "lambda_state").len().rows()):
        family(wid, "lam")[tuple(key)] += n


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
    variant = events["variant"].to_physical().to_numpy()[at].astype(np.int64)
    region = events["region"].to_physical().to_numpy()[at].astype(np.int64)
    cold = events["cold_start"].to_numpy()[at]
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
    described = events.select("variant", "region", "cold_start")[some.tolist()].rows()
    key_window = wids[some]  # non-decreasing: keys sort by window first
    packed = PackedSketches.from_columns(code, [events[phase].to_numpy()[at] for phase in PHASES], len(keys))
    starts = np.flatnonzero(np.r_[True, key_window[1:] != key_window[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        out[int(key_window[lo])] = ([(str(v), str(r), bool(c)) for v, r, c in described[lo:hi]],
                                    packed.slice(3 * lo, 3 * hi))
    return out


def _sticky(events: pl.DataFrame, users: npt.NDArray[np.bool_], wids: npt.NDArray[np.int64],
            variants: tuple[str, ...]) -> dict[tuple[int, str], list[str]]:
    """Sticky keys of the configured variants' user requests, per (window, variant).

    Distinct by hash with one sort, so only one string per distinct key leaves
    polars: each row's key is a 64-bit hash of the sticky key mixed with its
    window and variant, its top bits packed above the row's position, and
    sorted; equal tops are one key.  A second, independent hash must agree
    within every run of equal tops, else two keys collided and the distinct
    texts are taken instead (both colliding: odds about n**2 / 2**108).
    """
    wanted = pl.Series(variants, dtype=pl.Categorical).to_physical().to_numpy()
    code = events["variant"].to_physical().to_numpy()
    at = np.flatnonzero(users & np.isin(code, wanted))
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


class Replayer:
    """Feeds decoded batches to an `Engine` in stream order; returns what closes.

    Request ids of open windows are kept here as hashes (to check a batch for
    duplicates of earlier ones) and as text, handed to the engine only when a
    piece has to go through `Engine.feed`, which checks them one by one.
    """

    def __init__(self, cfg: Config, keep: bool = True) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg, (PARTITION,))
        if keep:
            self.engine.kept = []
        self.variants = (cfg.control, cfg.canary)
        self.hashes: dict[int, list[npt.NDArray[np.uint64]]] = {}  # open window -> request id hashes
        self.pending: dict[int, list[RequestIds]] = {}  # ... -> request ids the engine has not got
        self.summarized = 0  # events merged as batch summaries
        self.one_by_one = 0  # events fed one by one (small pieces, or a late/future/duplicate inside)

    def feed(self, events: pl.DataFrame, dead: Sequence[tuple[int, DecodeError]],
             name: str, raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        """One batch: accepted events (frame.SCHEMA, `row` ascending) and dead letters by row.

        `name` prefixes the dead letters' `source` ("name:line", 1-based as the
        file source counts); `raws(rows)` gives the original messages of rows.
        Runs of valid events between dead letters are summarised when long;
        short ones go to the engine together with the dead letters around them.
        """
        out: list[Output] = []
        rows = events["row"].to_numpy()
        start = 0
        mixed: list[pl.DataFrame | tuple[int, DecodeError]] = []
        for row, error in dead:
            end = int(np.searchsorted(rows, row))
            if end - start >= SMALL:
                out.extend(self._one_by_one(mixed, name, raws))
                mixed = []
                out.extend(self._segment(events.slice(start, end - start), name, raws))
            elif end > start:
                mixed.append(events.slice(start, end - start))
            mixed.append((row, error))
            start = end
        out.extend(self._one_by_one(mixed, name, raws))
        out.extend(self._segment(events.slice(start), name, raws))
        self._forget_closed()
        return out

    def close(self) -> list[Output]:
        """End of the archives: every open window closes."""
        return self.engine.close()

    def _segment(self, events: pl.DataFrame, name: str,
                 raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        n = len(events)
        if n == 0:
            return []
        if self.engine.watermark == -math.inf and n > SMALL:
            # The first events start the clock; until then the engine judges staleness one by one.
            return (self._segment(events.slice(0, SMALL), name, raws)
                    + self._segment(events.slice(SMALL), name, raws))
        if n >= SMALL:
            part, ids = summarize_frame(events, self.engine.size, self.variants, self.engine.caps)
            if self._ids_fit(ids) and self.engine._fits(part, PARTITION):
                self.summarized += n
                for wid, hashes in ids.hashes.items():
                    self.hashes.setdefault(wid, []).append(hashes)
                    self.pending.setdefault(wid, []).append(ids)
                return self.engine.feed_partial(part, PARTITION, list, fits=True)
            if n > SPLIT_MIN:
                half = n // 2
                return (self._segment(events.slice(0, half), name, raws)
                        + self._segment(events.slice(half), name, raws))
        return self._one_by_one([events], name, raws)

    def _one_by_one(self, pieces: Sequence[pl.DataFrame | tuple[int, DecodeError]], name: str,
                    raws: Callable[[Sequence[int]], list[bytes]]) -> list[Output]:
        """Feed events and dead letters in order through `Engine.feed`, as the stream does."""
        if not pieces:
            return []
        ids = self.engine.ids  # the engine checks duplicates against every id of the window
        for wid, batches in self.pending.items():
            if wid in ids:
                for batch in batches:
                    ids[wid].update(batch.values(wid))
        self.pending.clear()
        items: list[Event | DecodeError] = []
        sources: list[int] = []
        for piece in pieces:
            if isinstance(piece, tuple):
                sources.append(piece[0])
                items.append(piece[1])
                continue
            self.one_by_one += len(piece)
            wids = np.floor_divide(piece["ts"].to_numpy(), self.engine.size).astype(np.int64)
            hashes = piece["request_id"].hash().to_numpy()
            present = piece["request_id"].is_not_null().to_numpy()
            for wid in np.unique(wids[present]).tolist():  # a superset of what the engine keeps: safe
                self.hashes.setdefault(wid, []).append(hashes[present & (wids == wid)])
            rows = piece["row"].to_list()
            sources.extend(rows)
            items.extend(frames.to_events(piece, raws(rows)))
        return self.engine.feed(items, PARTITION, locate=lambda i: f"{name}:{sources[i] + 1}")

    def _ids_fit(self, ids: RequestIds) -> bool:
        """No request id of the batch came before in its window, and the windows keep them all."""
        cap = self.cfg.limits.dedupe_max_ids
        for wid, new in ids.hashes.items():
            old = self.hashes.get(wid)
            if old is None:
                if len(new) > cap:
                    return False
                continue
            waiting = sum(len(batch.rows[wid]) for batch in self.pending.get(wid, []))
            if len(self.engine.ids.get(wid, ())) + waiting + len(new) > cap:
                return False
            if np.isin(new, np.concatenate(old) if len(old) > 1 else old[0]).any():
                return False  # a repeat, or a hash collision: either way `feed` decides exactly
        return True

    def _forget_closed(self) -> None:
        open_ = self.engine.open
        for table in (self.hashes, self.pending):
            for wid in [w for w in table if w not in open_]:
                del table[wid]


def rejudge(cfg: Config, kept: Sequence[tuple[int, ClosedWindow, Context]]) -> Iterator[Verdict]:
    """The verdicts of the kept windows under `cfg` (other thresholds, stage or sustain).

    The horizon is rebuilt window by window as the engine builds it (merge the
    closing window, subtract the one that falls out), and every window is
    judged and decided by the same functions.
    """
    horizon = WindowStats.new()
    history: deque[ClosedWindow] = deque()
    n = cfg.windows.horizon_windows
    judgement = Judgement(cfg.stage)
    for wid, closed, ctx in kept:
        horizon.merge(closed)
        history.append(closed)
        if len(history) > n:
            horizon.subtract(history.popleft())
        yield judgement.verdict(cfg, wid, closed, horizon, ctx)


def first_stop(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The first verdict that says stop."""
    return next((v for v in verdicts if v.decision == "stop"), None)


def gate_states(verdict: Verdict) -> dict[tuple[str, str | None], str]:
    """(gate, region) -> status of one verdict."""
    return {(row.gate, row.region): str(row.status) for row in verdict.gates}





# -- a whole replay ----------------------------------------------------------------------------------

class ArchiveBatch(Protocol):
    """What `replay` reads: one decoded batch of an archive (archive.Batch)."""

    @property
    def source(self) -> str: ...
    @property
    def frame(self) -> pl.DataFrame: ...
    @property
    def dead(self) -> list[tuple[int, DecodeError]]: ...
    @property
    def done_bytes(self) -> int: ...
    def raws(self, rows: Sequence[int]) -> list[bytes]: ...


@dataclass
class Outcome:
    """What a replay found: the verdicts with their window statistics, and counts."""

    verdicts: list[Verdict] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)  # report.window_record per verdict
    kept: list[tuple[int, ClosedWindow, Context]] = field(default_factory=list)
    events: int = 0
    dead_letters: int = 0
    totals: dict[str, int] = field(default_factory=dict)


def replay(cfg: Config, batches: Iterable[ArchiveBatch], *, verdicts: IO[bytes], dead_letters: IO[bytes],
           windows: IO[bytes], on_batch: Callable[[ArchiveBatch], None] | None = None) -> Outcome:
    """Judge decoded batches in order; write verdicts, dead letters and window statistics as JSONL.

    Lines are written as windows close, so what was judged before a failure
    (an archive that turns out corrupt half-way) stays on disk.
    """
    replayer = Replayer(cfg)
    outcome = Outcome()

    def emit(items: list[Output]) -> None:
        for item in items:
            if isinstance(item, Report):
                outcome.verdicts.append(item.verdict)
                record = window_record(item, cfg)
                outcome.windows.append(record)
                verdicts.write(orjson.dumps(item.verdict.to_record()) + b"\n")
                windows.write(orjson.dumps(record) + b"\n")
            else:
                outcome.dead_letters += 1
                dead_letters.write(orjson.dumps(item.to_record()) + b"\n")

    for batch in batches:
        outcome.events += len(batch.frame) + len(batch.dead)
        emit(replayer.feed(batch.frame, batch.dead, Path(batch.source).name, batch.raws))
        if on_batch is not None:
            on_batch(batch)
    emit(replayer.close())
    outcome.kept = replayer.engine.kept or []
    outcome.totals = {**replayer.engine.totals, "summarized": replayer.summarized,
                      "one_by_one": replayer.one_by_one}
    return outcome

# -- per-window record -----------------------------------------------------------------------------

P95 = 0.95  # the quantile of the latency record (Engine keeps 0.5, 0.95 and 0.99)


def window_record(rep: Report, cfg: Config) -> dict[str, Any]:
    """The statistics behind one verdict, JSON-able: this window's counts and the horizon's views.

    Per-variant fields hold the control and the canary only; counts of a
    variant absent from the window are 0, horizon statistics a variant has
    none of (no probes, no cache blocks) are left out.  Lists are sorted.
    """
    judged = (cfg.control, cfg.canary)
    c: Mapping[str, Counter[Any]] = rep.window.c if rep.window is not None else {}
    empty: Counter[Any] = Counter()

    def per_variant(family: str) -> dict[str, int]:
        out = dict.fromkeys(judged, 0)
        for (variant, _region), n in c.get(family, empty).items():
            if variant in out:
                out[variant] += n
        return out

    dead: Counter[str] = Counter()
    for (_variant, reason), n in c.get("dead", empty).items():
        dead[str(reason)] += n
    medians = rep.horizon_stats.get("probe_median", {})
    hits = rep.horizon_stats.get("cache_hit", {})
    field = cfg.thresholds.latency_field
    return {
        "window_end": format_time(rep.verdict.window_end),
        "users": per_variant("user"),
        "errors": per_variant("errors"),
        "classes": [{"variant": v, "status": s, "phase": ph, "n": n}
                    for (v, s, ph), n in sorted(c.get("classes", empty).items()) if v in judged],
        "dead": dict(sorted(dead.items())),
        "p95_warm_ms": [{"variant": v, "region": r, "ms": ms}
                        for (v, r, temp, phase, q), ms in sorted(rep.quantiles.items())
                        if v in judged and temp == "warm" and phase == field and q == P95],
        "delta_s_median": {v: medians[(v, "delta_s", "")] for v in judged if (v, "delta_s", "") in medians},
        "coverage_median": [{"variant": v, "topic": topic, "value": value}
                            for (v, kind, topic), value in sorted(medians.items())
                            if v in judged and kind == "coverage"],
        "cache_hit_rate": {v: hits[(v,)] for v in judged if (v,) in hits},
        "index": [{"variant": v, "region": r, "index_hash": ih, "metric": m, "analyzer": a, "n": int(n)}
                  for (v, r, ih, m, a), n in sorted(rep.horizon_stats.get("index", {}).items())
                  if v in judged],
        "prefix": [{"variant": v, "prefix": p, "n": int(n)}
                   for (v, p), n in sorted(rep.horizon_stats.get("prefix", {}).items()) if v in judged],
    }

# -- what-if -----------------------------------------------------------------------------------------

WHAT_IF_TABLES = {"thresholds", "promotion", "rollout"}  # rollout: its stage only


def what_if_config(base_text: str, text: str) -> Config:
    """The rollout config with a what-if file's [thresholds], [promotion] and rollout.stage over it.

    Raises ConfigError naming the key that is not allowed or not valid.
    """
    doc = config_mod.read_toml(base_text)
    alt = config_mod.read_toml(text)
    for table, values in alt.items():
        if table not in WHAT_IF_TABLES or not isinstance(values, dict):
            raise config_mod.ConfigError(table, "a what-if file sets [thresholds], [promotion] and "
                                         "rollout.stage only (windows and limits shape the aggregates)")
        if table == "rollout" and set(values) - {"stage"}:
            key = sorted(set(values) - {"stage"})[0]
            raise config_mod.ConfigError(f"rollout.{key}", "a what-if file may change rollout.stage only")
        merged = dict(doc.get(table, {}))
        merged.update(values)
        doc[table] = merged
    return config_mod.parse_doc(doc)


def config_changes(base: Config, alt: Config) -> dict[str, tuple[Any, Any]]:
    """Settings that differ, as dotted keys -> (base value, what-if value)."""
    def flat(cfg: Config) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for table, values in cfg.effective().items():
            if isinstance(values, dict):
                out.update({f"{table}.{k}": v for k, v in values.items()})
            else:
                out[table] = values
        return out

    a, b = flat(base), flat(alt)
    return {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}


@dataclass(frozen=True, slots=True)
class Flip:
    """A gate row whose status differs under the what-if, over a run of windows."""

    gate: str
    region: str | None
    base: str
    alt: str
    first: float  # window_end of the first window where it flips
    windows: int


def compare(base: Sequence[Verdict], alt: Sequence[Verdict]) -> tuple[Counter[tuple[str, str]], list[Flip]]:
    """Decision changes ((base, alt) -> windows) and gate flips between two timelines of the same windows."""
    decisions: Counter[tuple[str, str]] = Counter()
    flips: dict[tuple[str, str | None, str, str], list[float]] = {}
    for a, b in zip(base, alt, strict=True):
        if a.decision != b.decision:
            decisions[(str(a.decision), str(b.decision))] += 1
        before, after = gate_states(a), gate_states(b)
        for key in dict.fromkeys([*before, *after]):
            old, new = before.get(key, "absent"), after.get(key, "absent")
            if old != new:
                flips.setdefault((*key, old, new), []).append(b.window_end)
    out = [Flip(gate, region, old, new, ends[0], len(ends))
           for (gate, region, old, new), ends in flips.items()]
    return decisions, sorted(out, key=lambda f: (f.first, f.gate, f.region or ""))


def describe(name: str, changes: dict[str, tuple[Any, Any]], base: Sequence[Verdict],
             alt: Sequence[Verdict]) -> tuple[str, dict[str, Any]]:
    """What changes under a what-if: text for the terminal and a record for the report."""
    decisions, flips = compare(base, alt)
    was, now = first_stop(base), first_stop(alt)

    def when(v: Verdict | None) -> str:
        return format_time(v.window_end) if v else "never"

    lines = [f"what-if {name}: " + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
                                    or "no setting differs")]
    lines.append(f"  first stop: {when(now)}" + ("" if when(now) == when(was) else f" (replay: {when(was)})"))
    if decisions:
        moved = ", ".join(f"{a} -> {b} {n}" for (a, b), n in decisions.most_common())
        lines.append(f"  decisions: {sum(decisions.values())} of {len(alt)} windows change ({moved})")
    else:
        lines.append(f"  decisions: none of {len(alt)} windows change")
    for f in flips[:20]:
        where = f"{f.gate} {f.region}" if f.region else f.gate
        lines.append(f"  flips: {where} {f.base} -> {f.alt} in {f.windows} windows "
                     f"from {format_time(f.first)}")
    if len(flips) > 20:
        lines.append(f"  ... and {len(flips) - 20} more gate flips")
    record = {
        "name": name,
        "changes": {k: [a, b] for k, (a, b) in changes.items()},
        "first_stop": {"base": was and format_time(was.window_end),
                       "alt": now and format_time(now.window_end)},
        "decisions_changed": sum(decisions.values()),
        "flips": [{"window_end": format_time(f.first), "gate": f.gate, "region": f.region, "base": f.base,
                   "alt": f.alt, "windows": f.windows} for f in flips],
    }
    return "\n".join(lines), record


__all__ = [
    "ArchiveBatch",
    "Flip",
    "Outcome",
    "Replayer",
    "compare",
    "config_changes",
    "describe",
    "first_stop",
    "gate_states",
    "rejudge",
    "replay",
    "summarize_frame",
    "what_if_config",
]
