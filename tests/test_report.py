"""The replay report: window records against the engine's own counters, and the HTML in a real Chromium.

Input is real: generated scenarios run through the engine.  The HTML is
loaded by Debian's headless Chromium, which prints every console message on
stderr as a line containing `CONSOLE` (console.error, console.log and uncaught
exceptions alike, with no level), so any such line fails a report; a page with
a broken figure proves the detection works.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline import config, engine, scenarios
from pipeline.config import Config
from pipeline.decode import codec
from pipeline.gates import GATES
from pipeline.model import Event
from pipeline.replay import report

MINUTES = 15  # the scenarios' shortest: each shows its regression within it
SEED = 3
LATENCY = "warm_latency_regression"
SCENARIO_NAMES = (LATENCY, "new_5xx_class", "coverage_drop", "healthy")
FIGURES = tuple(report.FIGURES)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WHATIF = {
    "name": "latency_ratio_max 1.25 -> 1.7",
    "changes": {"thresholds.latency_ratio_max": [1.25, 1.7]},
    "first_stop": {"base": "2025-08-27T06:03:00Z", "alt": None},
    "flips": [{"window_end": "2025-08-27T06:03:00Z", "gate": "p95_warm_latency", "region": "us-east",
               "base": "fail", "alt": "pass"}],
}
RECORD_KEYS = {"window_end", "users", "errors", "classes", "dead", "p95_warm_ms", "delta_s_median",
               "coverage_median", "cache_hit_rate", "index", "prefix"}


@dataclass(frozen=True)
class Run:
    """A scenario judged by the engine: its reports and the report's inputs."""

    cfg: Config
    events: list[Event]
    reports: list[engine.Report]
    verdicts: list[dict[str, Any]]
    windows: list[dict[str, Any]]


@cache
def run(name: str) -> Run:
    cfg = config.parse(scenarios.scenario_config(name))
    items = [codec.decode(line) for line in scenarios.generate(name, SEED, MINUTES)]
    eng = engine.Engine(cfg)
    reports = [o for o in eng.feed(items) + eng.close() if isinstance(o, engine.Report)]
    return Run(cfg, [i for i in items if isinstance(i, Event)], reports,
               [r.verdict.to_record() for r in reports], [report.window_record(r, cfg) for r in reports])


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not on PATH: the report tests load the HTML in headless Chromium; "
                    "install Debian's package with `bash scripts/install-system-deps.sh` "
                    "(or `sudo apt-get install -y chromium`)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each scenario's report (the latency one with a what-if section)."""
    out = {}
    for name in SCENARIO_NAMES:
        r = run(name)
        out[name] = report.render(tmp_path_factory.mktemp(name), r.cfg, r.verdicts, r.windows,
                                  [WHATIF] if name == LATENCY else None)
    return out


# -- Chromium --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    """What Chromium made of a page."""

    returncode: int
    dom: str
    console: list[str]  # stderr lines with a console message
    stderr: str


def load(binary: str, page: Path, profile: Path, *extra: str) -> Loaded:
    """Load `page` headless; with no `extra` flags, dump its DOM after the load event."""
    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", f"--user-data-dir={profile}", *(extra or ("--dump-dom",)),
            page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    return Loaded(done.returncode, done.stdout, console, done.stderr)


