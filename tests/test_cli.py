"""The canary-gate command line: exit codes, one-line errors, files in and out."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASE_TOML, ROOT

from pipeline import scenarios
from pipeline.cli import main


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=300, check=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "rollout.toml"
    p.write_text(BASE_TOML)
    return p


@pytest.mark.integration
@pytest.mark.parametrize(
    ("extra", "key"),
    [("[thresholds]\nbogus = 1\n", "thresholds.bogus"),
     ("[thresholds]\ncoverage_min = \"x\"\n", "thresholds.coverage_min")],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path: Path, extra: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BASE_TOML + extra)
    for argv in (["check-config", "--config", str(cfg)],
                 ["run", "--config", str(cfg), "--source", "-"]):
        res = _cli(*argv, stdin=b"")
        assert res.returncode == 2
        err = res.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err


@pytest.mark.integration
def test_bad_stage_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BASE_TOML.replace('stage = "50%"', 'stage = "3%"'))
    res = _cli("check-config", "--config", str(cfg))
    assert res.returncode == 2 and b"rollout.stage" in res.stderr


def test_bad_usage_exits_2_in_one_line(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(config_file)]) == 2
    assert main(["run", "--config", str(config_file), "--source", "/nope.jsonl"]) == 2
    assert main(["frobnicate"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("canary-gate: error:") for e in errs)


def test_check_config_prints_effective_settings(config_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(config_file)]) == 0
    eff = json.loads(capsys.readouterr().out)
    assert eff["thresholds"]["latency_ratio_max"] == 1.25
    assert eff["rollout"]["stage"] == "50%"


@pytest.mark.integration
def test_generate_then_run_gz_file_end_to_end(tmp_path: Path) -> None:
    stream, cfg = tmp_path / "s.jsonl.gz", tmp_path / "s.toml"
    res = _cli("generate", "--scenario", "schema_violations", "--seed", "2", "--minutes", "15",
               "--out", str(stream), "--config-out", str(cfg))
    assert res.returncode == 0, res.stderr
    verdicts = tmp_path / "run.verdicts.jsonl"
    res = _cli("run", "--config", str(cfg), "--source", str(stream), "--verdicts", str(verdicts))
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(records) == 15
    assert records[-1]["decision"] == "stop"
    assert records[-1]["id"] == "chat-rag-v2/2025-08-27T06:15:00Z"
    dead = [json.loads(line) for line in (tmp_path / "run.dead-letters.jsonl").read_text().splitlines()]
    assert dead and {d["reason"] for d in dead} <= {"invalid_json", "schema"}
    with gzip.open(stream) as f:
        lines = f.read().splitlines()
    for d in dead:
        assert lines[int(d["source"].rsplit(":", 1)[1]) - 1].decode() == d["line"]
    summary = res.stderr.decode().strip().splitlines()
    assert len(summary) == 1 and "15 verdicts" in summary[0] and "dead letters" in summary[0]


@pytest.mark.integration
def test_stdin_to_stdout(config_file: Path) -> None:
    data = b"\n".join(scenarios.generate("healthy", 1, 3)) + b"\nnot json\n"
    res = _cli("run", "--config", str(config_file), "--source", "-", "--dead-letters",
               str(config_file.parent / "d.jsonl"), stdin=data)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [r["window_end"][-9:] for r in records] == ["06:01:00Z", "06:02:00Z", "06:03:00Z"]
    dead = json.loads((config_file.parent / "d.jsonl").read_text())
    assert dead["reason"] == "invalid_json" and dead["line"] == "not json"


@pytest.mark.integration
def test_replay_reads_several_archives_as_one_stream(tmp_path: Path, config_file: Path) -> None:
    lines = list(scenarios.generate("healthy", 3, 4))
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines[:2000]) + b"\n")
    (tmp_path / "b.jsonl").write_bytes(b"\n".join(lines[2000:]) + b"\n")
    (tmp_path / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = _cli("replay", "--config", str(config_file), str(tmp_path / "a.jsonl"),
               str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "out"), "--no-report")
    assert res.returncode == 0, res.stderr
    assert b"from 2 archive(s)" in res.stderr
    res = _cli("replay", "--config", str(config_file), str(tmp_path / "all.jsonl"),
               "--out", str(tmp_path / "all"), "--no-report")
    assert res.returncode == 0, res.stderr
    name = "chat-rag-v2.verdicts.jsonl"
    split = (tmp_path / "out" / name).read_text()
    assert split and split == (tmp_path / "all" / name).read_text()


def test_bundled_example_is_consistent() -> None:
    cfg = ROOT / "examples" / "rollout.toml"
    assert main(["check-config", "--config", str(cfg)]) == 0
    with gzip.open(ROOT / "examples" / "telemetry.jsonl.gz") as f:
        first = json.loads(f.readline())
    assert first["variant"] in ("control", "canary-v2")


@pytest.mark.integration
def test_sighup_rereads_the_stage(tmp_path: Path) -> None:
    import signal
    import time

    cfg = tmp_path / "rollout.toml"
    cfg.write_text(scenarios.scenario_config("healthy"))
    verdicts = tmp_path / "v.jsonl"
    lines = list(scenarios.generate("healthy", 4, 12))
    half = len(lines) // 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--source", "-",
         "--verdicts", str(verdicts)], cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None

    def wait_for(n: int) -> list[dict]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if verdicts.exists():
                got = [json.loads(x) for x in verdicts.read_text().splitlines()]
                if len(got) >= n:
                    return got
            time.sleep(0.2)
        raise AssertionError(f"fewer than {n} verdicts")

    proc.stdin.write(b"\n".join(lines[:half]) + b"\n")
    proc.stdin.flush()
    before = wait_for(4)
    cfg.write_text(scenarios.scenario_config("healthy").replace('stage = "50%"', 'stage = "bogus"'))
    proc.send_signal(signal.SIGHUP)  # a bad config is reported and ignored
    time.sleep(0.5)
    cfg.write_text(scenarios.scenario_config("healthy").replace('stage = "50%"', 'stage = "100%"'))
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    proc.stdin.write(b"\n".join(lines[half:]) + b"\n")
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0
    err = proc.stderr.read().decode()
    assert "config not reloaded: rollout.stage" in err
    assert "stage 50% -> 100%" in err
    after = [json.loads(x) for x in verdicts.read_text().splitlines()]
    stages = [v["stage"] for v in after]
    assert stages[: len(before)] == ["50%"] * len(before)
    assert stages[-1] == "100%" and stages == sorted(stages, key=lambda s: s != "50%")


@pytest.mark.integration
def test_runtime_failure_is_one_line_exit_1() -> None:
    res = _cli("run", "--config", "examples/rollout.toml", "--source", "examples/telemetry.jsonl.gz",
               "--verdicts", "/dev/full")
    assert res.returncode == 1
    err = res.stderr.decode().strip().splitlines()
    assert err == ["canary-gate: run failed: --verdicts /dev/full: No space left on device"]


@pytest.mark.integration
def test_unwritable_outputs_and_bad_gzip_exit_2(tmp_path: Path, config_file: Path) -> None:
    bad_gz = tmp_path / "x.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    res = _cli("run", "--config", str(config_file), "--source", str(bad_gz))
    assert res.returncode == 2 and b"not a gzip file" in res.stderr
    res = _cli("run", "--config", str(config_file), "--source", "examples/telemetry.jsonl.gz",
               "--verdicts", str(tmp_path))
    assert res.returncode == 2 and b"is a directory" in res.stderr
    (tmp_path / "file").write_text("")
    res = _cli("replay", "--config", str(config_file), str(bad_gz), "--out", str(tmp_path / "file"))
    assert res.returncode in (1, 2) and len(res.stderr.decode().strip().splitlines()) == 1


@pytest.mark.integration
def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    res = _cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == f"canary-gate {version('canary-gate')}\n"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{version("canary-gate")}"\n' in pyproject  # metadata matches pyproject


@pytest.mark.integration
def test_no_command_prints_the_help_on_stdout_and_exits_0() -> None:
    res = _cli()
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    out = res.stdout.decode()
    assert out.startswith("usage: canary-gate ")
    for command in ("run", "check-config", "generate", "replay"):
        assert f"\n    {command}" in out, out


def _every_parser(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_parser(sub)


def test_every_option_of_every_command_has_help() -> None:
    from pipeline.cli import _parser

    missing = []
    parsers = dict(_every_parser(_parser()))
    assert set(parsers) == {"canary-gate", "canary-gate run", "canary-gate check-config",
                            "canary-gate generate", "canary-gate replay"}
    for prog, parser in parsers.items():
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {name}")
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if (a.help or "").strip()}
                missing += [f"{prog} {c}" for c in action.choices if c not in helped]
    assert not missing, f"options without help: {missing}"


def test_version_of_an_uninstalled_tree_says_so(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == "canary-gate unknown (not installed)\n"


RUNTIME_PACKAGES = ("bytewax", "confluent_kafka", "prometheus_client")


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports, type-only imports included."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_dataflow_module_and_the_adapters_import_the_runtimes() -> None:
    """Pure core, I/O at the edge: the runtimes are imported by pipeline/flow.py and pipeline/io/ only."""
    pipeline = ROOT / "pipeline"
    offenders = {str(path.relative_to(ROOT)): sorted(_imports(path) & set(RUNTIME_PACKAGES))
                 for path in pipeline.rglob("*.py")
                 if path != pipeline / "flow.py" and (pipeline / "io") not in path.parents}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_loading_the_command_line_loads_no_runtime() -> None:
    """`run` installs its signal handlers before Bytewax is loaded: importing the CLI must not load it."""
    res = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline.cli; "
         f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({RUNTIME_PACKAGES!r})))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.integration
def test_a_file_run_never_loads_the_kafka_client(tmp_path: Path, config_file: Path) -> None:
    source = tmp_path / "s.jsonl"
    source.write_bytes(b"\n".join(scenarios.generate("healthy", 1, 2)) + b"\n")
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline.cli", "run", "--config", str(config_file),
         "--source", str(source), "--verdicts", str(tmp_path / "v.jsonl"), "--board", "off",
         "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines()
              if line.startswith("import time:")}
    assert "bytewax" in loaded  # the run really ran the dataflow
    assert not {m for m in loaded if m.split(".")[0] == "confluent_kafka"}
    assert "events in" in res.stderr.splitlines()[-1]
