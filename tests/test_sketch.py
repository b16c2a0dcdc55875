"""Sketches: the 1 % bound against exact quantiles, ddsketch parity, merge, subtract, pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ddsketch import DDSketch

from pipeline.aggregate.sketch import PackedSketches, Sketch

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def _distributions(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "lognormal": rng.lognormal(6.5, 0.8, 20_000),
        "exponential": rng.exponential(300.0, 20_000) + 1.0,
        "pareto": (rng.pareto(1.5, 20_000) + 1.0) * 50.0,
        "uniform": rng.uniform(5.0, 5_000.0, 20_000),
        "bimodal": np.concatenate([rng.normal(200, 20, 10_000), rng.normal(3_000, 300, 10_000)]).clip(1),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_relative_error_within_one_percent_of_exact(seed: int) -> None:
    for name, values in _distributions(seed).items():
        sketch = Sketch()
        sketch.add_many(values)
        ordered = np.sort(values)
        for q in QUANTILES:
            # DDSketch's rank convention: the value of rank floor(q * (n - 1)).
            exact = ordered[int(q * (len(ordered) - 1))]
            got = sketch.quantile(q)
            assert got is not None
            assert abs(got - exact) <= 0.01 * exact + 1e-9, (name, q, got, exact)


def test_quantiles_equal_ddsketch_on_the_same_values() -> None:
    values = _distributions(7)["lognormal"][:5000]
    ours, theirs = Sketch(), DDSketch(0.01)
    ours.add_many(values)
    for v in values:
        theirs.add(float(v))
    for q in (0.0, *QUANTILES, 1.0):
        assert ours.quantile(q) == pytest.approx(theirs.get_quantile_value(q), rel=1e-12)
    assert ours.to_ddsketch().get_quantile_value(0.95) == pytest.approx(
        theirs.get_quantile_value(0.95), rel=1e-12)


def test_merged_parts_equal_the_whole() -> None:
    values = _distributions(4)["pareto"]
    whole = Sketch()
    whole.add_many(values)
    merged = Sketch()
    parts = []
    for part in np.array_split(values, 7):
        s = Sketch()
        s.add_many(part)
        parts.append(s)
    packed = PackedSketches.pack(parts)
    for i, s in enumerate(parts):
        if i % 2:
            merged.merge_packed(packed, i)
        else:
            merged.merge(s)
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.count == whole.count == len(values)
    for q in QUANTILES:
        assert merged.quantile(q) == whole.quantile(q)


def test_subtract_undoes_merge() -> None:
    a, b = Sketch(), Sketch()
    a.add_many([10.0, 20.0, 30.0, 0.0])
    b.add_many([15.0, 25.0])
    total = Sketch()
    total.merge(a)
    packed = PackedSketches.pack([a, b])
    total.merge_packed(packed, 1)
    total.subtract_packed(packed, 1)
    assert np.array_equal(total.counts, a.counts) and total.zero == a.zero == 1
    with pytest.raises(ValueError, match="never merged"):
        total.subtract(b)
    with pytest.raises(ValueError, match="never merged"):
        total.subtract_packed(packed, 1)


def test_refuses_to_merge_other_parameters() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        Sketch(0.01).merge(Sketch(0.02))
    with pytest.raises(ValueError, match="relative accuracy"):
        Sketch(0.01).merge_packed(PackedSketches.pack([Sketch(0.05)], 0.05), 0)
    with pytest.raises(ValueError, match="accuracy"):
        PackedSketches.pack([Sketch(0.05)], 0.01)


def test_zero_and_out_of_range_values() -> None:
    s = Sketch()
    s.add_many([0.0, 0.0, 1e9, 5.0])
    assert s.count == 4
    assert s.quantile(0.0) == 0.0
    assert s.quantile(1.0) == pytest.approx(1e7, rel=0.02)  # clamped to the top bin
    assert Sketch().quantile(0.5) is None


def test_pickle_round_trip() -> None:
    s = Sketch()
    s.add_many(_distributions(5)["exponential"])
    back = pickle.loads(pickle.dumps(s))
    assert np.array_equal(back.counts, s.counts)
    assert back.quantile(0.95) == s.quantile(0.95)
    packed = PackedSketches.pack([s, Sketch()])
    back_packed = pickle.loads(pickle.dumps(packed))
    assert back_packed.count(0) == packed.count(0) == s.count and back_packed.count(1) == 0
    assert back_packed.unpack(0).quantile(0.95) == s.quantile(0.95)
    assert packed.nbytes < 4_000
