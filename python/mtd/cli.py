"""The ``mtd`` command line: ``mtd train | compress | eval | report | export``.

User errors (missing or corrupt files, a checkpoint of another model, unsupported layers, bad options)
print one line ``mtd: error: ...`` and exit with status 2; set ``MTD_TRACEBACK=1`` for the traceback
(``MTD_DEBUG=1`` is the build's: compile the extension with ``-O0 -g``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .commands import compress_cmd, eval_cmd, export_cmd, report_cmd, train_cmd
from .commands.common import CLIError, launched_by_torchrun

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtd", description="Compress CNNs by mixed tensor decomposition.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,compress,eval,report,export}")
    for module in (train_cmd, compress_cmd, eval_cmd, report_cmd, export_cmd):
        module.add_parser(sub)
    return parser


# the commands that split their work over the processes of torchrun; the others would only repeat it
DISTRIBUTED_COMMANDS = ("train", "compress")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``mtd`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if launched_by_torchrun() and args.command not in DISTRIBUTED_COMMANDS:
            raise CLIError(f"mtd {args.command} runs in one process: run it without torchrun (under torchrun: "
                           f"{' and '.join(DISTRIBUTED_COMMANDS)})")
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError, TypeError) as err:  # ValueError/TypeError: the library's checks
        return _user_error(err)
    except KeyboardInterrupt:
        print("mtd: interrupted", file=sys.stderr)
        return 130


def _user_error(err: BaseException) -> int:
    if os.environ.get("MTD_TRACEBACK") == "1":
        raise err
    lines = str(err).strip().splitlines()
    print(f"mtd: error: {lines[0] if lines else type(err).__name__}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
