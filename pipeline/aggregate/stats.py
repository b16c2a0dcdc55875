"""Window aggregates: what one event-time window remembers, and the horizon sum.

A `WindowStats` is built with `new`, fed with `add_many` (a micro-batch,
aggregated column-wise) or `add` (one event), and combined with `merge` /
`subtract`.  All non-latency statistics are integer counters keyed by small
tuples (the families of families.py, which also says what an event adds to
each), so a horizon is a running sum: merge the window that closes, subtract
the one that falls out.  Latency lives in `Sketch`es (see sketch.py), which
also subtract.  Which events count where, and which fields are labels, is
population.py's.

Memory bounds (per window, all from event content):
* label values (variant, region, topic, prefix, INDEX_HASH, metric, analyzer)
  are capped by `LabelCaps` at `limits.max_label_values` each, the rest fold
  into "other"; probe question ids at `limits.max_question_ids`; values brought
  by variants other than the control and canary take at most half of a cap;
* λ states keep paraphrase and seed only for the control's and canary's probes
  on questions under the cap (the ones the gate reads), so random paraphrase or
  seed numbers on other probes cannot add keys;
* ΔS and coverage are kept as exact counts of values rounded to 1e-4, so at
  most 10,001 distinct values per (variant, topic);
* latency: 3 dense sketches (9 kB each) per (variant, region, warm/cold) while
  a window is open, a few hundred bytes each once compacted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from pipeline.aggregate.families import (
    FAMILIES,
    KEY_KINDS,
    LATENCY_KEY,
    PHASES,
    POPULATION_AT,
    LatencyKey,
    Relabeled,
    count_probes,
    count_requests,
    signatures,
)
from pipeline.aggregate.sketch import PackedSketches, Sketch
from pipeline.config import Config
from pipeline.model import Event
from pipeline.population import ADMITTED, LABEL_KINDS, ROWS, USERS, label_row, probes_of, users_of

OTHER = "other"
QUESTION_CAP = 4096  # default of limits.max_question_ids
PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
LamKey = tuple[str, str | None, int, int, int]  # variant, question, paraphrase, seed, λ state
_LATENCY_KEY = attrgetter(*LATENCY_KEY)
_LATENCIES = attrgetter(*PHASES)


class LabelCaps:
    """Caps the distinct values kept per event-derived label; the rest become "other".

    Each label keeps at most `limit` values (probe question ids: `question_limit`),
    the config's own names (`reserved`) included, in order of first appearance.
    The reserved variants, the control and the canary, are the judged ones, and
    a flood of other variants must not fold away the regions, topics or question
    ids the gates judge them by.  So values are admitted in two contexts:

    * on an event of the control or canary (`judged=True`): any free slot;
    * on an event of any other variant: at most half the slots, and such an
      event sees only the values admitted in its own context (and the
      reserved ones); a value kept for the judged variants alone still counts
      under "other" for the rest.

    Either way a value's label in a context is settled the first time it is
    offered in that context (a refusal means the label, or its share, is full
    for good), so labels do not depend on how events are batched.  Variant
    names are one context: the judged ones are reserved anyway.
    """

    # Default for engines pickled before this attribute existed (see also __setstate__).
    question_limit: int = QUESTION_CAP

    def __init__(self, limit: int, reserved: dict[str, list[str]] | None = None,
                 question_limit: int = QUESTION_CAP) -> None:
        self.limit = limit
        self.question_limit = question_limit
        self.kinds: dict[str, dict[str, str]] = {}  # every value kept, per label
        self.shared: dict[str, set[str]] = {}  # values other variants' events see (reserved included)
        self.shares: Counter[str] = Counter()  # values admitted on other variants' events, per label
        self.folded: Counter[str] = Counter()  # admissions refused, per label
        self.variants = self.kinds["variant"] = {}
        self.regions = self.kinds["region"] = {}
        self.judged = frozenset((reserved or {}).get("variant", ()))
        # Values the config names always keep their own label, however many others come first.
        for kind, values in (reserved or {}).items():
            seen = self.kinds.setdefault(kind, {})
            shared = self.shared.setdefault(kind, set())
            for value in values:
                seen[value] = value
                shared.add(value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Caps pickled before the judged share: every kept value was seen by all variants,
        # and the reserved variants came first.
        self.__dict__.setdefault("shared", {kind: set(seen) for kind, seen in self.kinds.items()})
        self.__dict__.setdefault("shares", Counter())
        self.__dict__.setdefault("judged", frozenset(list(self.kinds.get("variant", {}))[:2]))

    @classmethod
    def for_config(cls, cfg: Config) -> LabelCaps:
        """Caps at limits.max_label_values (questions: limits.max_question_ids), config names reserved."""
        reserved: dict[str, list[str]] = {"variant": [cfg.control, cfg.canary]}
        for spec in cfg.variants.values():
            for kind, value in (("index_hash", spec.index_hash), ("metric", spec.metric),
                                ("analyzer", spec.analyzer), ("prefix", spec.cache_prefix)):
                if value:
                    reserved.setdefault(kind, []).append(value)
        return cls(cfg.limits.max_label_values, reserved, cfg.limits.max_question_ids)

    def cap(self, kind: str) -> int:
        """How many values label `kind` keeps."""
        return self.question_limit if kind == "question" else self.limit

    def admit_all(self, events: list[Event]) -> None:
        """Admit every label value of `events` in order of first appearance."""
        self.admit_rows(dict.fromkeys(map(label_row, events)))

    def admit_rows(self, rows: Iterable[tuple[str | None, ...]]) -> None:
        """Admit the values of label rows (variant first, kinds as LABEL_KINDS), in order."""
        judged = self.judged
        admit = self.admit
        table = [(kind, self.kinds.setdefault(kind, {}), self.shared.setdefault(kind, set()))
                 for kind in LABEL_KINDS]
        for row in rows:
            mine = row[0] in judged
            for (kind, seen, shared), value in zip(table, row, strict=True):
                # known values skip the call: a flood offers every row, nearly all known or refused
                if value is not None and value not in (seen if mine else shared):
                    admit(kind, value, judged=mine)

    def admit_values(self, labels: Mapping[str, Sequence[Any]]) -> None:
        """Admit the values a partial aggregate lists (its ROWS entry, in order of first appearance)."""
        rows = labels.get(ROWS)
        if rows is not None:
            self.admit_rows(rows)
            return
        for kind, values in labels.items():  # values without their variants: as judged ones
            for value in values:
                self.admit(kind, value, judged=True)

    @overload
    def admit(self, kind: str, value: str, limit: int | None = None, *, judged: bool = False) -> str: ...
    @overload
    def admit(self, kind: str, value: None, limit: int | None = None, *, judged: bool = False) -> None: ...
    @overload
    def admit(self, kind: str, value: str | None, limit: int | None = None, *,
              judged: bool = False) -> str | None: ...

    def admit(self, kind: str, value: str | None, limit: int | None = None, *,
              judged: bool = False) -> str | None:
        """The label of `value` on an event of a judged variant (`judged`) or of another one.

        The value itself when kept for that context, or admitted now while
        there is room; else OTHER.  None stays None.
        """
        if value is None:
            return None
        seen = self.kinds.get(kind)
        if seen is None:
            seen = self.kinds[kind] = {}
        cap = limit or self.cap(kind)
        if judged or kind == "variant":
            got = seen.get(value)
            if got is not None:
                return got
            if len(seen) < cap:
                seen[value] = value
                return value
        else:
            shared = self.shared.get(kind)
            if shared is None:
                shared = self.shared[kind] = set()
            if value in shared:
                return value
            if self.shares[kind] < cap // 2 and (value in seen or len(seen) < cap):
                seen[value] = value
                shared.add(value)
                self.shares[kind] += 1
                return value
        self.folded[kind] += 1
        return OTHER

    def label(self, kind: str, value: str, judged: bool) -> str:
        """The label `value` was given in its context (no admission: it must have been offered)."""
        if judged or kind == "variant":
            return self.kinds.get(kind, {}).get(value, OTHER)
        return value if value in self.shared.get(kind, ()) else OTHER

    def lam_key(self, variant: str, key: LamKey) -> LamKey:
        """Counter key of a probe's λ state: `key` is (variant label, question label, paraphrase,
        seed, state) of a probe of `variant`.

        The λ gate reads only the control's and canary's probes on questions that
        kept their own label.  Other probes keep neither paraphrase nor seed
        (question past the cap: (variant, OTHER, 0, 0, state); other variant:
        (variant, question, 0, 0, state)), so random paraphrase and seed numbers
        cannot grow the counters beyond the label caps.
        """
        if key[1] == OTHER:
            return (key[0], OTHER, 0, 0, key[4])
        if self.judged and variant not in self.judged:
            return (key[0], key[1], 0, 0, key[4])
        return key


class WindowStats:
    """Statistics of one window (or of a horizon, when used as a running sum)."""

    __slots__ = ("_pending", "accuracy", "c", "latency")

    def __init__(self, accuracy: float = 0.01) -> None:
        self.accuracy = accuracy
        self.c: dict[str, Counter[Any]] = {f: Counter() for f in FAMILIES}
        self.latency: dict[LatencyKey, list[Sketch]] = {}

    @classmethod
    def new(cls, accuracy: float = 0.01) -> WindowStats:
        """An empty window."""
        return cls(accuracy)

    def add(self, ev: Event, caps: LabelCaps) -> None:
        """Fold one accepted, de-duplicated event in."""
        self.add_many([ev], caps)

    def add_many(self, evs: list[Event], caps: LabelCaps | None, latency: bool = True) -> None:
        """Fold a micro-batch of accepted, de-duplicated events in (`caps` None: raw labels).

        Counters as `add_counts`; latencies go to the sketches in one numpy
        pass per (variant, region, warm/cold).  `latency=False` leaves the
        sketches out (partial aggregates pack theirs with `pack_latency`).
        """
        users, capped = self._count(evs, caps)
        if users and latency:
            self._add_latency(users, capped)

    def add_counts(self, evs: list[Event], caps: LabelCaps | None) -> list[Event]:
        """Add a micro-batch to the counters (not the sketches); returns its user requests.

        Events are counted by their signature tuple (families.signatures: a
        C-level `Counter(map(attrgetter(...)))`), so the per-event Python work
        is a few attribute reads; counters are then updated once per distinct
        signature.  Label values are admitted to the caps in order of first
        appearance.
        """
        return self._count(evs, caps)[0]

    def _count(self, evs: list[Event], caps: LabelCaps | None) -> tuple[list[Event], Relabeled]:
        """`add_counts`, also returning the labels given to each raw (variant, region)."""
        if not evs:
            return [], {}
        rows = signatures(evs)
        capped = count_requests(self.c, rows, caps)
        if any(row[POPULATION_AT] != USERS for row in rows):  # pings or probes among them
            probes = probes_of(evs)
            if probes:
                count_probes(self.c, probes, caps, capped)
            return users_of(evs), capped
        return evs, capped

    def _add_latency(self, users: list[Event], capped: Relabeled) -> None:
        codes: dict[tuple[str, str, bool], int] = {}
        index = np.fromiter((codes.setdefault(k, len(codes)) for k in map(_LATENCY_KEY, users)),
                            dtype=np.int64, count=len(users))
        values = np.array(list(map(_LATENCIES, users)), dtype=np.float64).reshape(len(users), 3)
        # Raw keys past the label caps share their labels' sketches: one pass per label key,
        # not per raw key (a flood of distinct values would otherwise cost a pass each).
        labels: dict[LatencyKey, int] = {}
        relabel = [labels.setdefault((*capped[(variant, region)], cold), len(labels))
                   for variant, region, cold in codes]
        if len(labels) < len(codes):
            index = np.array(relabel, dtype=np.int64)[index]
        for key, code in labels.items():
            sketches = self.latency.get(key)
            if sketches is None:
                sketches = self.latency[key] = [Sketch(self.accuracy) for _ in PHASES]
            rows = values if len(labels) == 1 else values[index == code]
            for j, sketch in enumerate(sketches):
                sketch.add_many(rows[:, j])

    def count(self, family: str, key: Hashable) -> int:
        """One counter value (0 when absent)."""
        return self.c[family].get(key, 0)

    def merge(self, other: ClosedWindow) -> None:
        """Add a closed window's statistics to these."""
        for family, counter in other.c.items():
            self.c[family].update(counter)
        packed = other.packed
        for i, key in enumerate(other.keys):
            mine = self.latency.get(key)
            if mine is None:
                mine = self.latency[key] = [Sketch(self.accuracy) for _ in PHASES]
            for j, sketch in enumerate(mine):
                sketch.merge_packed(packed, 3 * i + j)

    def merge_relabeled(self, other: ClosedWindow, caps: LabelCaps) -> None:
        """Add statistics kept under raw label values, capped as `caps` admitted them.

        Every value must have been offered to `caps` already (in arrival order);
        values it did not admit count under "other", as `add_many` would have.
        Every key is rebuilt from the caps' own label strings, so windows share
        one string per label value (as events fed one by one do).
        """
        label, judged = caps.label, caps.judged

        def relabel(kind: str | None, value: Any, variant: str) -> Any:
            """The label of a raw `value` on an event of raw `variant` (every key starts with it)."""
            if kind is None or value is None:
                return value
            return label(kind, value, variant in judged)

        for family, counter in other.c.items():
            mine = self.c[family]
            layout = KEY_KINDS[family]
            if family == "lam":  # pooled as add_many pools them (LabelCaps.lam_key)
                for (variant, q, para, seed, state), n in counter.items():
                    lam = (relabel("variant", variant, variant), relabel("question", q, variant),
                           para, seed, state)
                    mine[caps.lam_key(variant, lam)] += n
            elif len(layout) == 1:
                for value, n in counter.items():
                    mine[relabel(layout[0], value, value)] += n
            else:
                for key, n in counter.items():
                    mine[tuple(relabel(k, v, key[0]) for k, v in zip(layout, key, strict=True))] += n
        packed = other.packed
        groups: dict[LatencyKey, list[int]] = {}  # label key -> raw keys folded into it
        for i, (variant, region, cold) in enumerate(other.keys):
            key = (relabel("variant", variant, variant), relabel("region", region, variant), cold)
            groups.setdefault(key, []).append(i)
        for key, raw in groups.items():
            mine_s = self.latency.get(key)
            if mine_s is None:
                mine_s = self.latency[key] = [Sketch(self.accuracy) for _ in PHASES]
            for j, sketch in enumerate(mine_s):
                if len(raw) == 1:
                    sketch.merge_packed(packed, 3 * raw[0] + j)
                else:
                    _merge_packed_many(sketch, packed, [3 * i + j for i in raw])

    def subtract(self, other: ClosedWindow) -> None:
        """Remove a window merged in before (keeps counters free of zero entries)."""
        for family, counter in other.c.items():
            mine = self.c[family]
            for key, n in counter.items():
                left = mine[key] - n
                if left:
                    mine[key] = left
                else:
                    del mine[key]
        packed = other.packed
        for i, key in enumerate(other.keys):
            sketches = self.latency[key]
            for j, sketch in enumerate(sketches):
                sketch.subtract_packed(packed, 3 * i + j)
            if sketches[0].count == 0:
                del self.latency[key]

    def close(self) -> ClosedWindow:
        """Freeze this window compactly for the horizon's history."""
        keys = list(self.latency)
        packed = PackedSketches.pack([s for k in keys for s in self.latency[k]], self.accuracy)
        return ClosedWindow({f: c for f, c in self.c.items() if c}, keys, packed)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view of the counters (for tests and debugging)."""
        return {f: dict(c) for f, c in self.c.items() if c}

    # Latency helpers over the (possibly merged) sketches.
    def sketch(self, variant: str, region: str | None, cold: bool, phase: str) -> Sketch:
        """Merged sketch of one phase for a variant, in one region or all (None)."""
        out = Sketch(self.accuracy)
        i = PHASE_INDEX[phase]
        if region is not None:  # one key: a lookup, not a scan (gates ask once per region)
            found = self.latency.get((variant, region, cold))
            if found is not None:
                out.merge(found[i])
            return out
        for (v, r, cold_start), sketches in self.latency.items():
            if v == variant and cold_start == cold and (region is None or r == region):
                out.merge(sketches[i])
        return out


def _merge_packed_many(sketch: Sketch, packed: PackedSketches, ids: list[int]) -> None:
    """`sketch.merge_packed(packed, i)` for every i in `ids`, in one vectorised pass.

    A flood of distinct label values folds many raw keys into one label key;
    merging them one by one would cost a numpy call per raw key.
    """
    if packed.accuracy != sketch.accuracy:
        raise ValueError(f"cannot merge sketches with relative accuracy {sketch.accuracy} and "
                         f"{packed.accuracy}")
    which = np.asarray(ids, dtype=np.int64)
    lo = packed.bounds[which]
    sizes = packed.bounds[which + 1] - lo
    starts = np.cumsum(sizes) - sizes  # where each sketch's bins start in the selection
    picks = np.repeat(lo - starts, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
    added = np.bincount(packed.bins[picks], weights=packed.counts[picks], minlength=len(sketch.counts))
    sketch.counts += added.astype(sketch.counts.dtype)
    sketch.zero += int(packed.zeros[which].sum())


def pack_latency(users: list[Event], accuracy: float = 0.01) -> tuple[list[LatencyKey], PackedSketches]:
    """Latency sketches of user requests, packed per raw (variant, region, cold) key.

    Sketch 3*i + j is phase PHASES[j] of key i, as in `ClosedWindow`.
    """
    keys = list(map(_LATENCY_KEY, users))
    codes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    index = np.fromiter(map(codes.__getitem__, keys), dtype=np.int64, count=len(users))
    values = np.array(list(map(_LATENCIES, users)), dtype=np.float64).reshape(len(users), 3)
    ids = (index[:, None] * 3 + np.arange(3)).ravel()
    return list(codes), PackedSketches.from_values(ids, values.ravel(), 3 * len(codes), accuracy)


class ClosedWindow:
    """A closed window as the horizon keeps it: non-empty counters and packed sketches.

    Sketch 3*i + j of `packed` is phase PHASES[j] of latency key `keys[i]`.
    """

    __slots__ = ("c", "keys", "packed")

    def __init__(self, c: dict[str, Counter[Any]], keys: list[LatencyKey], packed: PackedSketches):
        self.c = c
        self.keys = keys
        self.packed = packed

    def sketch(self, key: LatencyKey, phase: str) -> Sketch:
        """One latency sketch of this window, dense."""
        return self.packed.unpack(3 * self.keys.index(key) + PHASE_INDEX[phase])

    def latency_bins(self, phase: str) -> dict[LatencyKey, tuple[npt.NDArray[np.int64],
                                                               npt.NDArray[np.int64]]]:
        """Every sketch of one phase, sparse: key -> (occupied bins ascending, counts).

        The zero bucket (values <= 0) is bin -1, below every other.
        """
        packed, j = self.packed, PHASE_INDEX[phase]
        out = {}
        for i, key in enumerate(self.keys):
            lo, hi = int(packed.bounds[3 * i + j]), int(packed.bounds[3 * i + j + 1])
            bins = packed.bins[lo:hi].astype(np.int64)
            counts = packed.counts[lo:hi].astype(np.int64)
            zero = int(packed.zeros[3 * i + j])
            if zero:
                bins = np.concatenate(([-1], bins))
                counts = np.concatenate(([zero], counts))
            out[key] = (bins, counts)
        return out


__all__ = ["ADMITTED", "FAMILIES", "LABEL_KINDS", "OTHER", "PHASES", "PHASE_INDEX", "QUESTION_CAP", "ROWS",
           "ClosedWindow", "LabelCaps", "LamKey", "LatencyKey", "WindowStats", "pack_latency"]
