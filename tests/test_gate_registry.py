"""The gate registry (pipeline/gates/) against itself, the code of each gate and docs/gates.md.

Each gate is declared once: name, first stopping stage, the config keys it
reads, whether it is per region, its function and, for the gates that fail
only on evidence, what a window adds to its sequential test.  These tests hold
the declarations to what the functions do and to the tables of docs/gates.md.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, make_event, make_probe

from pipeline import evidence
from pipeline.aggregate.families import FAMILY
from pipeline.aggregate.stats import LabelCaps, WindowStats
from pipeline.config import Config
from pipeline.gates import GATES, REGISTRY, STOP_FROM, Context, Gate, Scope, gate, judge, stop_active
from pipeline.gates.registry import BY_NAME
from pipeline.model import LADDER, GateStatus

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONTROL, CANARY = "control", "canary-v2"


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row (separator rows left out)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines()
            if line.startswith("|") and not re.fullmatch(r"\|[-|: ]+\|", line)]


def gates_section() -> str:
    text = (DOCS / "gates.md").read_text(encoding="utf-8")
    m = re.search(r"^## The gates\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "docs/gates.md has no section 'The gates'"
    return m.group(1)


def docs_table(header: str) -> dict[str, list[str]]:
    """The table of 'The gates' whose first row starts with `header`: gate -> its cells, in order."""
    tables: list[list[list[str]]] = [[]]
    for line in gates_section().splitlines():
        if line.startswith("|"):
            tables[-1].extend(table_rows(line))
        elif tables[-1]:
            tables.append([])
    found = [t for t in tables if t and t[0][0] == "gate" and t[0][1] == header]
    assert len(found) == 1, f"no single table with columns gate | {header}"
    return {row[0].strip("`"): row for row in found[0][1:]}


# -- the declarations --------------------------------------------------------------------------

def test_names_are_unique_and_in_the_verdicts_order() -> None:
    assert [g.name for g in REGISTRY] == list(GATES) == list(BY_NAME)
    assert len(set(GATES)) == len(GATES) == 12


def test_per_region_gates_are_the_latency_and_error_rate_gates() -> None:
    assert {g.name for g in REGISTRY if g.per_region} == {"p95_warm_latency", "error_rate"}


def test_gates_with_a_sequential_test_declare_its_window_samples() -> None:
    assert {g.name for g in REGISTRY if g.samples is not None} == {
        "p95_warm_latency", "error_rate", "cache_hit_regression"}
    assert {g.name: g.samples for g in REGISTRY if g.samples is not None} == evidence.TESTS


def test_stop_from_and_stop_active_come_from_the_declarations() -> None:
    assert {g.name: g.stop_from for g in REGISTRY} == STOP_FROM
    for g in REGISTRY:
        for stage in LADDER:
            assert stop_active(g.name, stage) is g.stops_at(stage)


def test_a_declaration_with_an_unknown_stage_or_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="stop_from must be one of"):
        Gate("x", stop_from="2%", settings=(), per_region=False, judge=lambda s: [])
    with pytest.raises(ValueError, match=r"settings names no config key: \['thresholds.nope'\]"):
        Gate("x", stop_from=None, settings=("thresholds.nope",), per_region=False, judge=lambda s: [])


def test_an_unknown_gate_name_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="got 'p99_latency'"):
        gate("p99_latency")
    with pytest.raises(ValueError, match="got 'p99_latency'"):
        stop_active("p99_latency", "1%")


def test_a_gate_not_per_region_may_not_return_a_regional_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.gates import decision
    from pipeline.gates.base import Row
    stray = Gate("stray", stop_from=None, settings=(), per_region=False,
                 judge=lambda s: [Row(GateStatus.PASS, "ok", region="us-east")])
    monkeypatch.setattr(decision, "REGISTRY", (stray,))
    with pytest.raises(ValueError, match="not per region"):
        judge(WindowStats.new(), make_config(), _NoEvidence())


# -- the declared settings are the ones each gate reads ---------------------------------------

class _Recorder:
    """A read-only view of a config part that notes which of its keys are read."""

    def __init__(self, target: Any, prefix: str, seen: set[str]) -> None:
        self._target, self._prefix, self._seen = target, prefix, seen

    def __getattr__(self, name: str) -> Any:
        self._seen.add(self._prefix + name)
        return getattr(self._target, name)


class _SeenConfig:
    """A Config whose thresholds, variant specs and stage note their reads in `seen`."""

    def __init__(self, cfg: Config, seen: set[str]) -> None:
        self._cfg, self._seen = cfg, seen

    def __getattr__(self, name: str) -> Any:
        if name == "thresholds":
            return _Recorder(self._cfg.thresholds, "thresholds.", self._seen)
        if name == "limits":
            return _Recorder(self._cfg.limits, "limits.", self._seen)
        if name == "stage":
            self._seen.add("rollout.stage")
        return getattr(self._cfg, name)

    def spec(self, variant: str) -> Any:
        return _Recorder(self._cfg.spec(variant), "variants.<name>.", self._seen)


class _NoEvidence:
    def p_value(self, gate: str, region: str | None) -> float:
        return 0.5


def _horizon(bad: bool) -> WindowStats:
    """Both variants with traffic and probes for every gate; `bad`: the canary fails every gate it can."""
    h, caps = WindowStats.new(), LabelCaps(64, {"variant": [CONTROL, CANARY]})
    for _ in range(60):
        h.add(make_event(), caps)
        h.add(make_event(variant=CANARY, tfinal=9000.0 if bad else 1300.0, status=503 if bad else 200,
                         failure_phase="body", cache_hit=not bad,
                         cache_prefix="v1:" if bad else "v2-cnr:"), caps)
    for seed in range(20):
        h.add(make_probe(delta_s=0.9 if bad else 0.3, coverage=0.1 if bad else 0.8, probe_seed=seed,
                         lambda_state=seed % 2 if bad else 0), caps)
        h.add(make_probe(variant=CONTROL, probe_seed=seed), caps)
    return h


@pytest.mark.parametrize("g", REGISTRY, ids=lambda g: g.name)
def test_a_gate_reads_exactly_the_settings_it_declares(g: Gate) -> None:
    seen_all: set[str] = set()
    for bad in (False, True):
        for stage in ("shadow", "50%"):
            seen: set[str] = set()
            cfg: Any = _SeenConfig(make_config(stage=stage), seen)
            ctx = Context(("k1",), 1, 0)
            g.judge(Scope(g.name, _horizon(bad), cfg, _NoEvidence(), ctx))
            assert seen <= set(g.settings), f"{g.name} reads undeclared {sorted(seen - set(g.settings))}"
            seen_all |= seen
    assert seen_all == set(g.settings), f"{g.name} declares unread {sorted(set(g.settings) - seen_all)}"


def test_the_bad_horizon_fails_every_gate_that_can_fail() -> None:
    """So that the reads above cover the failing branches too."""
    rows = judge(_horizon(True), make_config(stage="50%"), _NoEvidence(), Context(("k1",), 1, 0))
    statuses = {r.gate: r.status for r in rows}
    assert statuses.pop("sticky_flip") is GateStatus.WARN
    assert statuses.pop("schema_violations") is GateStatus.PASS  # nothing dead-lettered in a horizon
    assert statuses.pop("region_skew") is GateStatus.PASS  # one region
    assert statuses.pop("index_skew") is GateStatus.PASS
    assert set(statuses.values()) == {GateStatus.FAIL, GateStatus.WARN}  # WARN: no evidence


# -- the counter keys the gates destructure ----------------------------------------------------

# Family -> the key fields, in order, as the gates unpack them (pipeline/gates/*.py).
GATE_KEY_LAYOUTS: dict[str, tuple[str, ...]] = {
    "x_warm": ("variant", "region"),
    "user": ("variant", "region"),
    "errors": ("variant", "region"),
    "classes": ("variant", "status", "failure_phase"),
    "dead": ("variant", "reason"),
    "delta_s": ("variant", "delta_s"),
    "coverage": ("variant", "probe_topic", "coverage"),
    "lam": ("variant", "probe_question", "probe_paraphrase", "probe_seed", "lambda_state"),
    "index_obs": ("variant", "region", "index_hash", "metric", "analyzer"),
    "prefixes": ("variant", "cache_prefix"),
    "cache": ("variant", "cache"),
}


def test_the_gates_unpack_counter_keys_in_the_families_field_order() -> None:
    for name, fields in GATE_KEY_LAYOUTS.items():
        assert tuple(FAMILY[name].fields) == fields, name


# -- docs/gates.md ------------------------------------------------------------------------------

def test_the_docs_gate_table_lists_every_gate_in_order_with_its_stop_stage() -> None:
    table = docs_table("fails when")
    assert list(table) == list(GATES)
    for g in REGISTRY:
        cell = table[g.name][-1]
        documented = None if cell.startswith("never") else cell
        assert documented == g.stop_from, f"{g.name}: docs say {cell!r}, declared {g.stop_from!r}"


def test_the_docs_gate_table_says_per_region_exactly_for_the_per_region_gates() -> None:
    for name, row in docs_table("fails when").items():
        assert row[1].startswith("per region:") is BY_NAME[name].per_region, name


def test_the_docs_settings_of_each_gate_are_its_declared_settings() -> None:
    """Thresholds and variant keys as declared; limits.* in the docs bound what the counters keep."""
    table = docs_table("events and fields")
    assert list(table) == list(GATES)
    for g in REGISTRY:
        documented = set(re.findall(r"`([a-z_<>.0-9]+)`", table[g.name][2]))
        assert all(k.startswith(("thresholds.", "variants.", "limits.")) for k in documented), g.name
        judged = {k for k in documented if not k.startswith("limits.")}
        declared = {k for k in g.settings if k.startswith(("thresholds.", "variants."))}
        assert judged == declared, f"{g.name}: docs {sorted(judged)}, declared {sorted(declared)}"


def test_the_docs_stage_table_is_the_registry() -> None:
    text = (DOCS / "gates.md").read_text(encoding="utf-8")
    body = re.search(r"^## Stages\n(.*?)(?=^## )", text, re.S | re.M)
    assert body
    first: dict[str, str] = {}
    for row in table_rows(body.group(1)):
        stage = row[0].strip("`")
        if stage in LADDER:
            for name in re.findall(r"`([a-z0-9_]+)`", row[1]):
                first.setdefault(name, stage)
    assert first == {g.name: g.stop_from for g in REGISTRY if g.stop_from is not None}


def test_the_context_pickles_under_the_name_older_engines_recorded() -> None:
    """Recovery snapshots keep each window's Context; they name it pipeline.gates.Context."""
    data = pickle.dumps(Context(("k1",), 1, 2))
    assert b"pipeline.gates" in data and b"pipeline.gates.base" not in data
    assert pickle.loads(data) == Context(("k1",), 1, 2)


# -- other artefacts that list the gates -------------------------------------------------------

def test_the_verdict_schema_allows_exactly_the_registered_gates_in_order() -> None:
    schema = json.loads((ROOT / "schemas" / "verdict.schema.json").read_text(encoding="utf-8"))
    row = schema["$defs"]["gateRow"]["properties"]
    assert row["gate"]["enum"] == list(GATES)
    per_region = set(re.findall(r"`([a-z0-9_]+)`", row["region"]["description"]))
    assert per_region == {g.name for g in REGISTRY if g.per_region}


def test_the_metrics_page_lists_every_gate_label_in_order() -> None:
    rows = table_rows((DOCS / "metrics.md").read_text(encoding="utf-8"))
    labels = [r for r in rows if r and r[0] == "`gate`"]
    assert len(labels) == 1
    assert re.findall(r"`([a-z0-9_]+)`", labels[0][1]) == list(GATES)
    assert labels[0][2] == str(len(GATES))