class Elements(HTMLParser):
    """Attributes of every element of a document, and the text of table rows by their data-gate."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.row_text: dict[str, str] = {}
        self._row: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.elements.append((tag, found))
        if tag == "tr" and found.get("data-gate"):
            self._row = found["data-gate"]
            self.row_text[self._row] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self.row_text[self._row] += data + " "

    def by_id(self) -> dict[str, dict[str, str | None]]:
        return {a["id"]: a for _, a in self.elements if a.get("id")}

    def first(self, tag: str) -> dict[str, str | None]:
        return next(a for t, a in self.elements if t == tag)

    def rows(self) -> dict[str, str | None]:
        """data-gate -> data-first-fail of the first-failure table."""
        return {str(a["data-gate"]): a["data-first-fail"] for t, a in self.elements
                if t == "tr" and a.get("data-gate")}


def assert_clean_load(loaded: Loaded, figures: int = len(FIGURES)) -> Elements:
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.console == [], f"console messages: {loaded.console}"
    doc = Elements(loaded.dom)
    assert doc.first("body").get("data-figures-loaded") == str(figures), loaded.dom[:500]
    ids = doc.by_id()
    for name in FIGURES:
        img = ids.get(f"fig-{name}")
        assert img is not None, f"fig-{name} missing"
        assert img.get("alt"), f"fig-{name} has no alt text"
        assert (img.get("src") or "").startswith("data:image/png;base64,")
    return doc


@pytest.fixture(scope="module")
def loaded(chromium: str, rendered: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Loaded]:
    """Each scenario's report as Chromium loaded it (the browsers run side by side)."""
    profiles = tmp_path_factory.mktemp("profiles")
    with ThreadPoolExecutor(len(rendered)) as pool:
        jobs = {name: pool.submit(load, chromium, page, profiles / name) for name, page in rendered.items()}
        return {name: job.result() for name, job in jobs.items()}


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_report_loads_in_chromium_with_every_figure(name: str, rendered: dict[str, Path],
                                                    loaded: dict[str, Loaded]) -> None:
    page = rendered[name]
    assert page.name == "chat-rag-v2.report.html"
    text = page.read_text(encoding="utf-8")
    # self-contained: nothing fetched, only data URIs and inline style and script
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "src='data:image/png;base64," in text and " src=\"" not in text
    assert_clean_load(loaded[name])


def test_a_broken_figure_is_detected(chromium: str, rendered: dict[str, Path], tmp_path: Path) -> None:
    text = rendered[LATENCY].read_text(encoding="utf-8")
    start = text.index("<img id='fig-cache'")
    src = text.index("src='data:image/png;base64,", start) + len("src='data:image/png;base64,")
    end = text.index("'", src)
    broken = tmp_path / "broken.html"
    broken.write_text(text[:src] + "bm90IGEgcG5n" + text[end:], encoding="utf-8")  # "not a png"
    loaded = load(chromium, broken, tmp_path / "profile")
    assert loaded.returncode == 0
    assert len(loaded.console) == 1 and "figure did not load: fig-cache" in loaded.console[0], loaded.console
    assert Elements(loaded.dom).first("body").get("data-figures-loaded") == str(len(FIGURES) - 1)


