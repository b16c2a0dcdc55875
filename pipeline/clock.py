"""Event-time windows: which window an event time falls in, and where windows end.

Windows are tumbling, `size` seconds long, aligned to the Unix epoch: window
`wid` covers event times [wid * size, (wid + 1) * size).  Every path that
places an event in a window (the engine, the chunk summaries, replay's
column-wise summaries) calls these functions, so they cannot disagree on an
event near a window edge: the scalar and the column forms are both Python's
floor division of floats.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def window_of(ts: float, size: float) -> int:
    """The window holding event time `ts` (seconds since the epoch)."""
    return int(ts // size)


def windows_of(ts: npt.NDArray[np.float64], size: float) -> npt.NDArray[np.int64]:
    """`window_of` for a column of event times."""
    return np.floor_divide(ts, size).astype(np.int64)


def start_of(wid: int, size: float) -> float:
    """Where window `wid` starts (its first event time)."""
    return float(wid * size)


def end_of(wid: int, size: float) -> float:
    """Where window `wid` ends (exclusive): the verdict's `window_end`."""
    return float((wid + 1) * size)


__all__ = ["end_of", "start_of", "window_of", "windows_of"]
