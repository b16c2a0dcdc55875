"""RFC 3339 text <-> event time, in both forms: one value (the stream) and one column (Parquet).

`parse_ts` reads one timestamp for the codec; `micros_of_text` reads a polars
column of them for Parquet archives whose `ts` is String; `rfc3339` writes
epoch microseconds back as text (canonical JSON of a Parquet row).  The two
readers agree on every input (tests/test_timestamps.py): the same pattern,
the same calendar, fractions cut after the microsecond (as
`datetime.fromisoformat` does), any offset up to ±23:59.

The column form does the calendar arithmetic itself (days_from_civil, H.
Hinnant), about 20 polars operations a row, because polars' own parser
accepts neither every offset nor every fraction width that RFC 3339 allows.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import polars as pl

# RFC 3339 date-time (ASCII digits); the calendar (Feb 30, month 13) is checked by
# datetime, but datetime takes offset minutes up to 99 (+05:60), so the offset is
# bounded here.  schemas/telemetry.schema.json mirrors this pattern.
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
# The same, with the parts captured, for the column form (which bounds the offset itself).
_PARTS = (r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
          r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))$")

MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def parse_ts(text: str) -> float:
    """RFC 3339 timestamp -> seconds since the epoch; ValueError if not RFC 3339."""
    if not RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    moment = datetime.fromisoformat(text.upper())
    return moment.timestamp()


def micros_of_text(text: pl.Expr) -> pl.Expr:
    """Epoch microseconds of RFC 3339 text, as `parse_ts` reads it; null when not valid.

    Fractions beyond 6 digits are cut (as fromisoformat does); a calendar or
    range error gives null.  `parse_ts(t) == micros / 1e6` (one correctly
    rounded division) for every valid t whose microseconds are below 2**53.
    """
    parts = text.str.extract_groups(_PARTS)

    def num(i: int) -> pl.Expr:
        return parts.struct.field(str(i)).cast(pl.Int64)

    year, month, day, hour, minute, second = (num(i) for i in range(1, 7))
    fraction = (parts.struct.field("7").str.slice(0, 6).str.pad_end(6, "0").cast(pl.Int64)
                .fill_null(0))
    sign = pl.when(parts.struct.field("8") == "-").then(-1).otherwise(1)
    offset = (sign * (num(9) * 3600 + num(10) * 60)).fill_null(0)
    leap = ((year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))).cast(pl.Int64)
    month_days = (pl.when(month == 2).then(28 + leap)
                  .when(month.is_in([4, 6, 9, 11])).then(30)
                  .otherwise(31))
    valid = ((year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
             & (hour <= 23) & (minute <= 59) & (second <= 59)
             & (num(9).fill_null(0) <= 23) & (num(10).fill_null(0) <= 59))
    # days_from_civil (H. Hinnant), on years >= 1 so every division is of non-negatives
    y = year - (month <= 2).cast(pl.Int64)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + pl.when(month > 2).then(-3).otherwise(9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146_097 + doe - 719_468
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset
    return pl.when(valid).then(seconds * 1_000_000 + fraction)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None)  # naive: isoformat without an offset


def rfc3339(micros: int) -> str:
    """Epoch microseconds as RFC 3339 text with Z, for any year (others than 1..9999 are not RFC 3339)."""
    if MIN_US <= micros <= MAX_US:
        text = (_EPOCH + timedelta(microseconds=micros)).isoformat()
        return (text.rstrip("0") if "." in text else text) + "Z"
    seconds, fraction = divmod(micros, 1_000_000)
    days, second_of_day = divmod(seconds, 86_400)
    # civil_from_days (H. Hinnant)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += f".{fraction:06d}".rstrip("0")
    return text + "Z"


__all__ = ["MAX_US", "MIN_US", "RFC3339", "micros_of_text", "parse_ts", "rfc3339"]
