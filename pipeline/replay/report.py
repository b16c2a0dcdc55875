"""The replay report: what the gate would have said, window by window, as one HTML file.

`window_record` turns an engine `Report` into a small JSON-able record of the
statistics behind its verdict (this window's counts, the horizon's medians,
quantiles and cache rates); `render` draws the verdict records and these
window records as matplotlib figures (Agg, no display needed) and writes

* `<rollout>.report.html`: self-contained (inline CSS, every figure a base64
  PNG data URI, a Content-Security-Policy that forbids anything else, and a
  tiny script that checks every figure decoded: it calls `console.error`
  naming each one that did not and sets `data-figures-loaded` on `<body>`);
* `<rollout>-figures/NAME.png`: the same figures as files.

A figure without data (no probes, no cache blocks, no windows at all) is still
drawn, saying "no data" and why, so the report always has every figure.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import RcKeyType

from pipeline.config import Config
from pipeline.decode.codec import parse_ts
from pipeline.gates import GATES
from pipeline.gates.registry import REGISTRY
from pipeline.model import Decision, GateRow, GateStatus, format_time, gate_status
from pipeline.replay.run import window_record

DECISIONS = (Decision.STOP, Decision.INSUFFICIENT_DATA, Decision.HOLD, Decision.PROMOTE)  # bottom to top
DECISION_COLOURS = {
    Decision.STOP: "#d62728",
    Decision.INSUFFICIENT_DATA: "#9e9e9e",
    Decision.HOLD: "#f0a202",
    Decision.PROMOTE: "#2ca02c",
}
STATUSES = (GateStatus.PASS, GateStatus.SKIPPED, GateStatus.WARN, GateStatus.INSUFFICIENT_DATA,
            GateStatus.FAIL)
STATUS_COLOURS = {
    GateStatus.PASS: "#4caf50",
    GateStatus.SKIPPED: "#e0e0e0",
    GateStatus.WARN: "#ffb300",
    GateStatus.INSUFFICIENT_DATA: "#9e9e9e",
    GateStatus.FAIL: "#e53935",
}
SKEW_GATES = ("index_skew", "region_skew", "cache_namespace", "schema_violations", "lambda_convergence",
              "sticky_flip")

_STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
}
# Control and canary look the same in every figure; the canary dashed, so equal lines both show.
_CONTROL_STYLE: dict[str, Any] = {"color": "#1f77b4", "linestyle": "-", "marker": "o", "markersize": 3}
_CANARY_STYLE: dict[str, Any] = {"color": "#ff7f0e", "linestyle": "--", "marker": "s", "markersize": 3}
_SIZE = (10.0, 3.6)  # inches, at _DPI: 1100 x 396 px
_DPI = 110
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# -- the replay as series ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Replay:
    """Verdict and window records side by side, with their window ends on the time axis."""

    cfg: Config
    verdicts: Sequence[dict[str, Any]]
    windows: Sequence[dict[str, Any]]
    ends: list[float]  # window ends on matplotlib's date axis (days since its epoch)

    @classmethod
    def of(cls, cfg: Config, verdicts: Sequence[dict[str, Any]],
           windows: Sequence[dict[str, Any]]) -> _Replay:
        if len(verdicts) != len(windows):
            raise ValueError(f"one window record per verdict needed, got {len(verdicts)} verdicts and "
                             f"{len(windows)} windows")
        for i, (v, w) in enumerate(zip(verdicts, windows, strict=True)):
            if v["window_end"] != w["window_end"]:
                raise ValueError(f"verdict {i} ends at {v['window_end']!r} but window record {i} at "
                                 f"{w['window_end']!r}")
            if v["decision"] not in DECISIONS:
                raise ValueError(f"verdict {i} decision must be one of {[str(d) for d in DECISIONS]}, "
                                 f"got {v['decision']!r}")
        ends = _days([datetime.fromtimestamp(parse_ts(v["window_end"]), tz=UTC) for v in verdicts])
        return cls(cfg, verdicts, windows, ends)

    @property
    def width(self) -> float:
        """A window's length on the time axis (days)."""
        return self.cfg.windows.size_s / 86400

    @property
    def starts(self) -> list[float]:
        return [end - self.width for end in self.ends]

    def rows(self, gate: str) -> list[list[dict[str, Any]]]:
        """Rows of `gate` in each verdict."""
        return [[row for row in v["gates"] if row["gate"] == gate] for v in self.verdicts]

    def status(self, gate: str) -> list[GateStatus | None]:
        """Overall status of `gate` per verdict, as the verdict ranks it (None: no row)."""
        return [gate_status(tuple(map(GateRow.from_record, rows)), gate) for rows in self.rows(gate)]

    def first_failure(self, gate: str) -> tuple[str, list[dict[str, Any]]] | None:
        """Window end of the first verdict where `gate` failed, and its failing rows."""
        for verdict, rows in zip(self.verdicts, self.rows(gate), strict=True):
            failed = [row for row in rows if row["status"] == GateStatus.FAIL]
            if failed:
                return str(verdict["window_end"]), failed
        return None


