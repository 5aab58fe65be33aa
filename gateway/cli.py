"""The `komut` command line: builds argparse from the command modules and runs one."""

from __future__ import annotations

import argparse
import importlib
import sys

from gateway.commands import COMMAND_MODULES

# argparse exits with 2 on usage errors, which is the exit code the CLI promises for them.
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="komut",
        description="komut: gateway for Norwegian e-health messages (MsgHead, PLO, Dialogmelding, AppRec).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
