"""Rollout config: TOML in, one frozen, validated object out.

Every error names the offending key (``thresholds.latency_ratio_max``) and the
bad value; nothing falls back silently.  The accepted keys are exactly those of
docs/config.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model import LADDER

LATENCY_FIELDS = ("tffb", "tusable", "tfinal")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class VariantSpec:
    """Intended serving config of one variant; None means not checked."""

    index_hash: str | None = None
    metric: str | None = None
    analyzer: str | None = None
    cache_prefix: str | None = None


@dataclass(frozen=True)
class Windows:
    """Event-time windowing."""

    size_s: int = 60
    horizon_s: int = 3600
    allowed_lateness_s: int = 30
    max_future_s: int = 300
    idle_close_s: int = 90

    @property
    def horizon_windows(self) -> int:
        """How many windows a horizon spans."""
        return self.horizon_s // self.size_s


@dataclass(frozen=True)
class Thresholds:
    """Gate thresholds; defaults are the playbook's numbers."""

    latency_field: str = "tfinal"
    latency_quantile: float = 0.95
    latency_ratio_max: float = 1.25
    error_ratio_max: float = 1.20
    error_rate_tolerance: float = 0.002
    delta_s_median_max: float = 0.45
    delta_s_median_stop: float = 0.60
    coverage_min: float = 0.70
    cache_hit_drop_max: float = 0.05
    lambda_flip_stop: int = 2
    new_5xx_min_count: int = 1
    new_5xx_alpha: float = 0.001
    min_warm_requests: int = 50
    min_probe_events: int = 20
    alpha: float = 0.01  # significance of the sequential tests (docs/gates.md)


@dataclass(frozen=True)
class Limits:
    """Bounds on what events can make the process hold."""

    max_event_bytes: int = 1_048_576
    max_label_values: int = 64
    dedupe_max_ids: int = 1_000_000
    max_sticky_keys: int = 100_000  # sticky keys tracked per variant (sticky_flip); the rest are counted
    max_question_ids: int = 4096  # probe question ids kept (lambda_convergence); the rest fold into "other"
    max_rollouts: int = 100  # fleet mode (run --rollouts): rollouts judged at once; files past it are refused


@dataclass(frozen=True)
class Match:
    """Which events of a shared telemetry stream are this rollout's (fleet mode, `run --rollouts`).

    Each key given must hold (an event's value one of the listed ones; `route_prefix`:
    its route starts with one of them); a key not given holds for every event.
    The rule itself, in scalar and column form, is `pipeline.fleet`.
    """

    x_exp: tuple[str, ...] = ()
    route_prefix: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        """Whether any key is set (a match that sets none takes every event)."""
        return bool(self.x_exp or self.route_prefix or self.variants)


@dataclass(frozen=True)
class Config:
    """A validated rollout config."""

    name: str
    control: str
    canary: str
    stage: str
    variants: dict[str, VariantSpec] = field(default_factory=dict)
    windows: Windows = Windows()
    sustain_s: int = 3600
    thresholds: Thresholds = Thresholds()
    limits: Limits = Limits()
    match: Match = Match()

    def spec(self, variant: str) -> VariantSpec:
        """The intended config of a variant (all None when not configured)."""
        return self.variants.get(variant, VariantSpec())

    def with_stage(self, stage: str) -> Config:
        """A copy at another stage (validated)."""
        _check_stage("rollout.stage", stage)
        return dataclasses.replace(self, stage=stage)

    def effective(self) -> dict[str, Any]:
        """Every setting, defaults included, as nested plain data (for check-config)."""
        return {
            "rollout": {
                "name": self.name,
                "control": self.control,
                "canary": self.canary,
                "stage": self.stage,
            },
            "variants": {k: dataclasses.asdict(v) for k, v in self.variants.items()},
            "windows": dataclasses.asdict(self.windows),
            "promotion": {"sustain_s": self.sustain_s},
            "thresholds": dataclasses.asdict(self.thresholds),
            "limits": dataclasses.asdict(self.limits),
            "match": {k: list(v) for k, v in dataclasses.asdict(self.match).items()},
        }


def load(path: str | Path) -> Config:
    """Read and validate a TOML rollout config file."""
    return parse(read_text(path))


def read_text(path: str | Path) -> str:
    """A config file's text; ConfigError (one line, naming the file) if unreadable or not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(path), f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} "
                                     "(save the file as UTF-8)") from None


def parse(text: str) -> Config:
    """Validate TOML text as a rollout config."""
    return parse_doc(read_toml(text))


def read_toml(text: str) -> dict[str, Any]:
    """TOML text as a table; ConfigError if it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("toml", f"not valid TOML: {exc}") from None