def test_an_uncaught_exception_is_a_console_line(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "throws.html"
    page.write_text("<!doctype html><body><script>undefinedFunction();</script></body>", encoding="utf-8")
    loaded = load(chromium, page, tmp_path / "profile")
    assert any("undefinedFunction" in line for line in loaded.console), loaded.stderr[-2000:]


def test_first_failure_table_names_the_latency_gate_and_window(rendered: dict[str, Path],
                                                               loaded: dict[str, Loaded]) -> None:
    r = run(LATENCY)
    expected: dict[str, str] = {}
    for verdict in r.verdicts:
        for row in verdict["gates"]:
            if row["status"] == "fail":
                expected.setdefault(row["gate"], verdict["window_end"])
    assert "p95_warm_latency" in expected
    stop = next(v for v in r.verdicts if v["decision"] == "stop")
    assert [row["gate"] for row in stop["gates"] if row["hard_stop"]] == ["p95_warm_latency"]

    doc = assert_clean_load(loaded[LATENCY])
    rows = doc.rows()
    assert list(rows) == list(GATES)
    assert rows == {gate: expected.get(gate, "") for gate in GATES}
    assert rows["p95_warm_latency"] == stop["window_end"]
    assert "us-east" in doc.row_text["p95_warm_latency"]
    assert "eu-west" not in doc.row_text["p95_warm_latency"]
    assert "never" in doc.row_text["new_5xx_class"]
    assert doc.by_id()["first-stop"]["data-window-end"] == stop["window_end"]
    assert "whatif-0" in doc.by_id()
    assert "latency_ratio_max 1.25 -&gt; 1.7" in rendered[LATENCY].read_text(encoding="utf-8")


def test_screenshot_is_not_blank(chromium: str, rendered: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    loaded = load(chromium, rendered[LATENCY], tmp_path / "profile", f"--screenshot={shot}",
                  "--window-size=1280,4000", "--hide-scrollbars")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.console == []
    with Image.open(shot) as img:
        assert img.size == (1280, 4000)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    inked = int((pixels != 255).any(axis=1).sum())
    assert inked > 0.05 * len(pixels)
    red, green, blue = pixels.T
    stop_red = int(((red > 200) & (green < 60) & (blue < 60)).sum())
    assert stop_red > 2000  # the decision figure's stop band (and the badges) made it to the screen


# -- PNG files -------------------------------------------------------------------------------------

def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_figures_are_written_as_valid_pngs(name: str, rendered: dict[str, Path]) -> None:
    page = rendered[name]
    folder = page.parent / "chat-rag-v2-figures"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f}.png" for f in FIGURES)
    text = page.read_text(encoding="utf-8")
    seen = set()
    for fig in FIGURES:
        data = (folder / f"{fig}.png").read_bytes()
        width, height = png_size(data)
        assert 800 <= width <= 2000 and 250 <= height <= 1000, (fig, width, height)
        assert len(data) > 10_000, fig  # a drawn chart, not an empty canvas
        with Image.open(folder / f"{fig}.png") as img:
            img.load()
            assert len(img.convert("RGB").getcolors(1 << 16) or []) > 20, fig
        seen.add(data)
        assert f"id='fig-{fig}'" in text
    assert len(seen) == len(FIGURES)  # every figure is its own


def test_figures_without_data_say_so(chromium: str, tmp_path: Path) -> None:
    r = run("healthy")
    # no probes and no cache blocks: those figures say "no data", the others draw
    stripped = [{**w, "delta_s_median": {}, "coverage_median": [], "cache_hit_rate": {}} for w in r.windows]
    page = report.render(tmp_path / "stripped", r.cfg, r.verdicts, stripped)
    doc = Elements(page.read_text(encoding="utf-8")).by_id()
    assert {f for f in FIGURES if doc[f"fig-{f}"].get("data-no-data")} == {"delta_s", "coverage", "cache"}

    empty = report.render(tmp_path / "empty", r.cfg, [], [])
    doc = assert_clean_load(load(chromium, empty, tmp_path / "profile")).by_id()
    assert all(doc[f"fig-{f}"].get("data-no-data") == "true" for f in FIGURES)
    for fig in FIGURES:
        data = (tmp_path / "empty" / "chat-rag-v2-figures" / f"{fig}.png").read_bytes()
        assert png_size(data) == png_size((tmp_path / "stripped" / "chat-rag-v2-figures" /
                                           "decision.png").read_bytes())


def test_records_out_of_step_are_refused(tmp_path: Path) -> None:
    r = run("healthy")
    with pytest.raises(ValueError, match="one window record per verdict"):
        report.render(tmp_path, r.cfg, r.verdicts, r.windows[1:])
    with pytest.raises(ValueError, match="ends at"):
        report.render(tmp_path, r.cfg, r.verdicts[1:], r.windows[:-1])
    bad = [{**r.verdicts[0], "decision": "maybe"}]
    with pytest.raises(ValueError, match="'maybe'"):
        report.render(tmp_path, r.cfg, bad, r.windows[:1])


def test_safe_name() -> None:
    assert report.safe_name("chat-rag-v2") == "chat-rag-v2"
    assert report.safe_name("team/chat rag:v2") == "team_chat_rag_v2"
    assert report.safe_name("../..") == "rollout"


# -- window records --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_window_record_is_json_with_exactly_its_fields(name: str) -> None:
    r = run(name)
    assert len(r.windows) == MINUTES
    for rec, verdict in zip(r.windows, r.verdicts, strict=True):
        assert set(rec) == RECORD_KEYS
        assert rec["window_end"] == verdict["window_end"]
        assert json.loads(json.dumps(rec)) == rec
        assert set(rec["users"]) == set(rec["errors"]) == {"control", "canary-v2"}
        for key in ("classes", "p95_warm_ms", "coverage_median", "index", "prefix"):
            assert rec[key] == sorted(rec[key], key=lambda d: tuple(map(str, d.values()))), key


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_window_record_matches_the_engine_counters(name: str) -> None:
    r = run(name)
    cfg = r.cfg
    for rep, rec in zip(r.reports, r.windows, strict=True):
        assert rep.window is not None
        c = rep.window.c
        for variant in (cfg.control, cfg.canary):
            for family, field in (("user", "users"), ("errors", "errors")):
                counted = sum(n for (v, _), n in c.get(family, {}).items() if v == variant)
                assert rec[field][variant] == counted
        classes = {(d["variant"], d["status"], d["phase"]): d["n"] for d in rec["classes"]}
        assert classes == dict(c.get("classes", {}))
        dead: Counter[str] = Counter()
        for (_, reason), n in c.get("dead", {}).items():
            dead[reason] += n
        assert rec["dead"] == dict(dead)
        assert {(d["variant"], d["region"]): d["ms"] for d in rec["p95_warm_ms"]} == {
            (v, region): ms for (v, region, temp, phase, q), ms in rep.quantiles.items()
            if temp == "warm" and phase == cfg.thresholds.latency_field and q == 0.95}
        medians = rep.horizon_stats["probe_median"]
        assert rec["delta_s_median"] == {v: m for (v, kind, _), m in medians.items() if kind == "delta_s"}
        assert {(d["variant"], d["topic"]): d["value"] for d in rec["coverage_median"]} == {
            (v, topic): m for (v, kind, topic), m in medians.items() if kind == "coverage"}
        assert rec["cache_hit_rate"] == {v: rate for (v,), rate in rep.horizon_stats["cache_hit"].items()}
        assert {tuple(d.values())[:-1]: d["n"] for d in rec["index"]} == rep.horizon_stats["index"]
        assert {(d["variant"], d["prefix"]): d["n"] for d in rec["prefix"]} == rep.horizon_stats["prefix"]


def test_window_record_counts_what_the_events_say() -> None:
    """Users, 5xx and classes per window, counted from the decoded events (request ids once per window)."""
    r = run("new_5xx_class")
    users: Counter[tuple[int, str]] = Counter()
    errors: Counter[tuple[int, str]] = Counter()
    classes: Counter[tuple[int, str, int, str]] = Counter()
    seen: defaultdict[int, set[str]] = defaultdict(set)
    for ev in r.events:
        wid = int(ev.ts // r.cfg.windows.size_s)
        if ev.request_id is not None:
            if ev.request_id in seen[wid]:
                continue
            seen[wid].add(ev.request_id)
        if ev.x_warm or ev.probe_question is not None:
            continue
        users[(wid, ev.variant)] += 1
        if ev.status >= 500:
            errors[(wid, ev.variant)] += 1
            classes[(wid, ev.variant, ev.status, ev.failure_phase or "none")] += 1
    new_class = 0
    for rep, rec in zip(r.reports, r.windows, strict=True):
        wid = int(rep.verdict.window_end // r.cfg.windows.size_s) - 1
        for variant in ("control", "canary-v2"):
            assert rec["users"][variant] == users[(wid, variant)]
            assert rec["errors"][variant] == errors[(wid, variant)]
        assert {(d["variant"], d["status"], d["phase"]): d["n"] for d in rec["classes"]} == {
            k[1:]: n for k, n in classes.items() if k[0] == wid}
        new_class += sum(d["n"] for d in rec["classes"] if (d["status"], d["phase"]) == (502, "body"))
    assert new_class > 50  # the scenario's canary-only class is in the records


def test_window_record_of_a_report_without_a_window() -> None:
    r = run("healthy")
    rep = r.reports[0]
    bare = engine.Report(rep.verdict, None, {}, {}, rep.watermark)
    rec = report.window_record(bare, r.cfg)
    assert rec["users"] == {"control": 0, "canary-v2": 0} and rec["classes"] == [] and rec["dead"] == {}
    assert rec["delta_s_median"] == {} and rec["cache_hit_rate"] == {} and rec["index"] == []
