"""What every command shares: the program's name, one-line messages, usage errors, path checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROG = "canary-gate"


class UsageError(Exception):
    """Bad usage: reported as one line, exit code 2."""


def say(message: str) -> None:
    """One line on stderr, prefixed with the program's name."""
    print(f"{PROG}: {message}", file=sys.stderr)


def is_kafka(target: str | None) -> bool:
    """Whether a --source / --verdicts / --dead-letters / --out value names Kafka."""
    return bool(target) and str(target).startswith("kafka://")


def writable(path: str, flag: str) -> None:
    """UsageError naming `flag` unless `path` ('-': stdout) can be created or written."""
    if path == "-":
        return
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")
