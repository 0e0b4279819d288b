"""The ``urbansense`` command: one entry point, a subcommand per concern.

Each subcommand lives in the package that owns it and exposes ``add_parser(subparsers)``;
the modules are imported lazily so ``urbansense --help`` stays fast on a Pi.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from urbansense import __version__

# subcommand name -> module that provides add_parser(subparsers)
_SUBCOMMANDS = {
    "gateway": "gateway.cli",
    "collector": "collector.cli",
    "sim": "simulator.cli",
    "demo": "urbansense.demo_run",
    "bench": "urbansense.bench",
    "node": "urbansense.fieldkit.cli_node",
    "registry": "urbansense.fieldkit.cli_registry",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urbansense",
        description="City sensor network: firmware, gateway and simulator.",
    )
    parser.add_argument("--version", action="version", version=f"urbansense {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
