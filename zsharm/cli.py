"""The `zsharm` command. Each subcommand lives beside the stage it runs, in a module with
`register(subparsers)`; this file only gathers them, sets up the `zsharm` logger (-v / -q) and turns ZsharmError
into one line."""

import argparse
import importlib
import logging
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
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what zsharm does (models loaded, devices, claims); -vv for debugging detail")
    parser.add_argument("-q", "--quiet", dest="log_quiet", action="count", default=0,
                        help="log errors only (warnings are shown by default)")
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


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "zsharm: " if record.levelno < logging.WARNING else f"zsharm: {record.levelname.lower()}: "
        return prefix + super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest and Jupyter replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: int = 0, quiet: int = 0) -> logging.Logger:
    """The `zsharm` logger on stderr: warnings and errors by default, -v info, -vv debug, -q errors only.

    A library leaves logging to its user; the command line calls this (and `reset_logging` when it is done)."""
    logger = reset_logging()
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(max(logging.DEBUG, min(logging.ERROR, logging.WARNING - 10 * verbose + 10 * quiet)))
    logger.propagate = False
    return logger


def reset_logging() -> logging.Logger:
    logger = logging.getLogger("zsharm")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    return logger


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.log_quiet)
    try:
        return int(args.func(args) or 0)
    except ZsharmError as exc:
        print(f"zsharm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsharm: interrupted", file=sys.stderr)
        return 130
    finally:
        reset_logging()


if __name__ == "__main__":
    sys.exit(main())