def parse_doc(doc: dict[str, Any]) -> Config:
    """Validate a parsed TOML table as a rollout config."""
    _only(doc, "", {"rollout", "variants", "windows", "promotion", "thresholds", "limits", "match"})

    rollout = _table(doc, "rollout", required=True)
    _only(rollout, "rollout", {"name", "control", "canary", "stage"})
    name = _string(rollout, "rollout", "name", required=True)
    control = _string(rollout, "rollout", "control", required=True)
    canary = _string(rollout, "rollout", "canary", required=True)
    stage = _string(rollout, "rollout", "stage", required=True)
    assert name is not None and control is not None and canary is not None and stage is not None
    _check_stage("rollout.stage", stage)
    if control == canary:
        raise ConfigError("rollout.canary", f"must differ from rollout.control, both are {canary!r}")

    variants: dict[str, VariantSpec] = {}
    for vname, table in _table(doc, "variants").items():
        key = f"variants.{vname}"
        if vname not in (control, canary):
            raise ConfigError(key, f"names neither the control {control!r} nor the canary {canary!r}")
        if not isinstance(table, dict):
            raise ConfigError(key, f"expected a table, got {table!r}")
        _only(table, key, {"index_hash", "metric", "analyzer", "cache_prefix"})
        variants[vname] = VariantSpec(
            **{f: _string(table, key, f) for f in ("index_hash", "metric", "analyzer", "cache_prefix")}
        )

    windows = _section(doc, "windows", Windows)
    for key in ("size_s", "horizon_s"):
        if getattr(windows, key) <= 0:
            raise ConfigError(f"windows.{key}", f"must be > 0, got {getattr(windows, key)}")
    for key in ("allowed_lateness_s", "max_future_s", "idle_close_s"):
        if getattr(windows, key) < 0:
            raise ConfigError(f"windows.{key}", f"must be >= 0, got {getattr(windows, key)}")
    if windows.horizon_s % windows.size_s:
        raise ConfigError(
            "windows.horizon_s",
            f"must be a multiple of windows.size_s ({windows.size_s}), got {windows.horizon_s}",
        )

    promotion = _table(doc, "promotion")
    _only(promotion, "promotion", {"sustain_s"})
    sustain_s = _number(promotion, "promotion", "sustain_s", int, 3600)
    if sustain_s < 0:
        raise ConfigError("promotion.sustain_s", f"must be >= 0, got {sustain_s}")

    thresholds = _section(doc, "thresholds", Thresholds)
    _check_thresholds(thresholds)
    limits = _section(doc, "limits", Limits)
    for key in ("max_event_bytes", "max_label_values", "dedupe_max_ids", "max_sticky_keys",
                "max_question_ids", "max_rollouts"):
        if getattr(limits, key) < 1:
            raise ConfigError(f"limits.{key}", f"must be >= 1, got {getattr(limits, key)}")

    return Config(
        name=name,
        control=control,
        canary=canary,
        stage=stage,
        variants=variants,
        windows=windows,
        sustain_s=sustain_s,
        thresholds=thresholds,
        limits=limits,
        match=_match(_table(doc, "match")),
    )


def _match(table: dict[str, Any]) -> Match:
    """The [match] table: each key a non-empty string or a list of them."""
    _only(table, "match", {"x_exp", "route_prefix", "variants"})
    values: dict[str, tuple[str, ...]] = {}
    for key in ("x_exp", "route_prefix", "variants"):
        if key not in table:
            continue
        value = table[key]
        items = [value] if isinstance(value, str) else value
        if (not isinstance(items, list) or not items
                or not all(isinstance(v, str) and v for v in items)):
            raise ConfigError(f"match.{key}", f"expected a non-empty string or list of them, got {value!r}")
        values[key] = tuple(dict.fromkeys(items))
    return Match(**values)


def _check_stage(key: str, stage: str) -> None:
    if stage not in LADDER:
        raise ConfigError(key, f"must be one of {', '.join(LADDER)}; got {stage!r}")


def _check_thresholds(t: Thresholds) -> None:
    if t.latency_field not in LATENCY_FIELDS:
        raise ConfigError(
            "thresholds.latency_field",
            f"must be one of {', '.join(LATENCY_FIELDS)}; got {t.latency_field!r}",
        )
    open_unit = {"latency_quantile", "new_5xx_alpha", "alpha"}
    unit = {"delta_s_median_max", "delta_s_median_stop", "coverage_min", "cache_hit_drop_max",
            "error_rate_tolerance"}
    for f in dataclasses.fields(t):
        value = getattr(t, f.name)
        key = f"thresholds.{f.name}"
        if f.name in open_unit and not 0 < value < 1:
            raise ConfigError(key, f"must be between 0 and 1 (exclusive), got {value}")
        if f.name in unit and not 0 <= value <= 1:
            raise ConfigError(key, f"must be between 0 and 1, got {value}")
        if f.name in ("latency_ratio_max", "error_ratio_max") and not value > 0:
            raise ConfigError(key, f"must be > 0, got {value}")
        # A minimum sample of 0 would judge a variant with no requests at all (a rate of 0/0).
        if f.name in ("lambda_flip_stop", "new_5xx_min_count", "min_warm_requests",
                      "min_probe_events") and value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")


def _only(table: dict[str, Any], prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(full, f"unknown key (allowed here: {', '.join(sorted(allowed))})")


def _table(doc: dict[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    if key not in doc:
        if required:
            raise ConfigError(key, "missing required table")
        return {}
    value = doc[key]
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {value!r}")
    return value


def _string(table: dict[str, Any], prefix: str, key: str, required: bool = False) -> str | None:
    if key not in table:
        if required:
            raise ConfigError(f"{prefix}.{key}", "missing required key")
        return None
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _number(table: dict[str, Any], prefix: str, key: str, kind: type, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    full = f"{prefix}.{key}"
    if isinstance(value, bool):
        raise ConfigError(full, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int:
        if not isinstance(value, int):
            raise ConfigError(full, f"expected an integer, got {value!r}")
        return value
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(full, f"expected a number, got {value!r}")
    return float(value)


def _section(doc: dict[str, Any], name: str, cls: type[Any]) -> Any:
    table = _table(doc, name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _only(table, name, set(fields))
    values: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in table:
            continue
        if f.type in ("str", str):
            values[key] = _string(table, name, key)
        else:
            kind = int if f.type in ("int", int) else float
            values[key] = _number(table, name, key, kind, f.default)
    return cls(**values)
