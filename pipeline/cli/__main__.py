"""`python -m pipeline.cli`: the same as the `canary-gate` console script."""

from pipeline.cli import entry

entry()
