"""Every gate, in the order of the verdict's rows (docs/gates.md, "The gates").

Adding a gate: declare it as a `Gate` in the module of its family (or a new
module), list it here, document it in docs/gates.md (tests/test_gate_registry.py
holds the docs' tables to this registry) and give it its tests.
"""

from __future__ import annotations

from pipeline.gates.base import Gate
from pipeline.gates.cache import CACHE_HIT_REGRESSION
from pipeline.gates.errors import ERROR_RATE, NEW_5XX_CLASS
from pipeline.gates.latency import P95_WARM_LATENCY
from pipeline.gates.probes import COVERAGE, DELTA_S_MEDIAN, LAMBDA_CONVERGENCE
from pipeline.gates.schema import SCHEMA_VIOLATIONS
from pipeline.gates.skew import CACHE_NAMESPACE, INDEX_SKEW, REGION_SKEW
from pipeline.gates.sticky import STICKY_FLIP

REGISTRY: tuple[Gate, ...] = (
    SCHEMA_VIOLATIONS,
    DELTA_S_MEDIAN,
    INDEX_SKEW,
    P95_WARM_LATENCY,
    NEW_5XX_CLASS,
    COVERAGE,
    REGION_SKEW,
    CACHE_NAMESPACE,
    LAMBDA_CONVERGENCE,
    ERROR_RATE,
    CACHE_HIT_REGRESSION,
    STICKY_FLIP,
)
BY_NAME: dict[str, Gate] = {gate.name: gate for gate in REGISTRY}
if len(BY_NAME) != len(REGISTRY):
    raise ValueError(f"gate names must be unique, got {[gate.name for gate in REGISTRY]}")

GATES: tuple[str, ...] = tuple(BY_NAME)
# Gate -> first stage at which its failure is a hard stop (None: never stops).
STOP_FROM: dict[str, str | None] = {gate.name: gate.stop_from for gate in REGISTRY}


def gate(name: str) -> Gate:
    """The declaration of gate `name`."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"gate must be one of {GATES}, got {name!r}") from None


def stop_active(name: str, stage: str) -> bool:
    """Whether a failure of gate `name` can be a hard stop at `stage` (stops are cumulative)."""
    return gate(name).stops_at(stage)
