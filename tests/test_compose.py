"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

from pipeline.io import kafka


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_every_mounted_file_exists_and_every_build_has_a_dockerfile() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            assert (ROOT / host).exists(), f"{name}: {host} does not exist"
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and 'ENTRYPOINT ["canary-gate"]' in dockerfile


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_ports_topics_and_targets_agree_with_the_code() -> None:
    services = _compose()["services"]
    run, gen = services["canary-gate"]["command"], services["generator"]["command"]
    assert run[0] == "run" and gen[0] == "generate"
    port = _flag(run, "--metrics-port")
    assert f"{port}:{port}" in services["canary-gate"]["ports"]
    assert _flag(run, "--source") == _flag(gen, "--out") == f"kafka://kafka:9092/{kafka.TELEMETRY_TOPIC}"
    assert _flag(run, "--verdicts") == f"kafka://kafka:9092/{kafka.VERDICT_TOPIC}"
    assert _flag(run, "--dead-letters") == f"kafka://kafka:9092/{kafka.DEAD_LETTER_TOPIC}"
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"canary-gate:{port}"]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prometheus["rule_files"]) <= mounted
    config_in_container = _flag(run, "--config")
    assert any(v.endswith(f":{config_in_container}:ro") for v in services["canary-gate"]["volumes"])


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    services = _compose()["services"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"])
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/canary-gate.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    host = next(h for h, c in mounts.items() if c == path)
    assert list(Path(ROOT / host).glob("*.json"))
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert re.fullmatch(r"\w+", datasource["datasources"][0]["uid"])