def _days(moments: Sequence[datetime]) -> list[float]:
    """Datetimes as positions on matplotlib's date axis."""
    return [float(x) for x in mdates.date2num(moments)]  # type: ignore[no-untyped-call]  # dates.py is unannotated


def _nan(value: float | None) -> float:
    """A gap in a line plot for a missing value."""
    return math.nan if value is None else float(value)


# -- figures -------------------------------------------------------------------------------------

# A figure builder draws on a fresh figure and returns None, or returns why there is no data.
Builder = Callable[[Figure, _Replay], str | None]


def _time_axis(ax: Axes, r: _Replay) -> None:
    """Window ends in UTC along x, from the first window's start to the last one's end."""
    ax.xaxis_date(UTC)
    # matplotlib's dates.py is unannotated, hence the ignores
    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=12)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    ax.set_xlim(r.starts[0], r.ends[-1])
    ax.set_xlabel("window end (UTC)")


def _status_strip(ax: Axes, r: _Replay, gates: Sequence[str]) -> list[GateStatus]:
    """Colour one row per gate by its status in each window; returns the statuses shown."""
    codes = {status: i for i, status in enumerate(STATUSES)}
    cmap = ListedColormap([STATUS_COLOURS[s] for s in STATUSES]).with_extremes(bad="white")
    norm = BoundaryNorm([i - 0.5 for i in range(len(STATUSES) + 1)], cmap.N)
    edges = [*r.starts, r.ends[-1]]
    grid = [[math.nan if s is None else codes[s] for s in r.status(gate)] for gate in gates]
    ax.pcolormesh(edges, range(len(gates) + 1), grid, cmap=cmap, norm=norm, edgecolors="white",
                  linewidth=0.5)
    ax.set_yticks([i + 0.5 for i in range(len(gates))], list(gates))
    ax.set_ylim(len(gates), 0)
    ax.grid(False)
    ax.tick_params(axis="y", length=0)
    return sorted({s for gate in gates for s in r.status(gate) if s is not None}, key=STATUSES.index)


