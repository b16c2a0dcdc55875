"""RFC 3339 -> event time (pipeline/decode/timestamps.py): the value form and the column form agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decode.timestamps import MAX_US, MIN_US, micros_of_text, parse_ts, rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

VALID = [
    "2025-08-27T06:30:00Z",
    "2025-08-27t06:30:00z",
    "2025-08-27T06:30:00+00:00",
    "2025-08-27T06:30:00-00:00",
    "2025-08-27T06:30:00+23:59",
    "2025-08-27T06:30:00-23:59",
    "2025-08-27T06:30:00+05:30",
    "2025-08-27T06:30:00.5Z",
    "2025-08-27T06:30:00.123456Z",
    "2025-08-27T06:30:00.1234567891234Z",  # cut after the microsecond, as fromisoformat does
    "2025-08-27T06:30:00.000000Z",
    "2025-08-27T06:30:00.999999-01:00",
    "1969-12-31T23:59:59.999999Z",  # just before the epoch: negative microseconds
    "1970-01-01T00:00:00Z",
    "2024-02-29T12:00:00Z",  # leap day
    "2000-02-29T00:00:00Z",  # divisible by 400: leap
    "1600-02-29T23:59:59Z",
    "0001-01-01T00:00:00Z",  # year bounds
    "0001-01-01T00:00:00+23:59",  # before year 1 in UTC
    "0001-01-01T00:00:00-01:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999-23:59",  # after year 9999 in UTC
    "2242-03-16T12:56:31Z",
    "1698-10-17T11:03:29Z",
]

INVALID = [
    "2023-02-29T00:00:00Z",  # not a leap year
    "1900-02-29T00:00:00Z",  # divisible by 100, not 400
    "2025-04-31T00:00:00Z",
    "2025-13-01T00:00:00Z",
    "2025-00-10T00:00:00Z",
    "2025-01-00T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2025-08-27T24:00:00Z",
    "2025-08-27T06:60:00Z",
    "2025-08-27T06:30:60Z",  # no leap second
    "2025-08-27T06:30:00+24:00",
    "2025-08-27T06:30:00+05:60",
    "2025-08-27T06:30:00",  # no offset
    "2025-08-27 06:30:00Z",
    "2025-08-27T06:30:00.Z",
    "2025-08-27T06:30Z",
    "2025-08-27T06:30:00Z\n",
    " 2025-08-27T06:30:00Z",
    "٢٠٢٥-08-27T06:30:00Z",  # non-ASCII digits
    "",
]


def exact_micros(text: str) -> int:
    moment = datetime.fromisoformat(text.upper())
    return (moment - EPOCH) // timedelta(microseconds=1)


def column(texts: list[str]) -> list[int | None]:
    frame = pl.DataFrame({"ts": texts}, schema={"ts": pl.String()})
    return frame.select(micros_of_text(pl.col("ts"))).to_series().to_list()


def test_valid_timestamps_read_alike() -> None:
    for text, micros in zip(VALID, column(VALID), strict=True):
        assert micros == exact_micros(text), text
        # datetime.timestamp() divides the exact microseconds once, as int / int does
        assert parse_ts(text) == micros / 10**6, text


def test_invalid_timestamps_are_refused_by_both() -> None:
    assert column(INVALID) == [None] * len(INVALID)
    for text in INVALID:
        with pytest.raises(ValueError, match=r"RFC 3339|out of range|must be in"):
            parse_ts(text)


@pytest.mark.parametrize("micros", [0, -1, 1, 1_500_000, MIN_US, MAX_US, MIN_US - 1, MAX_US + 1,
                                    -(2**62), 2**62, 1_756_276_200_123_456])
def test_rfc3339_writes_what_the_readers_read_back(micros: int) -> None:
    text = rfc3339(micros)
    assert text.endswith("Z")
    if MIN_US <= micros <= MAX_US:
        assert column([text]) == [micros]
        assert parse_ts(text) == micros / 10**6
    else:  # outside years 1..9999: not RFC 3339, refused by both
        assert column([text]) == [None]
        with pytest.raises(ValueError):
            parse_ts(text)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    naive = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))  # noqa: DTZ001
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = "" if digits == 0 else "." + draw(st.text("0123456789", min_size=digits, max_size=digits))
    offsets = st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59))
    offset = draw(st.one_of(st.sampled_from(["Z", "z"]),
                            offsets.map(lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}")))
    return naive.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + fraction + offset


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(timestamps(), min_size=1, max_size=20))
def test_any_timestamp_reads_alike(texts: list[str]) -> None:
    for text, micros in zip(texts, column(texts), strict=True):
        assert micros == exact_micros(text), text
        assert parse_ts(text) == micros / 10**6, text
