"""The user docs (docs/*.md, README.md) against the code and schemas they describe.

Cheap checks that keep the contract pages honest: every config key with its
default, every schema field, every gate, decision, status, dead-letter reason
and command-line option is documented; the examples are valid; every relative
link (and its #anchor) resolves; nothing points outside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from pipeline import config as config_mod
from pipeline.cli import _parser
from pipeline.decode.codec import decode
from pipeline.gates import GATES, STOP_FROM
from pipeline.model import LADDER, DeadLetter, DeadLetterReason, Decision, Event, GateStatus

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-|: ]+\|", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next heading of level 2."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {heading!r}"
    return m.group(1)


# -- config ---------------------------------------------------------------------

def config_keys() -> dict[str, Any]:
    """Every accepted key of the rollout TOML -> its default (None: required or not checked)."""
    keys: dict[str, Any] = {f"rollout.{k}": None for k in ("name", "control", "canary", "stage")}
    keys["promotion.sustain_s"] = next(f.default for f in dataclasses.fields(config_mod.Config)
                                       if f.name == "sustain_s")
    for section_name, cls in (("windows", config_mod.Windows), ("thresholds", config_mod.Thresholds),
                              ("limits", config_mod.Limits)):
        for f in dataclasses.fields(cls):
            keys[f"{section_name}.{f.name}"] = f.default
    for f in dataclasses.fields(config_mod.VariantSpec):
        keys[f"variants.<name>.{f.name}"] = None
    return keys


def test_every_config_key_is_documented_with_its_default() -> None:
    rows = {r[0].strip("`"): r for r in table_rows(read(DOCS / "config.md")) if r and r[0].startswith("`")}
    for key, default in config_keys().items():
        assert key in rows, f"docs/config.md has no table row for {key}"
        if default is not None:
            cell = rows[key][2].strip("`")
            assert tomllib.loads(f"x = {cell}")["x"] == default, f"{key}: documented default {cell}"


def test_the_full_config_example_parses_to_the_defaults() -> None:
    blocks = code_blocks(read(DOCS / "config.md"), "toml")
    full = max(blocks, key=len)
    cfg = config_mod.parse(full)
    assert cfg.windows == config_mod.Windows()
    assert cfg.thresholds == config_mod.Thresholds()
    assert cfg.limits == config_mod.Limits()
    doc = tomllib.loads(full)
    for key in config_keys():
        table, _, name = key.rpartition(".")
        if table == "variants.<name>":
            assert all(name in spec for spec in doc["variants"].values()), key
        else:
            assert name in doc[table], f"the full example in docs/config.md lacks {key}"


def test_every_stage_is_documented() -> None:
    for page in ("config.md", "gates.md"):
        text = read(DOCS / page)
        for stage in LADDER:
            assert f"`{stage}`" in text, f"docs/{page} does not name stage {stage}"


# -- schemas --------------------------------------------------------------------

def schema_fields(schema: dict[str, Any]) -> set[str]:
    """Every property name of the schema and of its $defs."""
    names = set(schema.get("properties", {}))
    for definition in schema.get("$defs", {}).values():
        names |= set(definition.get("properties", {}))
    return names


@pytest.mark.parametrize(("schema", "page"), [("telemetry.schema.json", "events.md"),
                                              ("verdict.schema.json", "verdicts.md")])
def test_every_schema_field_is_documented(schema: str, page: str) -> None:
    text = read(DOCS / page)
    for name in schema_fields(json.loads(read(ROOT / "schemas" / schema))):
        assert f"`{name}`" in text, f"docs/{page} does not document `{name}` of schemas/{schema}"


def test_event_examples_are_valid_events() -> None:
    schema = json.loads(read(ROOT / "schemas" / "telemetry.schema.json"))
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    blocks = code_blocks(read(DOCS / "events.md"), "json")
    assert blocks
    for block in blocks:
        assert isinstance(decode(block.encode()), Event), block
        validator.validate(json.loads(block))


def test_verdict_example_is_a_valid_record() -> None:
    schema = json.loads(read(ROOT / "schemas" / "verdict.schema.json"))
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    records = [json.loads(b) for b in code_blocks(read(DOCS / "verdicts.md"), "json")]
    verdicts = [r for r in records if "decision" in r]
    assert verdicts
    for record in verdicts:
        validator.validate(record)
        assert list(dict.fromkeys(g["gate"] for g in record["gates"])) == list(GATES)  # every gate, in order
    dead = [r for r in records if "line" in r]
    assert dead
    fields = set(DeadLetter(b"", DeadLetterReason.SCHEMA, "").to_record())
    for record in dead:
        assert set(record) == fields
    for name in fields:
        assert f"`{name}`" in read(DOCS / "verdicts.md")


def test_decisions_statuses_gates_and_dead_letter_reasons_are_documented() -> None:
    verdicts, gates, events = (read(DOCS / p) for p in ("verdicts.md", "gates.md", "events.md"))
    for value in [*Decision, *GateStatus]:
        assert f"`{value}`" in verdicts, value
    for gate in GATES:
        assert f"`{gate}`" in gates and f"`{gate}`" in verdicts, gate
    for reason in DeadLetterReason:
        assert f"`{reason}`" in events and f"`{reason}`" in verdicts, reason


def test_the_stage_table_matches_the_stop_stages() -> None:
    first: dict[str, str] = {}
    for row in table_rows(section(read(DOCS / "gates.md"), "Stages")):
        stage = row[0].strip("`")
        if stage in LADDER:
            for gate in re.findall(r"`([a-z0-9_]+)`", row[1]):
                first.setdefault(gate, stage)
    assert first == {g: s for g, s in STOP_FROM.items() if s is not None}


# -- command line ---------------------------------------------------------------

def test_every_command_and_option_is_documented() -> None:
    text = read(DOCS / "cli.md")
    parser = _parser()
    commands = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
        for option in action.option_strings:
            assert f"`{option}" in text or f" {option}" in text, f"docs/cli.md lacks {option}"
    assert "--version" in text
    for name, sub in commands.items():
        assert f"## `{name}`" in text, f"docs/cli.md has no section for {name}"
        body = section(text, f"`{name}`")
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert f"`{option}" in body, f"docs/cli.md, {name}: {option} not documented"


# -- links ----------------------------------------------------------------------

def slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    out: set[str] = set()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in out:
            n += 1
            candidate = f"{slug}-{n}"
        out.add(candidate)
    return out


def links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for link in links(read(page)):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: link {link} points to nothing"
        if anchor and path.suffix == ".md":
            assert anchor in slugs(read(path)), f"{page.name}: link {link}: no such heading"


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_docs_point_at_nothing_outside_the_repository(page: Path) -> None:
    text = read(page)
    for needle in ("../shared", "SPEC.md"):
        assert needle not in text, f"{page.name} mentions {needle}"
    assert not re.search(r"\bSPEC\b", text), f"{page.name} cites a design record users do not have"


def test_the_docs_index_links_every_page() -> None:
    index = set(links(read(DOCS / "README.md")))
    for page in PAGES:
        if page.name != "README.md":
            assert page.name in index, f"docs/README.md does not link {page.name}"


def test_the_architecture_page_names_every_module_and_only_modules_that_exist() -> None:
    """docs/architecture.md gives every module of pipeline/ its place, and names no module that is gone."""
    text = read(DOCS / "architecture.md")
    pipeline = ROOT / "pipeline"
    modules = [p.relative_to(pipeline).as_posix() for p in pipeline.rglob("*.py")]
    for name in sorted(set(re.findall(r"`(?:pipeline/)?((?:[a-z_]+/)?[a-z_]+\.py)`", text))):
        if name.startswith(("tests/", "bench/")):
            continue
        exists = name in modules if "/" in name else any(m.split("/")[-1] == name for m in modules)
        assert exists, f"docs/architecture.md names {name}, which is no module of pipeline/"
    mentioned = set(re.findall(r"[a-z_]+\.py", text)) | set(re.findall(r"`([a-z_]+)`", text))
    for module in sorted(modules):
        path = Path(module)
        if path.name not in ("__init__.py", "__main__.py"):
            assert path.name in mentioned or path.stem in mentioned, \
                f"docs/architecture.md does not mention pipeline/{module}"
