"""The `zsharm` command. Each subcommand lives beside the stage it runs, in a module with
`register(subparsers)`; this file only gathers them and turns ZsharmError into one line."""

import argparse
import importlib
import sys

from zsharm import __version__
from zsharm.errors import ZsharmError

# module -> subcommands it registers (the order is the order of `zsharm --help`)
COMMAND_MODULES = [
    "zsharm.pipeline",    # harmonize (all three stages)
    "zsharm.describe.describers",    # describe
    "zsharm.decide.training",    # train-evaluator
    "zsharm.benchmark.compare",    # evaluate
    "zsharm.repro.bench",       # bench
    "zsharm.repro.switches",    # ablate
    "zsharm.teaching.figures",     # figures
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsharm", description="Zero-shot image harmonization with a diffusion prior.")
    parser.add_argument("--version", action="version", version=f"zsharm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ZsharmError as exc:
        print(f"zsharm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsharm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