def _status_legend(fig: Figure, shown: Iterable[GateStatus]) -> None:
    """Legend of the status colours shown, under the figure."""
    handles = [Patch(facecolor=STATUS_COLOURS[s], label=f"gate {s}") for s in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def _with_strip(fig: Figure) -> tuple[Axes, Axes]:
    """Main axes over a one-row status strip, sharing the time axis."""
    main, strip = fig.subplots(2, 1, sharex=True, height_ratios=[5, 1])
    main.tick_params(labelbottom=False)
    return main, strip


def _decision(fig: Figure, r: _Replay) -> str | None:
    ax = fig.subplots()
    level = {d: i for i, d in enumerate(DECISIONS)}
    for d in DECISIONS:
        spans = [(start, r.width) for start, v in zip(r.starts, r.verdicts, strict=True)
                 if v["decision"] == d]
        if spans:
            ax.broken_barh(spans, (level[d] - 0.3, 0.6), facecolors=DECISION_COLOURS[d],
                           edgecolor="white", linewidth=0.5)
    ax.step(r.ends, [level[Decision(v["decision"])] for v in r.verdicts], where="pre", color="#424242",
            linewidth=0.8, alpha=0.6)
    ax.set_yticks(range(len(DECISIONS)), [str(d) for d in DECISIONS])
    ax.set_ylim(-0.6, len(DECISIONS) - 0.4)
    ax.grid(axis="y", visible=False)
    ax.set_title(f"Decision per window ({r.cfg.name}, stage {r.cfg.stage})")
    _time_axis(ax, r)
    return None


def _latency_ratio(fig: Figure, r: _Replay) -> str | None:
    rows = r.rows("p95_warm_latency")
    regions = sorted({row["region"] for rs in rows for row in rs
                      if row["region"] is not None and row["observed"] is not None})
    if not regions:
        return "no window had enough warm requests of both variants in any region"
    ax = fig.subplots()
    ring: dict[str, Any] = {"s": 40, "facecolors": "none", "edgecolors": STATUS_COLOURS[GateStatus.FAIL],
                            "linewidths": 1.2, "zorder": 3}
    any_failed = False
    for region in regions:
        by_window = [{row["region"]: row for row in rs}.get(region) for rs in rows]
        ratio = [_nan(row["observed"]) if row else math.nan for row in by_window]
        ax.plot(r.ends, ratio, marker="o", markersize=3, linewidth=1.5, label=region)
        failed = [i for i, row in enumerate(by_window)
                  if row and row["status"] == GateStatus.FAIL and row["observed"] is not None]
        if failed:
            ax.scatter([r.ends[i] for i in failed], [ratio[i] for i in failed], **ring)
            any_failed = True
    threshold = [_nan(next((row["threshold"] for row in rs if row["threshold"] is not None), None))
                 for rs in rows]
    known = {t for t in threshold if not math.isnan(t)}
    ax.step(r.ends, threshold, where="pre", color="#212121", linestyle="--", linewidth=1.2,
            label=f"threshold {known.pop():g}" if len(known) == 1 else "threshold")
    if any_failed:
        ax.scatter([], [], label="fail", **ring)  # legend entry for the rings
    field = r.cfg.thresholds.latency_field
    ax.set_ylabel(f"canary / control p{r.cfg.thresholds.latency_quantile * 100:g} warm {field}")
    ax.set_title("Warm latency ratio per region (gate p95_warm_latency)")
    ax.legend(loc="upper left", ncols=len(regions) + 2)
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.5) * 1.1)
    _time_axis(ax, r)
    return None


# gates with a sequential test (those that declare what a window adds to it)
TESTED_GATES = tuple(gate.name for gate in REGISTRY if gate.samples is not None)


def _evidence(fig: Figure, r: _Replay) -> str | None:
    series: dict[str, list[float]] = {}
    for gate in TESTED_GATES:
        for i, rows in enumerate(r.rows(gate)):
            for row in rows:
                if row.get("p_value") is not None:
                    name = f"{gate} {row['region']}" if row["region"] else gate
                    series.setdefault(name, [math.nan] * len(r.ends))[i] = max(row["p_value"], 1e-12)
    if not series:
        return "no sequential test had data of both variants"
    ax = fig.subplots()
    for name, values in sorted(series.items()):
        ax.step(r.ends, values, where="pre", linewidth=1.5, label=name)
    alpha = r.cfg.thresholds.alpha
    ax.axhline(alpha, color="#212121", linestyle="--", linewidth=1.2, label=f"alpha {alpha:g}")
    ax.set_yscale("log")
    ax.set_ylim(top=1.5)
    ax.set_ylabel("p-value (log)")
    ax.set_title("Evidence: sequential p-value per gate and region, since the stage began")
    ax.legend(loc="lower left", ncols=min(len(series) + 1, 4), fontsize="small")
    _time_axis(ax, r)
    return None


