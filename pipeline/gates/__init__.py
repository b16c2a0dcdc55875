"""The gates, the stage ladder and the decision of docs/gates.md.

Each gate is declared once (base.Gate) in the module of its family:

* schema.py: `schema_violations`;
* probes.py: `delta_s_median`, `coverage`, `lambda_convergence`;
* skew.py: `index_skew`, `region_skew`, `cache_namespace`;
* latency.py: `p95_warm_latency` and what a window adds to its sequential test;
* errors.py: `new_5xx_class`, `error_rate` and its sequential test's window;
* cache.py: `cache_hit_regression` and its sequential test's window;
* sticky.py: `sticky_flip`.

registry.py lists them in the order of the verdict's rows; decision.py judges
them all over a horizon and makes the decision.
"""

from __future__ import annotations

from pipeline.gates.base import Context, Gate, PValues, Row, Sampler, Scope, median
from pipeline.gates.decision import all_clean, decide, judge
from pipeline.gates.registry import BY_NAME, GATES, REGISTRY, STOP_FROM, gate, stop_active

__all__ = [
    "BY_NAME",
    "GATES",
    "REGISTRY",
    "STOP_FROM",
    "Context",
    "Gate",
    "PValues",
    "Row",
    "Sampler",
    "Scope",
    "all_clean",
    "decide",
    "gate",
    "judge",
    "median",
    "stop_active",
]
