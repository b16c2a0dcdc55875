"""A single-node Apache Kafka broker (KRaft) on 127.0.0.1, from Maven Central jars.

Used by the test suite (one fresh broker per session) and by people:

    python3 kafka-broker/broker.py start    # reuses a running one; prints the bootstrap address
    python3 kafka-broker/broker.py stop
    python3 kafka-broker/broker.py status

Jars come from `mvn -f kafka-broker/pom.xml package` into kafka-broker/libs (Maven caches
them in ~/.m2). Standard library only, so it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBS = HERE / "libs"
RUN = HERE / "run"  # the documented local broker lives here
DEFAULT_PORT = 9092
START_TIMEOUT_S = 180

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="WARN"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message carries its log tail."""


def ensure_jars() -> Path:
    """Fetch the broker's classpath with Maven unless it is already there."""
    if LIBS.is_dir() and any(LIBS.glob("kafka_2.13-*.jar")):
        return LIBS
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found: Maven is needed to fetch the Kafka jars")
    res = subprocess.run([mvn, "-q", "-B", "-f", str(HERE / "pom.xml"), "package"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0 or not any(LIBS.glob("kafka_2.13-*.jar")):
        raise BrokerError("fetching Kafka jars failed:\n" + (res.stdout + res.stderr)[-3000:])
    return LIBS


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """A running broker process and where it listens."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    command: tuple[str, ...] = ()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "broker.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM for a clean shutdown; SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start the stopped broker again on the same log dir and ports; wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            raise BrokerError("the broker is still running")
        self._launch()

    def _launch(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(list(self.command), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        (self.directory / "broker.pid").write_text(str(self.process.pid))
        (self.directory / "bootstrap").write_text(self.bootstrap)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"Kafka broker exited with {self.process.returncode}:\n{self.log_tail()}")
            if _answers(self.port):
                return
            time.sleep(0.5)
        self.stop()
        raise BrokerError(f"Kafka broker did not answer on {self.bootstrap} in {START_TIMEOUT_S} s:\n"
                          f"{self.log_tail()}")


def start(directory: Path, port: int | None = None, heap: str = "512m") -> Broker:
    """Format a fresh KRaft log dir under `directory` and start a broker; wait until it answers."""
    libs = ensure_jars()
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found: Kafka 4 needs Java 17+")
    port = port or free_port()
    controller = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "data"
    if logs.exists():
        shutil.rmtree(logs)
    props = directory / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={logs}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=24",
        "message.max.bytes=4194304",  # room for the over-limit (1 MiB+) events the tests send
        "",
    ]))
    (directory / "log4j2.xml").write_text(LOG4J2)
    classpath = f"{libs}/*"
    jvm = [java, f"-Xmx{heap}", "-XX:+UseSerialGC", f"-Dlog4j2.configurationFile={directory / 'log4j2.xml'}",
           "-cp", classpath]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    # --cluster-id=ID, not "-t ID": a base64 id may start with "-" and read as an option
    fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "--standalone",
                          f"--cluster-id={cluster_id}", "-c", str(props)],
                         capture_output=True, text=True, check=False)
    if fmt.returncode != 0:
        raise BrokerError("formatting Kafka storage failed:\n" + (fmt.stdout + fmt.stderr)[-3000:])
    (directory / "broker.log").write_bytes(b"")
    broker = Broker(port, directory, None, (*jvm, "kafka.Kafka", str(props)))
    broker._launch()
    return broker


def _running() -> tuple[int, str] | None:
    try:
        pid = int((RUN / "broker.pid").read_text())
        bootstrap = (RUN / "bootstrap").read_text().strip()
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    if not _answers(int(bootstrap.rsplit(":", 1)[1])):
        return None
    return pid, bootstrap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="local single-node Kafka broker for canary-gate")
    ap.add_argument("command", choices=("start", "stop", "status"))
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = ap.parse_args(argv)
    running = _running()
    if args.command == "status":
        print(running[1] if running else "not running")
        return 0 if running else 1
    if args.command == "stop":
        if running:
            os.kill(running[0], signal.SIGTERM)
            for _ in range(60):
                try:
                    os.kill(running[0], 0)
                except OSError:
                    break
                time.sleep(0.5)
            print(f"stopped the broker on {running[1]}", file=sys.stderr)
        return 0
    if running:
        print(running[1])
        return 0
    try:
        broker = start(RUN, args.port)
    except BrokerError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    broker.process = None  # leave it running after this script exits
    print(broker.bootstrap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
