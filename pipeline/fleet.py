"""Fleet mode: the rollouts of a directory, and which rollout an event is (pure core).

`run --rollouts DIR` judges every rollout whose file is in DIR from one
telemetry stream.  Each `*.toml` in the directory is one rollout config
(config.md), whose `[match]` says which events are its own: an `x_exp`
(the experiment id the edge propagates), a route prefix, variant names; every
key given must hold.  This module is the one home of that rule, in a scalar
form (`Router.route_one`, one event) and a column form (`Router.route`, a
frame), tested against each other, and of how a directory is read
(`load_dir`): a bad file is reported in one line and skipped, the others
load.

An event matching no rollout is not a dead letter (the topic carries other
services' traffic): it is counted by its `x_exp`, the first MAX_UNMATCHED
distinct values by name and the rest as "other".  An event matching two
rollouts is a configuration error: it goes to the dead-letter output with
both names, and counts against no rollout.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline import config as config_mod
from pipeline.config import Config, ConfigError, Match
from pipeline.decode.codec import readable_routing
from pipeline.model import DecodeError, Event

UNMATCHED = -1  # route: the event is no rollout's
AMBIGUOUS = -2  # route: the event matches two rollouts or more
MAX_UNMATCHED = 100  # distinct x_exp values counted by name among unmatched events; the rest are "other"
OTHER = "other"
ROUTED_BY = ("x_exp", "route", "variant")  # the event fields [match] reads
NO_X_EXP = ""  # how an unmatched event without x_exp is counted


def matches(match: Match, x_exp: str | None, route: str, variant: str) -> bool:
    """Whether an event with these values is the rollout's (scalar form of `match_column`)."""
    if match.x_exp and x_exp not in match.x_exp:
        return False
    if match.route_prefix and not route.startswith(match.route_prefix):
        return False
    return not match.variants or variant in match.variants


def match_column(match: Match) -> pl.Expr:
    """Whether each event of a frame is the rollout's (column form of `matches`), never null."""
    holds: list[pl.Expr] = []
    if match.x_exp:
        holds.append(pl.col("x_exp").cast(pl.String).is_in(list(match.x_exp)).fill_null(False))
    if match.route_prefix:
        route = pl.col("route").cast(pl.String)
        holds.append(pl.any_horizontal([route.str.starts_with(p) for p in match.route_prefix]))
    if match.variants:
        holds.append(pl.col("variant").cast(pl.String).is_in(list(match.variants)))
    return pl.all_horizontal(holds) if holds else pl.repeat(True, pl.len())


def ambiguity(names: Iterable[str], also: str = "") -> str:
    """The detail of the dead letter of a message two rollouts or more claim (`also`: its own fault)."""
    return f"matches the [match] of rollouts {', '.join(names)}: fix their configs so one claims it{also}"


