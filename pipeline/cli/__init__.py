"""canary-gate command line (docs/cli.md).

One module per command (`run`, `check_config`, `generate`, `replay`), the
parser in `parser`, the signals of `run` in `signals`, its cluster options in
`cluster`.  Nothing here imports Bytewax or the Kafka client at module level:
`check-config` starts fast, and `run` owns its stop signals before Bytewax
is loaded.

Exit codes: 0 done; 2 bad usage or bad config (one line on stderr, no
traceback); 1 runtime failure; 130 stopped at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline import config as config_mod
from pipeline.cli.check_config import cmd_check_config
from pipeline.cli.common import PROG, UsageError, say
from pipeline.cli.generate import cmd_generate
from pipeline.cli.parser import build_parser
from pipeline.cli.replay import cmd_replay
from pipeline.cli.run import RunOptions, cmd_run, run_pipeline
from pipeline.cli.signals import catch_early, ignore_stops

__all__ = ["PROG", "RunOptions", "UsageError", "entry", "main", "run_pipeline"]

_parser = build_parser  # the name the documentation tests use

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "generate": cmd_generate,
    "replay": cmd_replay,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: parse, run the command, map errors to exit codes."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # no command: the help, as a request for it (git, pip, docker do alike)
            parser.print_help()
            return 0
        if args.command == "run":
            catch_early()
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        say(f"error: {exc}")
        return 2
    except config_mod.ConfigError as exc:
        say(f"config error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except OSError as exc:  # a file that cannot be read or written: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"{where}{exc.strerror or exc}")
        return 1
    except BrokenPipeError:
        return 0


def entry() -> None:
    """Console-script wrapper.

    Once the command is done, stop signals are ignored: the interpreter's
    shutdown puts back the default actions of Python-level handlers, and a
    SIGTERM in that last moment would turn a finished run's exit 0 into 143.
    """
    code = main()
    ignore_stops()
    sys.exit(code)
