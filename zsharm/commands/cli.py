"""The `zsharm` command. Each subcommand has its own module in this package, with `register(subparsers)`;
this file only gathers them, sets up the `zsharm` logger (-v / -q) and turns ZsharmError
into one line.

Those modules import torch (seconds), so only the module of the command being run is imported: `zsharm
--help`, `--version` and a mistyped command list the commands from the table below without importing any.
"""

import argparse
import importlib
import logging
import os
import signal
import sys
from contextlib import contextmanager

from zsharm import __version__
from zsharm.cache import offline
from zsharm.errors import ZsharmError
from zsharm.quiet import quiet_libraries

# command -> (the module that registers it, its line in `zsharm --help`; tests/test_cli.py checks it is the
# module's own); the order is the order of `zsharm --help`
COMMANDS = {
    "harmonize": ("zsharm.commands.harmonize",
                  "harmonize a composite's foreground with its background (all three stages)"),
    "describe": ("zsharm.commands.describe",
                 "describe a composite's imaging conditions with a VLM (stage 1), or a whole folder"),
    "train-evaluator": ("zsharm.commands.train_evaluator", "train the harmony evaluator (stage 3)"),
    "evaluate": ("zsharm.commands.evaluate",
                 "measure harmonization methods on a dataset (MSE, fMSE, PSNR, fPSNR, SSIM)"),
    "bench": ("zsharm.commands.bench",
              "time one harmonization iteration per schedule, with peak memory and model-call counts"),
    "ablate": ("zsharm.commands.ablate",
               "each fast-schedule switch alone: model work, time and distance from paper's output"),
    "figures": ("zsharm.commands.figures", "draw the paper-style figures into a folder"),
    "toy": ("zsharm.commands.toy", "the toy world: train its prior, evaluator and describer, or write data"),
}


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser for `argv`: with the command's own module registered when `argv` names one; a listing of
    every command otherwise (argv None: every module registered, for code that inspects the parser)."""
    parser = argparse.ArgumentParser(prog="zsharm", description="Zero-shot image harmonization with a diffusion prior.")
    parser.add_argument("--version", action="version", version=f"zsharm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what zsharm does (models loaded, devices, claims); -vv for debugging detail")
    parser.add_argument("-q", "--quiet", dest="log_quiet", action="count", default=0,
                        help="log errors only (warnings are shown by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, summary) in COMMANDS.items():
        if argv is None or name == chosen:
            _register(module_name, sub)
        else:
            sub.add_parser(name, help=summary)
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


def _register(module_name: str, sub) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # a missing dependency inside the module is a real error
            raise
        return
    module.register(sub)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what SLURM, docker, systemd and a closed terminal send), raised where the program is,
    like Ctrl-C's KeyboardInterrupt: every clean-up that Ctrl-C runs (claims released, temporary files removed,
    the summary marked interrupted) runs for them too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# the signals that stop zsharm the way Ctrl-C does
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def stop_signals_interrupt():
    """Within the block, STOP_SIGNALS raise `Terminated` (in the main thread; elsewhere nothing changes)."""
    def interrupt(signum, _frame):
        raise Terminated(signum)
    try:
        previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.log_quiet)
    if args.verbose == 0:
        quiet_libraries()  # before any of them is imported: their warnings say nothing a user can act on (-v shows them)
    if offline():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # ZSHARM_OFFLINE reaches the hub's own loaders (SD, the VLM)
    try:
        with stop_signals_interrupt():
            return int(args.func(args) or 0)
    except ZsharmError as exc:
        print(f"zsharm: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"zsharm: interrupted ({exc})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("zsharm: interrupted", file=sys.stderr)
        return 130
    finally:
        reset_logging()


if __name__ == "__main__":
    sys.exit(main())
