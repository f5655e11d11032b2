"""The ``pypool`` command (also ``python -m pypool``).

Its commands are modules of this package: ``pypool bench``
(:mod:`pypool.cli.bench`, with the contenders of :mod:`pypool.cli.contenders`
and :mod:`pypool.cli.peers`) and ``pypool sweep`` (:mod:`pypool.cli.sweep`,
with :mod:`pypool.cli.workload`, :mod:`pypool.cli.sweep_processes` and
:mod:`pypool.cli.bouncer`); :mod:`pypool.cli.output` is what they share. A new
command is a module with ``add_arguments(parser)`` and ``run(args)``, and a
line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .._secrets import Secrets
from . import bench, sweep
from .contenders import CONNECTIONS, CONTENDERS, Contender, Handles, register
from .output import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, version

__all__ = [
    "COMMANDS",
    "CONNECTIONS",
    "CONTENDERS",
    "Contender",
    "Handles",
    "build_parser",
    "main",
    "register",
]

#: The commands: their names, and the function that runs each.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "bench": bench.run,
    "sweep": sweep.sweep,
}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pypool``: a subparser per command."""
    parser = _Parser(prog="pypool", description="pypool: a database connection pool.")
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    bench.add_arguments(
        commands.add_parser(
            "bench",
            help="measure the pool's hot path against a floor and other pools",
            description=(
                "Measure the uncontended acquire/release cycle (ns/cycle) and the throughput "
                f"of 1-16 threads sharing {CONNECTIONS} connections (cycles/s), for the "
                "native core, the Python core, queue.Queue and the floor "
                "lst.append(lst.pop()), interleaved round by round. Ctrl-C prints the "
                "results so far."
            ),
        )
    )
    sweep.add_arguments(
        commands.add_parser(
            "sweep",
            help="find a pool size: throughput and latency of a workload against pool sizes",
            description=(
                "Run a workload (default SELECT 1) from N client threads against a "
                "pypool.Pool of size 1, 2, 4, ... up to --max-size (never above what the "
                "server allows), each for --seconds, and recommend the smallest size within "
                "--tolerance of the best throughput. Ctrl-C prints the results so far."
            ),
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``pypool`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error(f"a command is required ({', '.join(COMMANDS)}); see pypool --help")
    except _UsageError as exc:
        # argparse repeats what it did not understand: a DSN given without --dsn
        words = sys.argv[1:] if argv is None else list(argv)
        print(f"pypool: error: {Secrets(*words).mask(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