class Router:
    """Routes events to the rollouts of a fleet, by index into `names`."""

    def __init__(self, rollouts: Sequence[Config]) -> None:
        self.names = tuple(cfg.name for cfg in rollouts)
        self.matches = tuple(cfg.match for cfg in rollouts)
        self._columns = [match_column(m).alias(f"m{i}") for i, m in enumerate(self.matches)]
        # Which rollouts an x_exp can match (those naming it, and those that name none): the rule
        # is checked against these only.
        self._any_x_exp = [i for i, m in enumerate(self.matches) if not m.x_exp]
        self._by_x_exp: dict[str, list[int]] = {}
        for i, m in enumerate(self.matches):
            for value in m.x_exp:
                self._by_x_exp.setdefault(value, []).append(i)

    def route_one(self, e: Event) -> int:
        """The index of the event's rollout, UNMATCHED or AMBIGUOUS."""
        return self.route_values(e.x_exp, e.route, e.variant)

    def route_values(self, x_exp: str | None, route: str | None, variant: str | None) -> int:
        """`route_one` of an event's values; None where a broken message's value cannot be read."""
        named = self._by_x_exp.get(x_exp, []) if x_exp is not None else []
        found = [i for i in (named + self._any_x_exp if self._any_x_exp else named)
                 if matches(self.matches[i], x_exp, route or "", variant or "")]
        if not found:
            return UNMATCHED
        return found[0] if len(found) == 1 else AMBIGUOUS

    def route(self, events: pl.DataFrame) -> npt.NDArray[np.int64]:
        """`route_one` of each row of a frame (frame.SCHEMA), as one array.

        The rule is applied once per distinct (x_exp, route, variant) of the
        frame (a few hundred at most in a batch, whatever its size) by the
        scalar form, and spread to the rows by their dictionary codes.
        """
        n = len(events)
        if not self.matches or n == 0:
            return np.full(n, UNMATCHED, dtype=np.int64)
        codes = events.select(
            pl.col(c).to_physical().cast(pl.Int64).fill_null(-1) + 1 for c in ROUTED_BY).to_numpy()
        widths = codes.max(axis=0) + 1
        key = (codes[:, 0] * widths[1] + codes[:, 1]) * widths[2] + codes[:, 2]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        values = events.select(ROUTED_BY)[first.tolist()].rows()
        each = np.array([self.route_values(*v) for v in values], dtype=np.int64)
        routed: npt.NDArray[np.int64] = each[inverse.ravel()]
        return routed

    def route_columns(self, events: pl.DataFrame) -> npt.NDArray[np.int64]:
        """`route` by the column form of the rule, `match_column` (tests hold the two together)."""
        n = len(events)
        if not self.matches or n == 0:
            return np.full(n, UNMATCHED, dtype=np.int64)
        hits: npt.NDArray[np.bool_] = events.select(self._columns).to_numpy().astype(np.bool_, copy=False)
        count = hits.sum(axis=1)
        out: npt.NDArray[np.int64] = np.argmax(hits, axis=1).astype(np.int64)
        out[count == 0] = UNMATCHED
        out[count > 1] = AMBIGUOUS
        return out

    def route_dead(self, dead: Iterable[tuple[int, DecodeError]]) -> list[int]:
        """`route_values` of each broken message, by what can still be read of it (codec.readable_routing).

        A broken message of one rollout counts against it (its schema gate), as
        in a run of that rollout alone; one no rollout or two claim is the fleet's.
        """
        return [self.route_values(*readable_routing(error.raw)) for _, error in dead]

    def claimants(self, x_exp: str | None, route: str | None, variant: str | None) -> list[str]:
        """The rollouts an event with these values matches (to name them in an ambiguity's dead letter)."""
        return [self.names[i] for i, m in enumerate(self.matches)
                if matches(m, x_exp, route or "", variant or "")]


@dataclass
class UnmatchedCounts:
    """Unmatched events by x_exp, bounded: MAX_UNMATCHED names, then OTHER."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, x_exp: str | None, n: int = 1) -> None:
        key = NO_X_EXP if x_exp is None else x_exp
        if key not in self.counts and len(self.counts) >= MAX_UNMATCHED:
            key = OTHER
        self.counts[key] += n

    def add_all(self, values: Iterable[tuple[str | None, int]]) -> None:
        for x_exp, n in values:
            self.add(x_exp, n)


@dataclass(frozen=True, slots=True)
class Retired:
    """Fleet output: a rollout's judge has stopped (its file is gone): its metrics series go too."""

    rollout: str


@dataclass(frozen=True, slots=True)
class Unmatched:
    """Fleet output: events of a chunk that matched no rollout, by x_exp (bounded: fleet.UnmatchedCounts)."""

    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Progress:
    """Fleet output: what a chunk said of its partition, for the source health of process 0."""

    partition: str
    messages: int
    lag: int | None


@dataclass(frozen=True)
class RolloutFile:
    """One loaded rollout definition: where it came from (a file's path, or a topic and key), its
    config, a digest of its text (a change reloads it) and its generation (which load first took the
    rollout: one removed and added again is a new rollout).  `label` names it in messages."""

    path: str
    cfg: Config
    digest: str
    generation: int = 0
    label: str = ""

    @property
    def shown(self) -> str:
        """How messages name where the rollout is defined: the file name, or the topic key."""
        return self.label or Path(self.path).name


@dataclass(frozen=True)
class Entry:
    """One rollout definition as read, before it is validated: a file, or a message of a topic.

    `text` is None when it could not be read (`problem` says why); `key` is the
    rollout name a topic's message key demands (None for files).
    """

    where: str
    label: str
    text: str | None
    problem: ConfigError | None = None
    key: str | None = None


