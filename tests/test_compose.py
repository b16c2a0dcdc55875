"""docker-compose.yml cannot run here (no Docker engine): check it against the Compose schema, the
code, the configs it mounts, the image it builds and a real Kafka broker instead.

deploy/compose-spec.json is the Compose Specification's own JSON schema (compose-spec/compose-spec,
schema/compose-spec.json at commit a08f8d5, Apache-2.0), kept here so the check needs no network.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from conftest import ROOT, _broker_module
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.io import kafka

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Ports the images listen on unless their command says otherwise.
DEFAULT_PORTS = {"prom/prometheus": 9090, "prom/alertmanager": 9093, "grafana/grafana": 3000}
# Programs a healthcheck may call in each image: prom/* are busybox-based (wget), grafana is Alpine
# with curl and busybox wget, the python images are Debian slim (no curl, no wget), apache/kafka
# ships Kafka's scripts under /opt/kafka/bin.
IMAGE_TOOLS = {"prom/prometheus": {"wget"}, "prom/alertmanager": {"wget"},
               "grafana/grafana": {"wget", "curl"}, "python": {"python3"}}
# Where a process inside a container reaches a port of its own container.
SELF = {"127.0.0.1", "localhost"}
ADDRESS = re.compile(r"(?:(?<=://)|(?<=@)|(?<=[\s'\"=,\[])|^)([A-Za-z][A-Za-z0-9.-]*|\d+\.\d+\.\d+\.\d+)"
                     r":(\d+)(?![\d.])")


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _repository(image: str) -> str:
    return image.rsplit(":", 1)[0]


def _mounted(svc: dict[str, Any], container_path: str) -> Path:
    """The host file or folder mounted at `container_path` in a service."""
    for volume in svc.get("volumes", []):
        host, target = volume.split(":")[:2]
        if target == container_path:
            return ROOT / host
    raise AssertionError(f"nothing is mounted at {container_path}: {svc.get('volumes')}")


def _config_file(svc: dict[str, Any]) -> Path:
    """The host file a Prometheus or Alertmanager service reads as its --config.file."""
    flags = dict(arg.split("=", 1) for arg in svc["command"] if arg.startswith("--") and "=" in arg)
    return _mounted(svc, flags["--config.file"])


def _kafka_listeners(env: dict[str, str], key: str) -> dict[str, tuple[str, int]]:
    """A KAFKA_*LISTENERS value as {name: (host, port)}."""
    found = {}
    for item in env[key].split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        found[name] = (host, int(port))
    return found


def _listening(name: str, svc: dict[str, Any]) -> set[int]:
    """The ports a service's process listens on, from its command, environment and image."""
    command = [str(a) for a in svc.get("command", [])]
    env = svc.get("environment", {})
    if "KAFKA_LISTENERS" in env:
        return {port for _, port in _kafka_listeners(env, "KAFKA_LISTENERS").values()}
    ports = {int(p) for p in svc.get("expose", [])}
    for flag in ("--metrics-port", "--port"):
        if flag in command:
            ports.add(int(_flag(command, flag)))
    listen = [a.split("=", 1)[1] for a in command if a.startswith("--web.listen-address=")]
    if listen:
        ports.add(int(listen[0].rsplit(":", 1)[1]))
    elif "GF_SERVER_HTTP_PORT" in env:
        ports.add(int(env["GF_SERVER_HTTP_PORT"]))
    elif "image" in svc and _repository(svc["image"]) in DEFAULT_PORTS:
        ports.add(DEFAULT_PORTS[_repository(svc["image"])])
    return ports


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _addresses(compose: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """Every host:port a service uses, as (service, where, host, port): command, entrypoint,
    environment and healthcheck, and the configs mounted into Prometheus, Alertmanager and Grafana."""
    services = compose["services"]
    found = []
    for name, svc in services.items():
        env = {k: v for k, v in svc.get("environment", {}).items() if k != "KAFKA_LISTENERS"}  # binds
        for where, value in (("command", svc.get("command")), ("entrypoint", svc.get("entrypoint")),
                             ("environment", env), ("healthcheck", svc.get("healthcheck"))):
            for text in _strings(value):
                found += [(name, where, host, int(port)) for host, port in ADDRESS.findall(text)]
    prometheus = yaml.safe_load(_config_file(services["prometheus"]).read_text())
    for job in prometheus["scrape_configs"]:
        for static in job["static_configs"]:
            found += [("prometheus", f"scrape job {job['job_name']}", *_split(t)) for t in static["targets"]]
    for am in prometheus["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            found += [("prometheus", "alerting target", *_split(t)) for t in static["targets"]]
    alertmanager = yaml.safe_load(_config_file(services["alertmanager"]).read_text())
    for receiver in alertmanager["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            url = urlsplit(hook["url"])
            found.append(("alertmanager", f"receiver {receiver['name']}", str(url.hostname),
                          int(url.port or 80)))
    datasources = _mounted(services["grafana"], "/etc/grafana/provisioning/datasources")
    for path in sorted(datasources.glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            url = urlsplit(source["url"])
            found.append(("grafana", f"datasource {source['name']}", str(url.hostname), int(url.port or 80)))
    return found


def _split(target: str) -> tuple[str, int]:
    host, port = target.rsplit(":", 1)
    return host, int(port)


def _address_problems(compose: dict[str, Any], addresses: list[tuple[str, str, str, int]]) -> list[str]:
    """What is wrong with each address: not a compose service, or a port it does not listen on."""
    services = compose["services"]
    listening = {name: _listening(name, svc) for name, svc in services.items()}
    kafka_env = services["kafka"]["environment"]
    advertised = set(_kafka_listeners(kafka_env, "KAFKA_ADVERTISED_LISTENERS").values())
    host_listeners = {address for address in advertised if address[0] not in services}
    problems = []
    for owner, where, host, port in addresses:
        if host in services:
            target = host
        elif host in SELF and where == "healthcheck":
            target = owner
        elif owner == "kafka" and where == "environment" and (host, port) in host_listeners:
            continue  # the host listener, advertised for clients on the host (test_kafka_listeners)
        else:
            problems.append(f"{owner} ({where}): {host}:{port} is not a compose service")
            continue
        if port not in listening[target]:
            problems.append(f"{owner} ({where}): {target} listens on {sorted(listening[target])}, not {port}")
        elif target == "kafka" and owner != target and ("kafka", port) not in advertised:
            # Kafka sends a client on to the address advertised for the listener it reached
            problems.append(f"{owner} ({where}): kafka:{port} advertises {sorted(host_listeners)}, "
                            "which containers cannot reach")
    return problems


def test_the_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    compose = _compose()
    assert [e.message for e in validator.iter_errors(compose)] == []
    compose["services"]["canary-gate"]["depends_on"]["kafka"]["condition"] = "service_up"
    compose["services"]["prometheus"]["healthcheck"]["retry"] = 3
    assert len(list(validator.iter_errors(compose))) == 2  # the schema does catch mistakes


def test_every_mounted_file_exists_and_every_build_has_a_dockerfile() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            assert (ROOT / host).exists(), f"{name}: {host} does not exist"
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").is_file()
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+[\w.-]*", svc["image"]), f"{name}: pin {svc['image']}"
    assert 'ENTRYPOINT ["canary-gate"]' in DOCKERFILE.read_text()


def test_ports_topics_and_targets_agree_with_the_code() -> None:
    services = _compose()["services"]
    run, gen = services["canary-gate"]["command"], services["generator"]["command"]
    assert run[0] == "run" and gen[0] == "generate"
    port = _flag(run, "--metrics-port")
    assert f"{port}:{port}" in services["canary-gate"]["ports"]
    assert _flag(run, "--source") == _flag(gen, "--out") == f"kafka://kafka:19092/{kafka.TELEMETRY_TOPIC}"
    assert _flag(run, "--verdicts") == f"kafka://kafka:19092/{kafka.VERDICT_TOPIC}"
    assert _flag(run, "--dead-letters") == f"kafka://kafka:19092/{kafka.DEAD_LETTER_TOPIC}"
    created = re.findall(r"--topic (\S+)", " ".join(services["kafka-topics"]["command"]))
    assert sorted(created) == sorted([kafka.TELEMETRY_TOPIC, kafka.VERDICT_TOPIC, kafka.DEAD_LETTER_TOPIC])
    prometheus = yaml.safe_load(_config_file(services["prometheus"]).read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == [f"canary-gate:{port}"]
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


def test_every_address_is_a_compose_service_on_a_port_it_listens_on() -> None:
    compose = _compose()
    addresses = _addresses(compose)
    where = {(owner, host) for owner, _, host, _ in addresses}
    # the wiring the stack lives on is among them
    assert {("prometheus", "canary-gate"), ("prometheus", "alertmanager"), ("alertmanager", "alert-receiver"),
            ("grafana", "prometheus"), ("canary-gate", "kafka"), ("generator", "kafka")} <= where
    assert _address_problems(compose, addresses) == []
    # ... and the check does catch the old mistakes: pages posted to Alertmanager's own loopback,
    # clients sent to a port Kafka advertises for the host
    wrong = [("alertmanager", "receiver pager", "127.0.0.1", 9095), ("canary-gate", "command", "kafka", 9092)]
    assert len(_address_problems(compose, wrong)) == 2


def test_every_published_port_is_one_the_service_listens_on() -> None:
    for name, svc in _compose()["services"].items():
        for mapping in svc.get("ports", []):
            container = int(mapping.split(":")[-1])
            assert container in _listening(name, svc), f"{name}: {mapping}"


def test_start_up_waits_for_health_and_every_server_has_a_healthcheck() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions only waits for a start"
        for dep, how in deps.items():
            target = services[dep]
            if how["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy, which has no check"
            else:  # a one-shot job: it must end, and nothing else may restart it
                assert how["condition"] == "service_completed_successfully", f"{name} -> {dep}: {how}"
                assert target.get("restart") == "no" and "healthcheck" not in target, dep
        if _listening(name, svc):
            check = svc.get("healthcheck", {}).get("test")
            assert check and check[0] == "CMD", f"{name} serves a port but has no healthcheck"
            program = check[1]
            image = "python" if "build" in svc else _repository(svc["image"])
            if image == "apache/kafka":
                assert program.startswith("/opt/kafka/bin/"), program
            else:
                assert program in IMAGE_TOOLS[image], f"{name}: {program} is not in {image}"
    # Prometheus must run while canary-gate does not, to page about it.
    waits_for, todo = set(), ["prometheus"]
    while todo:
        for dep in services[todo.pop()].get("depends_on", {}):
            waits_for.add(dep)
            todo.append(dep)
    assert "canary-gate" not in waits_for and {"alertmanager", "alert-receiver"} <= waits_for


def test_kafka_listeners_serve_containers_and_the_host() -> None:
    services = _compose()["services"]
    env = services["kafka"]["environment"]
    listeners = _kafka_listeners(env, "KAFKA_LISTENERS")
    advertised = _kafka_listeners(env, "KAFKA_ADVERTISED_LISTENERS")
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised[internal] == ("kafka", listeners[internal][1])
    inside = f"kafka:{advertised[internal][1]}"
    # every container that talks to Kafka uses the internal listener
    clients = {name: {f"{h}:{p}" for owner, where, h, p in _addresses(_compose())
                      if owner == name and h in ("kafka", "localhost") and where != "environment"}
               for name in services if name != "kafka"}
    assert {name for name, used in clients.items() if used} == {"kafka-topics", "generator", "canary-gate"}
    assert all(used <= {inside} for used in clients.values()), clients
    assert services["kafka"]["healthcheck"]["test"][-1] == inside
    # the published port is the listener advertised as localhost:<published port>, for the host
    (published,) = services["kafka"]["ports"]
    host_port, container_port = (int(p) for p in published.split(":"))
    (host_listener,) = [n for n, (h, _) in advertised.items() if h == "localhost"]
    assert listeners[host_listener][1] == container_port and advertised[host_listener][1] == host_port
    # the runbook's kcat commands go through it
    for doc in ("runbook.md", "deploy.md"):
        brokers = re.findall(r"kcat\b[^\n]*?-b\s+(\S+)", (ROOT / "docs" / doc).read_text())
        assert brokers and set(brokers) <= {f"localhost:{host_port}", "BROKER"}, (doc, brokers)
    assert f"localhost:{host_port}" in re.findall(r"kcat\b[^\n]*?-b\s+(\S+)",
                                                  (ROOT / "docs" / "runbook.md").read_text())


def _broker_properties(env: dict[str, str], ports: dict[int, int], log_dir: Path) -> str:
    """server.properties as the apache/kafka image writes it from KAFKA_* variables ('.' is '_',
    '_' is '__', '-' is '___'), moved onto loopback (host `kafka` and bind-all) and free ports."""

    def move(m: re.Match[str]) -> str:
        host = "127.0.0.1" if m.group(1) in ("", "kafka") else m.group(1)
        return f"{host}:{ports[int(m.group(2))]}"

    lines = [f"log.dirs={log_dir}"]
    for key, value in env.items():
        if key.startswith("KAFKA_"):
            name = key[len("KAFKA_"):].lower().replace("___", "-").replace("__", "\0").replace("_", ".")
            moved = re.sub(r"(?:(?<=//)|(?<=@))(kafka|localhost|):(\d+)", move, str(value))
            lines.append(f"{name.replace(chr(0), '_')}={moved}")
    return "\n".join(lines) + "\n"


def test_a_real_broker_with_the_compose_listeners_advertises_each_to_its_clients(tmp_path: Path) -> None:
    """Kafka with the compose service's settings (on loopback and free ports): a client that
    bootstraps on the host listener is sent to localhost, one on the internal listener stays there."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    broker_mod = _broker_module()
    env = _compose()["services"]["kafka"]["environment"]
    listeners = _kafka_listeners(env, "KAFKA_LISTENERS")
    ports = {port: broker_mod.free_port() for _, port in listeners.values()}
    props = tmp_path / "server.properties"
    props.write_text(_broker_properties(env, ports, tmp_path / "data"))
    (tmp_path / "log4j2.xml").write_text(broker_mod.LOG4J2)
    jvm = ["java", "-Xmx512m", "-XX:+UseSerialGC", f"-Dlog4j2.configurationFile={tmp_path / 'log4j2.xml'}",
           "-cp", f"{broker_mod.ensure_jars()}/*"]
    fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={env['CLUSTER_ID']}",
                          "-c", str(props)], capture_output=True, text=True, timeout=120, check=False)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    (host_listener,) = [n for n, (h, _) in _kafka_listeners(env, "KAFKA_ADVERTISED_LISTENERS").items()
                        if h == "localhost"]
    inside, outside = ports[listeners[internal][1]], ports[listeners[host_listener][1]]
    broker = broker_mod.Broker(inside, tmp_path, None, (*jvm, "kafka.Kafka", str(props)))
    try:
        broker._launch()
    except broker_mod.BrokerError as exc:
        pytest.fail(f"Kafka refused the compose listeners: {exc}", pytrace=False)
    try:
        for bootstrap, expected in ((f"127.0.0.1:{inside}", ("127.0.0.1", inside)),
                                    (f"127.0.0.1:{outside}", ("localhost", outside))):
            brokers = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers
            assert [(b.host, b.port) for b in brokers.values()] == [expected], bootstrap
        topic = f"compose-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{inside}"})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
        producer = Producer({"bootstrap.servers": f"localhost:{outside}"})  # as kcat on the host
        producer.produce(topic, b"from the host")
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{inside}", "group.id": topic,
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        try:
            msg = None
            for _ in range(30):
                msg = consumer.poll(1)
                if msg is not None and msg.error() is None:
                    break
            assert msg is not None and msg.value() == b"from the host"
        finally:
            consumer.close()
    finally:
        broker.stop()


# --------------------------------------------------------------------------- the image


def _instructions() -> list[tuple[int, str, str]]:
    """The Dockerfile as (stage, instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found, stage = [], -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stage += 1
        found.append((stage, instruction.upper(), args.strip()))
    return found


def _runtime_closure() -> dict[str, str]:
    """canary-gate's runtime dependencies and theirs, as installed here: {name: version}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        wanted = {"", *req.extras}
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return seen


def _locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines)}


def test_the_image_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    steps = _instructions()
    final = max(stage for stage, _, _ in steps)
    runs = [(stage, args) for stage, instr, args in steps if instr == "RUN"]
    installs = [(stage, shlex.split(cmd[cmd.index("pip install"):].split("&&")[0]))
                for stage, args in runs for cmd in args.split("&&") if "pip install" in cmd]
    assert installs, "no pip install in the Dockerfile"
    for stage, argv in installs:
        assert stage != final, "the runtime stage installs nothing; it copies the build's virtualenv"
        assert not any("[" in a for a in argv), f"an extra is installed: {argv}"
        for i, arg in enumerate(argv):
            if arg.endswith("requirements.lock"):
                assert argv[i - 1] in ("-c", "--constraint"), f"the lock is installed, not constrains: {argv}"
    deps_step = next(argv for _, argv in installs if "--requirement" in argv or "-r" in argv)
    assert "--no-deps" not in deps_step
    project_step = next(argv for _, argv in installs if argv[-1] == ".")
    assert "--no-deps" in project_step
    # the requirement file is pyproject's [project].dependencies: run the Dockerfile's own command
    (generate,) = [args for _, args in runs if "runtime-requirements.txt" in args and "tomllib" in args]
    command = shlex.split(generate.split(">")[0])
    assert command[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run([sys.executable, "-c", command[2]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out == dependencies
    # What that installs: pinned by the lock, and none of the dev tools.
    closure, locked = _runtime_closure(), _locked()
    dev = {canonicalize_name(Requirement(r).name) for r in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "mypy", "hypothesis"} <= dev
    assert not dev & set(closure), sorted(dev & set(closure))
    assert {n: locked.get(n) for n in closure} == closure  # every one of them pinned, at this version
    assert {"bytewax", "polars", "confluent-kafka"} <= set(closure) and len(closure) < len(locked)
    # The runtime stage: the virtualenv from the build, the entry point, python3 for the healthcheck.
    froms = [args for _, instr, args in steps if instr == "FROM"]
    arg = next(args for _, instr, args in steps if instr == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", arg)
    assert froms[-1] == "${PYTHON_IMAGE}"
    assert any(instr == "COPY" and args.startswith("--from=build /opt/canary-gate ")
               for stage, instr, args in steps if stage == final)
