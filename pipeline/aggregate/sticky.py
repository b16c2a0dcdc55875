"""Sticky keys per variant over the horizon, exact and bounded (for the sticky_flip gate).

A sticky key routed to both variants within the horizon is a flip.  Keys are
kept per variant, about 100 bytes each, up to `limits.max_sticky_keys`
(STICKY_KEYS_MAX by default: ~20 MB for control and canary together); keys past
the bound are counted as untracked and named in the sticky_flip reason.
"""

from __future__ import annotations

STICKY_KEYS_MAX = 100_000


class StickyTracker:
    """Which sticky keys each variant saw, exactly and within a bound.

    Open windows collect keys in sets; when a window closes its keys fold into
    `last` (key -> last closed window seen).  A key is in the horizon [lo, hi]
    of the window being judged when its last closed window is >= lo, which is
    exact and independent of delivery order.
    """

    def __init__(self, variants: tuple[str, str], cap: int = STICKY_KEYS_MAX) -> None:
        self.cap = cap
        self.last: dict[str, dict[str, int]] = {v: {} for v in variants}
        self.open: dict[int, dict[str, set[str]]] = {}
        self.untracked = 0

    def see(self, variant: str, key: str, wid: int) -> None:
        """Note that `key` was routed to `variant` in (open) window `wid`."""
        self.see_many(variant, [key], wid)

    def see_many(self, variant: str, keys: list[str], wid: int) -> None:
        """`see` for a batch of keys (set operations, no per-key Python call)."""
        if not keys:
            return
        window = self.open.get(wid)
        if window is None:
            window = self.open[wid] = {}
        seen = window.get(variant)
        if seen is None:
            seen = window[variant] = set()
        room = self.cap - len(seen)
        new = set(keys) - seen
        if len(new) <= room:
            seen |= new
        else:
            kept = sorted(new)[:room]  # deterministic choice of which keys stay tracked
            seen.update(kept)
            self.untracked += len(new) - len(kept)

    def close(self, wid: int) -> None:
        """Fold a closing window's keys into the horizon record."""
        for variant, keys in self.open.pop(wid, {}).items():
            last = self.last[variant]
            # past the bound, which keys stay tracked must not depend on set order
            for key in keys if len(last) + len(keys) <= self.cap else sorted(keys):
                if key in last or len(last) < self.cap:
                    last[key] = wid
                else:
                    self.untracked += 1

    def both(self, lo: int) -> list[str]:
        """Keys seen on both variants in closed windows >= lo."""
        a, b = self.last.values()
        if len(a) > len(b):
            a, b = b, a
        return sorted(k for k, w in a.items() if w >= lo and b.get(k, lo - 1) >= lo)

    def evict(self, lo: int) -> None:
        """Forget keys last seen before window `lo`."""
        for last in self.last.values():
            for k in [k for k, w in last.items() if w < lo]:
                del last[k]


__all__ = ["STICKY_KEYS_MAX", "StickyTracker"]