def _error_rate(fig: Figure, r: _Replay) -> str | None:
    if not any(sum(w["users"].values()) for w in r.windows):
        return "no user requests in any window"
    ax, strip = _with_strip(fig)
    for variant, style in ((r.cfg.control, _CONTROL_STYLE), (r.cfg.canary, _CANARY_STYLE)):
        rate = [w["errors"].get(variant, 0) / w["users"][variant] * 100 if w["users"].get(variant)
                else math.nan for w in r.windows]
        ax.plot(r.ends, rate, label=variant, **style)
    ax.set_ylabel("5xx rate in window (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("5xx rate per window (gate error_rate judges the horizon)")
    ax.legend(loc="upper left", ncols=2)
    _status_legend(fig, _status_strip(strip, r, ["error_rate"]))
    _time_axis(strip, r)
    return None


def _five_xx_classes(fig: Figure, r: _Replay) -> str | None:
    canary = r.cfg.canary
    counts = [Counter({(c["status"], c["phase"]): c["n"] for c in w["classes"] if c["variant"] == canary})
              for w in r.windows]
    failed = [s is GateStatus.FAIL for s in r.status("new_5xx_class")]
    if not any(counts) and not any(failed):
        return f"the canary {canary!r} had no 5xx in any window"
    ax = fig.subplots()
    classes = sorted(set().union(*counts))
    bottom = [0.0] * len(counts)
    palette = matplotlib.colormaps["tab10"]
    for i, cls in enumerate(classes):
        heights = [float(c.get(cls, 0)) for c in counts]
        ax.bar(r.starts, heights, width=r.width * 0.9, bottom=bottom, align="edge",
               color=palette(i % 10), label=f"{cls[0]}/{cls[1]}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    top = max(bottom, default=0.0) or 1.0
    marks = [i for i, f in enumerate(failed) if f]
    if marks:
        ax.scatter([r.ends[i] - r.width / 2 for i in marks], [bottom[i] + top * 0.06 for i in marks],
                   marker="v", s=30, color=STATUS_COLOURS[GateStatus.FAIL], label="new_5xx_class fail",
                   zorder=3)
    ax.set_ylim(0, top * 1.25)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{canary} 5xx in window")
    ax.set_title("Canary 5xx per window by class (status/phase)")
    ax.legend(loc="upper left", ncols=min(len(classes) + 1, 6))
    _time_axis(ax, r)
    return None


def _delta_s(fig: Figure, r: _Replay) -> str | None:
    if not any(w["delta_s_median"] for w in r.windows):
        return "no probe with ΔS in any horizon"
    t = r.cfg.thresholds
    ax, strip = _with_strip(fig)
    for variant, style in ((r.cfg.control, _CONTROL_STYLE), (r.cfg.canary, _CANARY_STYLE)):
        ax.plot(r.ends, [_nan(w["delta_s_median"].get(variant)) for w in r.windows], label=variant, **style)
    ax.axhline(t.delta_s_median_max, color=DECISION_COLOURS[Decision.HOLD], linestyle="--",
               label=f"promote max {t.delta_s_median_max:g}")
    ax.axhline(t.delta_s_median_stop, color=DECISION_COLOURS[Decision.STOP], linestyle="--",
               label=f"stop {t.delta_s_median_stop:g}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("median ΔS over the horizon")
    ax.set_title("ΔS median per variant (gate delta_s_median)")
    ax.legend(loc="upper left", ncols=4)
    _status_legend(fig, _status_strip(strip, r, ["delta_s_median"]))
    _time_axis(strip, r)
    return None


def _coverage(fig: Figure, r: _Replay) -> str | None:
    canary = r.cfg.canary
    topics = sorted({c["topic"] for w in r.windows for c in w["coverage_median"] if c["variant"] == canary})
    if not topics:
        return f"no probe with coverage from the canary {canary!r} in any horizon"
    ax, strip = _with_strip(fig)
    for topic in topics:
        values = [_nan(next((c["value"] for c in w["coverage_median"]
                             if c["variant"] == canary and c["topic"] == topic), None)) for w in r.windows]
        ax.plot(r.ends, values, marker="o", markersize=3, label=topic)
    t = r.cfg.thresholds
    ax.axhline(t.coverage_min, color=DECISION_COLOURS[Decision.STOP], linestyle="--",
               label=f"min {t.coverage_min:g}")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{canary} median coverage")
    ax.set_title("Canary coverage median per probe topic (gate coverage)")
    ax.legend(loc="lower left", ncols=len(topics) + 1)
    _status_legend(fig, _status_strip(strip, r, ["coverage"]))
    _time_axis(strip, r)
    return None


def _skew(fig: Figure, r: _Replay) -> str | None:
    if not any(s is not None for gate in SKEW_GATES for s in r.status(gate)):
        return "no verdict has rows of these gates"
    ax = fig.subplots()
    ax.set_title("Status of the skew, schema, λ and sticky gates per window")
    _status_legend(fig, _status_strip(ax, r, SKEW_GATES))
    _time_axis(ax, r)
    return None


def _cache(fig: Figure, r: _Replay) -> str | None:
    if not any(w["cache_hit_rate"] for w in r.windows):
        return "no user request with a cache block in any horizon"
    ax, strip = _with_strip(fig)
    for variant, style in ((r.cfg.control, _CONTROL_STYLE), (r.cfg.canary, _CANARY_STYLE)):
        ax.plot(r.ends, [_nan(w["cache_hit_rate"].get(variant)) for w in r.windows], label=variant, **style)
    ax.set_ylim(0, 1)
    ax.set_ylabel("cache hit rate over the horizon")
    ax.set_title("Cache hit rate per variant (gate cache_hit_regression)")
    ax.legend(loc="lower left", ncols=2)
    _status_legend(fig, _status_strip(strip, r, ["cache_hit_regression"]))
    _time_axis(strip, r)
    return None


@dataclass(frozen=True)
class _FigureSpec:
    build: Builder
    alt: str  # alt text, and the title of a figure without data
    caption: str


FIGURES: dict[str, _FigureSpec] = {
    "decision": _FigureSpec(_decision, "Decision per window over time",
                            "Each window's decision: stop, insufficient_data, hold or promote."),
    "latency_ratio": _FigureSpec(
        _latency_ratio, "Canary/control p95 warm latency ratio per region",
        "Observed ratio of gate p95_warm_latency per region over the horizon; dashed: the threshold; "
        "circled: failing rows."),
    "evidence": _FigureSpec(
        _evidence, "Sequential p-value per gate and region",
        "Anytime-valid p-value of the sequential tests behind p95_warm_latency, error_rate and "
        "cache_hit_regression, accumulated since the stage began; dashed: thresholds.alpha. A row fails "
        "only below it and with its estimate past its threshold."),
    "error_rate": _FigureSpec(
        _error_rate, "5xx rate per window, canary and control",
        "Share of user requests with status >= 500 in each window; the strip is the error_rate gate's "
        "status (it judges the horizon, per region)."),
    "five_xx_classes": _FigureSpec(
        _five_xx_classes, "Canary 5xx per window by class",
        "Canary 5xx user requests in each window, stacked by status/failure phase; "
        "triangles: gate new_5xx_class failed."),
    "delta_s": _FigureSpec(
        _delta_s, "ΔS median per variant",
        "Median ΔS of probes over the horizon; dashed: delta_s_median_max (promote) and "
        "delta_s_median_stop (hard stop); the strip is the delta_s_median gate's status."),
    "coverage": _FigureSpec(
        _coverage, "Canary coverage median per topic",
        "Median canary coverage per probe topic over the horizon; dashed: coverage_min; the strip is "
        "the coverage gate's status."),
    "skew": _FigureSpec(
        _skew, "Status timeline of the skew, schema, λ and sticky gates",
        "Status of index_skew, region_skew, cache_namespace, schema_violations, lambda_convergence "
        "and sticky_flip in each verdict."),
    "cache": _FigureSpec(
        _cache, "Cache hit rate per variant",
        "Cache hit rate of user requests with a cache block over the horizon; the strip is the "
        "cache_hit_regression gate's status."),
}


def _draw(name: str, r: _Replay) -> tuple[bytes, str | None]:
    """PNG bytes of figure `name`, and why it has no data (None when it has)."""
    spec = FIGURES[name]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        missing = spec.build(fig, r) if r.verdicts else "no window was judged"
        if missing is not None:
            fig.clear()
            ax = fig.subplots()
            ax.set_axis_off()
            ax.set_title(spec.alt)
            ax.text(0.5, 0.5, f"no data: {missing}", ha="center", va="center", fontsize=12,
                    color="#616161", transform=ax.transAxes)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue(), missing


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #212121;
       max-width: 1160px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #616161; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; width: 100%; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #fafafa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; font-size: 12px; }
.never { color: #9e9e9e; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #616161; font-size: 13px; }
ul.reasons { margin: 4px 0; padding-left: 20px; }
"""

# Counts the figures that decoded; names any that did not on the console (a test reads it there).
_SCRIPT = """
window.addEventListener("load", function () {
  var loaded = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete && img.naturalWidth > 0) { loaded += 1; }
    else { console.error("figure did not load: " + img.id); }
  });
  document.body.dataset.figuresLoaded = String(loaded);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    """A value of a what-if record as text."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple) and len(value) == 2 and not any(
            isinstance(v, dict | list) for v in value):
        return f"{_fmt(value[0])} → {_fmt(value[1])}"
    return str(value)


_BADGE_COLOURS = {str(k): v for k, v in [*STATUS_COLOURS.items(), *DECISION_COLOURS.items()]}
_LIGHT = (STATUS_COLOURS[GateStatus.SKIPPED], STATUS_COLOURS[GateStatus.WARN])


def _badge(value: str) -> str:
    """A decision or gate status as a coloured label."""
    colour = _BADGE_COLOURS.get(value, "#616161")
    text = "#212121" if colour in _LIGHT else "#fff"
    return f'<span class="badge" style="background:{colour};color:{text}">{_e(value)}</span>'


def _reasons(rows: Sequence[Mapping[str, Any]]) -> str:
    items = "".join(f"<li>{_badge(row['status'])} <b>{_e(row['gate'])}"
                    f"{' ' + _e(row['region']) if row['region'] else ''}</b>: {_e(row['reason'])}</li>"
                    for row in rows)
    return f"<ul class='reasons'>{items}</ul>"


def _summary(r: _Replay) -> str:
    if not r.verdicts:
        return "<h2>Summary</h2><p>No windows were judged.</p>"
    counts = Counter(v["decision"] for v in r.verdicts)
    cells = "".join(f"<tr><td>{_badge(d)}</td><td class='num'>{counts[d]}</td></tr>"
                    for d in DECISIONS)
    first_stop = next((v for v in r.verdicts if v["decision"] == Decision.STOP), None)
    if first_stop is None:
        stop = "<p id='first-stop' data-window-end=''>The gate never said <b>stop</b>.</p>"
    else:
        hard = [row for row in first_stop["gates"] if row["hard_stop"]]
        others = [row for row in first_stop["gates"]
                  if not row["hard_stop"] and row["status"] != GateStatus.PASS]
        stop = (f"<p id='first-stop' data-window-end='{_e(first_stop['window_end'])}'>First <b>stop</b> "
                f"in the window ending {_e(first_stop['window_end'])}; hard stops:</p>{_reasons(hard)}"
                + (f"<p>Rows that did not pass without stopping:</p>{_reasons(others)}" if others else ""))
    first, last = r.verdicts[0], r.verdicts[-1]
    start = format_time(parse_ts(first["window_end"]) - r.cfg.windows.size_s)
    return (f"<h2>Summary</h2><p>{len(r.verdicts)} windows from {_e(start)} "
            f"to {_e(last['window_end'])}; last decision {_badge(last['decision'])}.</p>"
            f"<table id='decisions' style='width:auto'><tr><th>decision</th><th>windows</th></tr>{cells}"
            f"</table>{stop}")


def _first_failures(r: _Replay) -> str:
    rows = []
    for gate in GATES:
        found = r.first_failure(gate)
        if found is None:
            rows.append(f"<tr data-gate='{_e(gate)}' data-first-fail=''><td>{_e(gate)}</td>"
                        f"<td class='never'>never</td><td></td><td></td><td></td></tr>")
            continue
        end, failed = found
        regions = "<br>".join(_e(row["region"] or "—") for row in failed)
        reasons = "<br>".join(_e(row["reason"]) for row in failed)
        hard = "yes" if any(row["hard_stop"] for row in failed) else "no"
        rows.append(f"<tr data-gate='{_e(gate)}' data-first-fail='{_e(end)}'><td>{_e(gate)}</td>"
                    f"<td>{_e(end)}</td><td>{regions}</td><td>{hard}</td><td>{reasons}</td></tr>")
    return ("<h2>First window where each gate failed</h2><table id='first-failures'><tr><th>gate</th>"
            "<th>window end</th><th>region</th><th>hard stop</th><th>reason</th></tr>"
            + "".join(rows) + "</table>")


def _table(records: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(rec.get(c)))}</td>" for c in columns) + "</tr>"
                   for rec in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def _whatifs(whatifs: Sequence[Mapping[str, Any]]) -> str:
    """Each what-if generically: mappings as key/value tables, lists of records as tables."""
    parts = ["<h2>What if</h2>"]
    for i, whatif in enumerate(whatifs):
        title = whatif.get("name", f"what-if {i + 1}")
        parts.append(f"<section class='whatif' id='whatif-{i}'><h3>{_e(title)}</h3>")
        for key, value in whatif.items():
            if key == "name":
                continue
            if isinstance(value, Mapping):
                body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in value.items())
                parts.append(f"<p><b>{_e(key)}</b></p><table style='width:auto'>{body}</table>"
                             if value else f"<p><b>{_e(key)}</b>: none</p>")
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                parts.append(f"<p><b>{_e(key)}</b> ({len(value)})</p>{_table(value)}")
            elif isinstance(value, list) and not value:
                parts.append(f"<p><b>{_e(key)}</b>: none</p>")
            else:
                parts.append(f"<p><b>{_e(key)}</b>: {_e(_fmt(value))}</p>")
        parts.append("</section>")
    return "".join(parts)


def _figure(name: str, png: bytes, missing: str | None) -> str:
    spec = FIGURES[name]
    data = base64.b64encode(png).decode("ascii")
    note = f" No data: {_e(missing)}." if missing is not None else ""
    flag = " data-no-data='true'" if missing is not None else ""
    return (f"<figure><img id='fig-{name}' alt='{_e(spec.alt)}'{flag} "
            f"src='data:image/png;base64,{data}'><figcaption>{_e(spec.caption)}{note}</figcaption></figure>")


def safe_name(rollout: str) -> str:
    """A rollout name usable as a file name (anything but letters, digits, '.', '_', '-' becomes '_')."""
    return _SAFE_NAME.sub("_", rollout).strip("._-") or "rollout"


def render(out_dir: Path, cfg: Config, verdicts: list[dict[str, Any]], windows: list[dict[str, Any]],
           whatifs: list[dict[str, Any]] | None = None) -> Path:
    """Write the replay report of `verdicts` (docs/verdicts.md records) and their `window_record`s.

    Writes `out_dir/<rollout>.report.html` and `out_dir/<rollout>-figures/NAME.png` (one per
    FIGURES entry) and returns the HTML path.  `whatifs`, when given, are listed in a
    section of their own.
    """
    r = _Replay.of(cfg, verdicts, windows)
    name = safe_name(cfg.name)
    figures_dir = out_dir / f"{name}-figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    shown = []
    for fig_name in FIGURES:
        png, missing = _draw(fig_name, r)
        (figures_dir / f"{fig_name}.png").write_bytes(png)
        shown.append(_figure(fig_name, png, missing))
    variants = f"control {_e(cfg.control)}, canary {_e(cfg.canary)}, stage {_e(cfg.stage)}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(cfg.name)}: replay report</title>
<style>{_CSS}</style></head>
<body>
<h1>{_e(cfg.name)}: what would the gate have said?</h1>
<p class="meta">{variants}; {cfg.windows.size_s} s windows, {cfg.windows.horizon_s} s horizon,
promotion after {cfg.sustain_s} s clean.</p>
{_summary(r)}
{_first_failures(r)}
<h2>Figures</h2>
{"".join(shown)}
{_whatifs(whatifs) if whatifs else ""}
<script>{_SCRIPT}</script>
</body></html>
"""
    path = out_dir / f"{name}.report.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["FIGURES", "render", "safe_name", "window_record"]
