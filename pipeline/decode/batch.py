"""A micro-batch of messages -> a frame of the accepted events and the dead letters, by position.

`decode_frame(lines)` is what a decoding worker does with a chunk: every
accepted message becomes one row of a polars frame (`frame.SCHEMA`, `row` =
its index in `lines`), every rejected one a `(index, DecodeError)` with the
exact reason and detail `codec.decode` gives it.  The acceptance rules are
`codec.decode`'s: this module adds none.

`decode_frame_reference` is the definition: `codec.decode` per message, then
`frame.from_events`.  Faster decoders must return exactly what it returns
for any input.

`decode_frame_native` is the fast one: the Rust extension `canary_gate_native`
(native/, built by `make venv`) reads each line with a strict JSON reader and
returns Arrow columns (dictionary columns as dictionary arrays, which polars
reads as Categorical), so no Python object is made per accepted event.  On
one core, 462-byte messages in batches of 5,000, frame included: about 1.2M
messages/s against 0.27M for the reference (the Rust reader is about 0.65 us
of the 0.8 us a message).  It is conservative: it takes a line only when it
is certain the codec accepts it and yields exactly the same values
(bit-identical floats, the same event time, aliases resolved, escapes
decoded); every other line (invalid or unusual JSON, a schema error, a
repeated key, a subnormal or a number of more than 40 characters, nesting
deeper than 32 in an unknown field, an item that is not bytes) goes through
`codec.decode`, which gives its dead letter or its event, merged back in row
order.  tests/test_native_decode.py holds it to the reference on arbitrary
input.

`decode_frame` is the decoder `CANARY_GATE_DECODER` names (read at import):
`native` (the extension; without it every call raises a RuntimeError saying
how to build it), `reference`, or `auto` (the default): native when the
extension is built, else the reference with a RuntimeWarning, so an install
without Rust (the slim Docker image) still decodes, five times slower, and
says so.  `make venv` builds the extension and tests/test_native_decode.py
fails without it, so CI always runs the native path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType

import polars as pl

from pipeline import frame as frames
from pipeline.decode import codec
from pipeline.model import DecodeError, Event

Dead = list[tuple[int, DecodeError]]  # (index of the message in its batch, why it was rejected), ascending
Decoder = Callable[[Sequence[bytes], int], tuple[pl.DataFrame, Dead]]

DECODER_ENV = "CANARY_GATE_DECODER"
DECODERS = ("auto", "native", "reference")
_BUILD = "run `make venv` (it needs Rust: https://rustup.rs)"

native: ModuleType | None
try:
    import canary_gate_native as native
except ImportError:  # not built: decode_frame says how to build it
    native = None


def decode_frame_reference(lines: Sequence[bytes], max_bytes: int = 1_048_576) -> tuple[pl.DataFrame, Dead]:
    """The accepted events of `lines` as a frame (`row` = index in `lines`) and the rejected ones."""
    events: list[Event] = []
    rows: list[int] = []
    dead: Dead = []
    decode = codec.decode
    for i, line in enumerate(lines):
        decoded = decode(line, max_bytes)
        if type(decoded) is Event:
            events.append(decoded)
            rows.append(i)
        else:
            dead.append((i, decoded))  # type: ignore[arg-type]  # not an Event: a DecodeError
    return frames.from_events(events, rows), dead


def decode_frame_native(lines: Sequence[bytes], max_bytes: int = 1_048_576) -> tuple[pl.DataFrame, Dead]:
    """`decode_frame_reference`'s answer, by the native reader and the codec for what it leaves."""
    if native is None:
        raise RuntimeError(
            f"the native decoder (canary_gate_native) is not built: {_BUILD}, or set {DECODER_ENV}=reference")
    batch = lines if type(lines) is list else list(lines)
    columns, slow = native.decode_batch(batch, max_bytes)
    # Arrow arrays, dictionary columns as dictionary arrays (polars makes them Categorical)
    series = {name: pl.Series(column) for name, column in columns}
    frame = pl.DataFrame(series)
    if not slow:
        return frame, []
    events: list[Event] = []
    rows: list[int] = []
    dead: Dead = []
    decode = codec.decode
    for i in slow:
        decoded = decode(batch[i], max_bytes)
        if type(decoded) is Event:
            events.append(decoded)
            rows.append(i)
        else:
            dead.append((i, decoded))  # type: ignore[arg-type]  # not an Event: a DecodeError
    if events:
        frame = frame.merge_sorted(frames.from_events(events, rows), key="row") if len(frame) else (
            frames.from_events(events, rows))
    return frame, dead


def _chosen() -> Decoder:
    name = os.environ.get(DECODER_ENV, "auto")
    if name not in DECODERS:
        raise ValueError(f"{DECODER_ENV} must be one of {list(DECODERS)}, got {name!r}")
    if name == "reference":
        return decode_frame_reference
    if name == "auto" and native is None:
        warnings.warn(f"the native decoder (canary_gate_native) is not built: decoding with the reference, "
                      f"about five times slower; {_BUILD}", RuntimeWarning, stacklevel=2)
        return decode_frame_reference
    return decode_frame_native


_decoder: Decoder = _chosen()


def decode_frame(lines: Sequence[bytes], max_bytes: int = 1_048_576) -> tuple[pl.DataFrame, Dead]:
    """The accepted events of `lines` as a frame and the rejected ones, by the chosen decoder."""
    return _decoder(lines, max_bytes)

__all__ = ["DECODERS", "DECODER_ENV", "Dead", "decode_frame", "decode_frame_native", "decode_frame_reference"]
