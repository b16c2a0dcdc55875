"""Request-id de-duplication: within a batch (events and frames alike) and across batches (`SeenIds`)."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
from conftest import BASE_TS, make_event
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedupe import Admit, SeenIds, repeats_in_events, repeats_in_frame

_IDS = st.one_of(st.none(), st.sampled_from([f"r{i}" for i in range(6)]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_IDS, st.integers(0, 2), st.sampled_from(["control", "canary-v2"])), max_size=30))
def test_events_and_frames_find_the_same_repeats(rows: list[tuple[str | None, int, str]]) -> None:
    events = [make_event(ts=BASE_TS + 60 * w, request_id=rid, variant=v) for rid, w, v in rows]
    wids = np.array([w for _, w, _ in rows], dtype=np.int64)
    kept, kept_wids, mask, repeats = repeats_in_events(events, wids)
    frame = pl.DataFrame({"request_id": [r for r, _, _ in rows], "variant": [v for _, _, v in rows]},
                         schema={"request_id": pl.String, "variant": pl.String})
    rid = frame["request_id"]
    hashes, present = rid.hash().to_numpy(), rid.is_not_null().to_numpy()
    frame_mask, frame_repeats = repeats_in_frame(frame, wids, hashes, present)
    first: set[tuple[int, str]] = set()
    want = []
    for rid_, w, _ in rows:  # the rule, spelled out: a request counts once per window, first kept
        want.append(rid_ is not None and (w, rid_) in first)
        if rid_ is not None:
            first.add((w, rid_))
    assert (mask.tolist() if mask is not None else [False] * len(rows)) == want
    assert (frame_mask.tolist() if frame_mask is not None else [False] * len(rows)) == want
    assert repeats == frame_repeats == [(w, v) for (_, w, v), again in zip(rows, want, strict=True) if again]
    assert kept == [e for e, again in zip(events, want, strict=True) if not again]
    assert kept_wids.tolist() == [w for w, again in zip(wids.tolist(), want, strict=True) if not again]


def _hashes(ids: list[str]) -> np.ndarray:
    return pl.Series(ids, dtype=pl.String).hash().to_numpy()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.sampled_from([f"r{i}" for i in range(8)]), max_size=6),
       st.lists(st.sampled_from([f"r{i}" for i in range(8)]), max_size=6, unique=True),
       st.lists(st.sampled_from([f"r{i}" for i in range(8)]), max_size=4, unique=True), st.booleans(),
       st.booleans())
def test_a_batch_fits_iff_each_of_its_ids_would_be_admitted_as_new(
        cap: int, before: list[str], batch: list[str], merged: list[str], opened: bool,
        pickled: bool) -> None:
    """`fits` (hashes) agrees with `admit` (text), over ids admitted one by one and merged by hash."""
    seen = SeenIds(cap)
    if opened or before or merged:
        seen.open(7)
    for rid in before:
        seen.admit(7, rid)
    if merged and seen.fits(7, _hashes(merged)):
        seen.remember(7, _hashes(merged), pl.Series(merged, dtype=pl.String))
    if pickled:
        seen = pickle.loads(pickle.dumps(seen))
    seen.settle()
    one_by_one = SeenIds(cap)
    one_by_one.open(7)
    one_by_one.by_window[7] = set(seen.by_window.get(7, ()))
    all_new = all(one_by_one.admit(7, rid) is Admit.NEW for rid in batch)
    assert seen.fits(7, _hashes(batch)) == all_new
    assert seen.keeps_all(7, len(batch)) == (len(seen.by_window.get(7, ())) + len(batch) <= cap)


def test_ids_merged_by_hash_are_seen_by_admit_and_survive_a_pickle() -> None:
    seen = SeenIds(10)
    seen.open(1)
    ids = ["a", "b", "c"]
    assert seen.fits(1, _hashes(ids))
    seen.remember(1, _hashes(ids), pl.Series(ids, dtype=pl.String))
    assert seen.by_window[1] == set()  # text not made until needed
    assert not seen.fits(1, _hashes(["x", "b"])) and seen.fits(1, _hashes(["x", "y"]))
    assert not seen.keeps_all(1, 8) and seen.keeps_all(1, 7)
    again: SeenIds = pickle.loads(pickle.dumps(seen))
    assert seen.by_window == again.by_window == {1: {"a", "b", "c"}}  # a pickle settles the text
    assert again.__getstate__() == {"cap": 10, "by_window": {1: {"a", "b", "c"}}}  # the layout of old
    assert not again.fits(1, _hashes(["c"])) and again.fits(1, _hashes(["d"]))
    assert again.admit(1, "a") is Admit.DUPLICATE and again.admit(1, "d") is Admit.NEW
    assert not again.fits(1, _hashes(["d"]))  # admitted one by one: hashed when fits next asks
    many = [f"id{i}" for i in range(300)]  # runs merge as they grow
    big = SeenIds(10_000)
    big.open(2)
    for k in range(0, 300, 7):
        part = many[k:k + 7]
        assert big.fits(2, _hashes(part))
        big.remember(2, _hashes(part), pl.Series(part, dtype=pl.String))
    assert len(big.hashed[2]) <= 9
    assert not any(big.fits(2, _hashes([rid])) for rid in many)


def test_admit_counts_duplicates_and_overflow_and_closing_forgets() -> None:
    seen = SeenIds(2)
    seen.open(1)
    assert [seen.admit(1, r) for r in ("a", "a", "b", "c", "b")] == [
        Admit.NEW, Admit.DUPLICATE, Admit.NEW, Admit.OVERFLOW, Admit.DUPLICATE]
    seen.remember(2, _hashes(["e"]), pl.Series(["e"]))  # not open: nothing to remember it in
    assert seen.by_window == {1: {"a", "b"}}
    assert not seen.keeps_all(1, 1)
    seen.close(1)
    assert seen.by_window == {} and seen.keeps_all(1, 2) and not seen.keeps_all(1, 3)
