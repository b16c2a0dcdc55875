"""Latency sketches: DDSketch's logarithmic mapping over a fixed, dense key range.

A `Sketch` buckets positive values with ddsketch's `LogarithmicMapping` (1 %
relative accuracy by default), so its quantiles equal those of
`ddsketch.DDSketch` fed the same values.  Unlike ddsketch's stores it keeps
one numpy array of counts over a fixed key range covering 0.001 ms .. 10^7 ms
(about 1,150 bins, 9 kB dense), which makes three things cheap:

* adding a micro-batch is one vectorised log and one `bincount`;
* sketches add *and subtract* bin by bin, so a horizon is a running sum of
  windows instead of a re-merge of 60 sketches at every close;
* a closed window keeps only its occupied bins, all of its sketches packed in
  a few flat arrays (`PackedSketches`, ~6 bytes per occupied bin), so 60
  windows of history cost little.

Values outside the range are clamped to its edge bins (counted, so quantiles
stay rank-correct); values <= 0 go to the zero bucket as in DDSketch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

DEFAULT_ACCURACY = 0.01
MIN_VALUE = 1e-3
MAX_VALUE = 1e7

_LOG2 = math.log(2)
# Bins are counted densely (one linear pass) when there are at most this many, or at most four per
# value; else only the occupied ones are found, by sorting (many sketches with few values each).
_DENSE_BINS_MIN = 1 << 18
Counts = npt.NDArray[np.int32]  # per-bin counts of one horizon stay far below 2**31


class _Layout:
    """Key range and mapping constants for one relative accuracy."""

    def __init__(self, accuracy: float) -> None:
        self.accuracy = accuracy
        self.mapping = LogarithmicMapping(accuracy)
        # Same arithmetic as LogarithmicMapping.key: ceil(log2(v) * multiplier).
        self.multiplier: float = self.mapping._multiplier
        self.key_lo = self.mapping.key(MIN_VALUE)
        self.key_hi = self.mapping.key(MAX_VALUE)
        self.size = self.key_hi - self.key_lo + 1
        self.values = np.array(
            [self.mapping.value(k) for k in range(self.key_lo, self.key_hi + 1)], dtype=np.float64
        )

    def indices(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        # ceil(log(v) / log(2) * multiplier) - key_lo, clipped; in place, the same operations
        keys = np.log(values)
        keys /= _LOG2
        keys *= self.multiplier
        np.ceil(keys, out=keys)
        keys -= self.key_lo
        np.clip(keys, 0, self.size - 1, out=keys)
        idx: npt.NDArray[np.int64] = keys.astype(np.int64)
        return idx


_LAYOUTS: dict[float, _Layout] = {}


def _layout(accuracy: float) -> _Layout:
    layout = _LAYOUTS.get(accuracy)
    if layout is None:
        layout = _LAYOUTS[accuracy] = _Layout(accuracy)
    return layout


class Sketch:
    """A mergeable, subtractable quantile sketch with relative accuracy `accuracy`."""

    __slots__ = ("accuracy", "counts", "zero")

    def __init__(self, accuracy: float = DEFAULT_ACCURACY) -> None:
        self.accuracy = accuracy
        self.counts: Counts = np.zeros(_layout(accuracy).size, dtype=np.int32)
        self.zero = 0

    @property
    def count(self) -> int:
        """Number of values added."""
        return int(self.counts.sum()) + self.zero

    def add(self, value: float) -> None:
        """Add one value."""
        self.add_many(np.array([value], dtype=np.float64))

    def add_many(self, values: npt.NDArray[np.float64] | list[float]) -> None:
        """Add a batch of values (one vectorised pass)."""
        arr = np.asarray(values, dtype=np.float64)
        positive = arr > 0
        npos = int(positive.sum())
        self.zero += len(arr) - npos
        if npos:
            idx = _layout(self.accuracy).indices(arr[positive] if npos < len(arr) else arr)
            self.counts += np.bincount(idx, minlength=len(self.counts))

    def _check(self, accuracy: float) -> None:
        if accuracy != self.accuracy:
            raise ValueError(
                f"cannot merge sketches with relative accuracy {self.accuracy} and {accuracy}"
            )

    def merge(self, other: Sketch) -> None:
        """Add another sketch's values to this one (same accuracy only)."""
        self._check(other.accuracy)
        self.counts += other.counts
        self.zero += other.zero

    def subtract(self, other: Sketch) -> None:
        """Remove values previously merged in from `other` (same accuracy only)."""
        self._check(other.accuracy)
        self.counts -= other.counts
        self.zero -= other.zero
        self._check_non_negative()

    def merge_packed(self, packed: PackedSketches, i: int) -> None:
        """Add the i-th sketch of a packed set (same accuracy only)."""
        self._check(packed.accuracy)
        lo, hi = packed.bounds[i], packed.bounds[i + 1]
        self.counts[packed.bins[lo:hi]] += packed.counts[lo:hi]
        self.zero += int(packed.zeros[i])

    def subtract_packed(self, packed: PackedSketches, i: int) -> None:
        """Remove the i-th sketch of a packed set, merged in before."""
        self._check(packed.accuracy)
        lo, hi = packed.bounds[i], packed.bounds[i + 1]
        self.counts[packed.bins[lo:hi]] -= packed.counts[lo:hi]
        self.zero -= int(packed.zeros[i])
        self._check_non_negative()

    def _check_non_negative(self) -> None:
        if self.zero < 0 or (self.counts < 0).any():
            raise ValueError("subtracted a sketch that was never merged in")

    def quantile(self, q: float) -> float | None:
        """Value at quantile q (0..1), as ddsketch.DDSketch would answer; None if empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Several quantiles from one cumulative pass over the bins."""
        cumulative = np.cumsum(self.counts)
        total = int(cumulative[-1]) + self.zero
        values = _layout(self.accuracy).values
        out: list[float | None] = []
        for q in qs:
            if not 0 <= q <= 1 or total == 0:
                out.append(None)
                continue
            rank = q * (total - 1)
            if rank < self.zero:
                out.append(0.0)
                continue
            i = int(np.searchsorted(cumulative, rank - self.zero, side="right"))
            out.append(float(values[min(i, len(cumulative) - 1)]))
        return out

    def to_ddsketch(self) -> DDSketch:
        """An equivalent ddsketch.DDSketch (for export and cross-checks)."""
        out = DDSketch(self.accuracy)
        layout = _layout(self.accuracy)
        for i in np.flatnonzero(self.counts):
            out._store.add(int(i) + layout.key_lo, float(self.counts[i]))
            out._count += float(self.counts[i])
        if self.zero:
            out._zero_count += self.zero
            out._count += self.zero
        return out