@dataclass(frozen=True)
class Fleet:
    """The rollouts of a directory, by name (sorted), and the files that were refused (one line each)."""

    files: dict[str, RolloutFile]
    problems: tuple[str, ...] = ()

    @property
    def configs(self) -> list[Config]:
        return [f.cfg for f in self.files.values()]

    def get(self, name: str) -> Config | None:
        found = self.files.get(name)
        return None if found is None else found.cfg


class FleetError(ValueError):
    """The rollouts directory cannot be used at all (missing, not a directory)."""


def load_dir(path: str | Path, previous: Fleet | None = None, generation: int = 0) -> Fleet:
    """Every `*.toml` of a directory as a rollout (file name order): `load_entries` of its files."""
    root = Path(path)
    if not root.is_dir():
        raise FleetError(f"--rollouts {path}: not a directory")
    entries = []
    for file in sorted(root.glob("*.toml")):
        try:
            entries.append(Entry(str(file), file.name, config_mod.read_text(file)))
        except ConfigError as exc:
            entries.append(Entry(str(file), file.name, None, exc))
    return load_entries(entries, previous, generation)


def load_entries(entries: Iterable[Entry], previous: Fleet | None = None, generation: int = 0) -> Fleet:
    """Rollout definitions as a fleet, in order; bad ones refused, one line each.

    A definition is refused when it is not a valid config, has no `[match]`,
    names a rollout another one already named (or not its topic key), or would
    take the fleet past its `limits.max_rollouts` (the smallest any loaded one
    sets).  With the `previous` fleet (a reload): its rollouts are taken first,
    so a new one past the bound never displaces a running rollout; a running
    rollout whose definition has turned bad goes on under its last good config
    (reported); and a rollout new to the fleet gets `generation`, the others
    keep theirs.
    """
    before = {} if previous is None else {f.path: f for f in previous.files.values()}
    loaded: list[RolloutFile] = []
    problems: list[str] = []
    for entry in entries:
        try:
            if entry.text is None:
                raise entry.problem or ConfigError(entry.label, "cannot be read")
            cfg = config_mod.parse(entry.text)
            if not cfg.match.given:
                raise ConfigError("match", "a fleet rollout needs [match] with x_exp, route_prefix or "
                                  "variants (which events are its own)")
            if entry.key is not None and cfg.name != entry.key:
                raise ConfigError("rollout.name", f"{cfg.name!r} is not the message key {entry.key!r}")
        except ConfigError as exc:
            last = before.get(entry.where)
            if last is None:
                problems.append(f"{entry.label}: {exc}")
            else:
                problems.append(f"{entry.label}: {exc}; rollout {last.cfg.name} goes on under its last good "
                                "config")
                loaded.append(last)
            continue
        digest = hashlib.sha256(entry.text.encode()).hexdigest()
        loaded.append(RolloutFile(entry.where, cfg, digest, generation, entry.label))
    running = {} if previous is None else previous.files
    order = {f.path: i for i, f in enumerate(loaded)}
    loaded.sort(key=lambda f: (f.cfg.name not in running, order[f.path]))
    files: dict[str, RolloutFile] = {}
    bound = min((f.cfg.limits.max_rollouts for f in loaded), default=0)
    for f in loaded:
        if f.cfg.name in files:
            problems.append(f"{f.shown}: rollout.name: {f.cfg.name!r} is already {files[f.cfg.name].shown}'s")
        elif len(files) >= bound:
            problems.append(f"{f.shown}: limits.max_rollouts: the fleet already judges {bound} rollouts")
        else:
            was = running.get(f.cfg.name)
            files[f.cfg.name] = f if was is None else dataclasses.replace(f, generation=was.generation)
    return Fleet(dict(sorted(files.items())), tuple(sorted(problems)))


__all__ = [
    "AMBIGUOUS",
    "MAX_UNMATCHED",
    "NO_X_EXP",
    "OTHER",
    "ROUTED_BY",
    "UNMATCHED",
    "Fleet",
    "FleetError",
    "Progress",
    "Retired",
    "RolloutFile",
    "Router",
    "Unmatched",
    "UnmatchedCounts",
    "ambiguity",
    "load_dir", "load_entries",
    "match_column",
    "matches",
]
