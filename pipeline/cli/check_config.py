"""`canary-gate check-config`: validate a rollout config and print every effective setting."""

from __future__ import annotations

import argparse
import json

from pipeline import config as config_mod


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config; print every effective setting as JSON."""
    cfg = config_mod.load(args.config)
    print(json.dumps(cfg.effective(), indent=2, ensure_ascii=False))
    return 0