@dataclass(frozen=True, slots=True)
class PackedSketches:
    """Closed sketches, sparse and flat: sketch i holds bins[bounds[i]:bounds[i+1]].

    One window's sketches share four arrays instead of two numpy objects
    each, which is what makes 60 windows of 1,000s of keys affordable
    (about 6 bytes per occupied bin).
    """

    accuracy: float
    bounds: npt.NDArray[np.int64]
    bins: npt.NDArray[np.int16]
    counts: npt.NDArray[np.uint32]
    zeros: npt.NDArray[np.int64]

    @classmethod
    def pack(cls, sketches: list[Sketch], accuracy: float = DEFAULT_ACCURACY) -> PackedSketches:
        """Pack sketches (all of relative accuracy `accuracy`) in order."""
        bins, bounds = [], [0]
        for sk in sketches:
            if sk.accuracy != accuracy:
                raise ValueError(f"cannot pack a sketch of accuracy {sk.accuracy} with {accuracy}")
            nz = np.flatnonzero(sk.counts)
            bins.append(nz)
            bounds.append(bounds[-1] + len(nz))
        flat = np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64)
        counts = (np.concatenate([sk.counts[b] for sk, b in zip(sketches, bins, strict=True)])
                  if bins else np.zeros(0, dtype=np.int64))
        return cls(
            accuracy,
            np.asarray(bounds, dtype=np.int64),
            flat.astype(np.int16),
            counts.astype(np.uint32),
            np.asarray([sk.zero for sk in sketches], dtype=np.int64),
        )

    @classmethod
    def from_values(cls, ids: npt.NDArray[np.int64], values: npt.NDArray[np.float64], n: int,
                    accuracy: float = DEFAULT_ACCURACY) -> PackedSketches:
        """Pack n sketches straight from values: values[k] belongs to sketch ids[k].

        One vectorised pass for all sketches (no dense arrays, no per-sketch loop),
        equal to adding each sketch's values with `Sketch.add_many` and packing.
        """
        layout = _layout(accuracy)
        positive = values > 0
        if positive.all():  # the usual case: no copies for the zero bucket
            zeros = np.zeros(n, dtype=np.int64)
            combined = layout.indices(values)
        else:
            zeros = np.bincount(ids[~positive], minlength=n)
            ids = ids[positive]
            combined = layout.indices(values[positive])
        combined += ids * layout.size
        if n * layout.size <= max(_DENSE_BINS_MIN, 4 * len(combined)):
            # a count per possible bin is one linear pass; sorting the values costs more, unless
            # the bins are mostly empty (many sketches with few values each)
            dense = np.bincount(combined, minlength=n * layout.size)
            occupied = np.flatnonzero(dense)
            counts = dense[occupied]
        else:  # many sketches, few values each: only the occupied bins
            occupied, counts = np.unique(combined, return_counts=True)
        owner = occupied // layout.size
        return cls(
            accuracy,
            np.searchsorted(owner, np.arange(n + 1)).astype(np.int64),
            (occupied - owner * layout.size).astype(np.int16),
            counts.astype(np.uint32),
            zeros.astype(np.int64),
        )

    @classmethod
    def from_columns(cls, keys: npt.NDArray[np.int64], columns: list[npt.NDArray[np.float64]], n: int,
                     accuracy: float = DEFAULT_ACCURACY) -> PackedSketches:
        """Pack n * len(columns) sketches: sketch k * len(columns) + j holds columns[j][i] for every
        i with keys[i] == k.

        Equal to `from_values` over the same values, without building an id per
        value: one binning pass per column, counted densely.
        """
        layout = _layout(accuracy)
        width = len(columns)
        total = n * width
        # Counting densely zeroes and scans every bin of every sketch: worth it only when the values
        # fill a good share of them (many sketches with few values each, e.g. a fleet's, go sparse).
        if total * layout.size > max(_DENSE_BINS_MIN, 4 * len(keys) * width):
            ids = (keys[:, None] * width + np.arange(width)).ravel()
            return cls.from_values(ids, np.stack(columns, axis=1).ravel(), total, accuracy)
        dense = np.zeros(total * layout.size, dtype=np.int64)
        zeros = np.zeros(total, dtype=np.int64)
        base = keys * (width * layout.size)
        for j, values in enumerate(columns):
            positive = values > 0
            if positive.all():
                bins = layout.indices(values)
                bins += base
            else:
                zeros += np.bincount(keys[~positive] * width + j, minlength=total)
                bins = layout.indices(values[positive])
                bins += base[positive]
            bins += j * layout.size
            dense += np.bincount(bins, minlength=total * layout.size)
        occupied = np.flatnonzero(dense)
        owner = occupied // layout.size
        return cls(
            accuracy,
            np.searchsorted(owner, np.arange(total + 1)).astype(np.int64),
            (occupied - owner * layout.size).astype(np.int16),
            dense[occupied].astype(np.uint32),
            zeros,
        )

    def __len__(self) -> int:
        return len(self.zeros)

    def slice(self, start: int, stop: int) -> PackedSketches:
        """Sketches start..stop-1 as a packed set of their own."""
        lo, hi = int(self.bounds[start]), int(self.bounds[stop])
        return PackedSketches(self.accuracy, self.bounds[start:stop + 1] - lo, self.bins[lo:hi],
                              self.counts[lo:hi], self.zeros[start:stop])

    def count(self, i: int) -> int:
        """Number of values in the i-th sketch."""
        lo, hi = self.bounds[i], self.bounds[i + 1]
        return int(self.counts[lo:hi].sum()) + int(self.zeros[i])

    def unpack(self, i: int) -> Sketch:
        """The i-th sketch, dense again."""
        out = Sketch(self.accuracy)
        out.merge_packed(self, i)
        return out

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return int(self.bounds.nbytes + self.bins.nbytes + self.counts.nbytes + self.zeros.nbytes)
