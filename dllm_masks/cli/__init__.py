"""``dllm-masks`` command line: the outermost layer, which may import every other package. Each
subcommand registers itself through an ``add_parser(subparsers)`` function listed in ``SUBCOMMANDS``."""
from __future__ import annotations

import argparse
import importlib

# module path -> it defines add_parser(subparsers); parsers set a `func` default taking args.
SUBCOMMANDS = [
    "dllm_masks.cli.demo",
    "dllm_masks.extract.cli",
    "dllm_masks.cli.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-masks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)

