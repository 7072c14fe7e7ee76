"""The ``ecar`` command line: one subcommand per job (``ecar COMMAND --help``), one module
per subcommand — :mod:`~ecar.cli.train`, :mod:`~ecar.cli.sample`, :mod:`~ecar.cli.info`,
:mod:`~ecar.cli.eval`, :mod:`~ecar.cli.bench`, :mod:`~ecar.cli.demo`,
:mod:`~ecar.cli.cache_latents`, :mod:`~ecar.cli.draft`, :mod:`~ecar.cli.serve` — each with its
``add_<command>`` (the parser) and ``cmd_<command>`` (the work); :mod:`ecar.cli.common` holds
the exit codes, the parser and the one error path that :func:`main` applies to all of them
(docs/errors.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from ecar.lock import set_command
from ecar.train.trainer import TrainingInterrupted

from ecar.cli.bench import add_bench, cmd_bench
from ecar.cli.cache_latents import add_cache_latents, cmd_cache_latents
from ecar.cli.common import (
    BUG_REPORT,
    EXIT_BUG,
    EXIT_CODES,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Parser,
    UsageError,
    check_args,
    error_code,
    error_text,
    formatter,
)
from ecar.cli.demo import add_demo, cmd_demo
from ecar.cli.draft import add_draft, cmd_draft
from ecar.cli.eval import add_eval, cmd_eval
from ecar.cli.info import add_info, cmd_info
from ecar.cli.sample import add_sample, cmd_sample
from ecar.cli.serve import add_serve, cmd_serve
from ecar.cli.train import add_train, cmd_train

__all__ = ["EXIT_BUG", "EXIT_CODES", "EXIT_FAIL", "EXIT_INTERRUPTED", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ecar",
        formatter_class=formatter,
        description="Efficient continuous-token autoregressive image generation (E-CAR) and baselines.",
        epilog="Run `ecar COMMAND --help` for examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train(sub)
    add_sample(sub)
    add_info(sub)
    add_eval(sub)
    add_bench(sub)
    add_demo(sub)
    add_cache_latents(sub)
    add_draft(sub)
    add_serve(sub)
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    for p in sub.choices.values():  # also after the command: `ecar train ... --debug`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of every error")
    return parser


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s")


COMMANDS = {
    "train": cmd_train, "sample": cmd_sample, "info": cmd_info, "eval": cmd_eval,
    "bench": cmd_bench, "demo": cmd_demo, "cache-latents": cmd_cache_latents, "draft": cmd_draft, "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `ecar bench`
    set_command(["ecar", *args.argv])  # named by a writer's lock (ecar.lock)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    debug = bool(getattr(args, "debug", False))
    try:
        check_args(args)
        return COMMANDS[args.command](args)
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("stopped: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one error path: expected -> one line, else a bug
        code = error_code(e)
        if code is None or debug:
            traceback.print_exc()
        if code is None:
            print(BUG_REPORT, file=sys.stderr)
            return EXIT_BUG
        print(f"error: {error_text(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
