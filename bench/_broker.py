"""The project's Kafka broker harness (kafka-broker/broker.py), loaded for the benchmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def broker_module() -> ModuleType:
    """kafka-broker/broker.py as a module (its `start(dir, heap=...)` returns a running Broker)."""
    spec = importlib.util.spec_from_file_location("kafka_broker", ROOT / "kafka-broker" / "broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
