"""The parser of every command and the one exit-code policy."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import MRANError
from . import analyze, evaluate, export, finetune, info, predict, tcga, train
from ._common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Parser

COMMANDS = (info, analyze, export, train, finetune, predict, evaluate, tcga)


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    p = Parser(prog="napari-mran", description="Whole-slide images and MRAN multi-scale "
               "attention: analyse, export, train, predict and evaluate.")
    p.add_argument("--version", action="version", version=f"napari-mran {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The package's warnings on stderr as ``warning: <message>`` (no source line)."""
    return f"warning: {message}\n"


def _stdout_closed() -> int:
    """The reader of our stdout went away (``napari-mran info ... | head``): stop quietly.

    Python would print a BrokenPipeError traceback when it flushes stdout at exit; point
    stdout at /dev/null first and exit as a process stopped by SIGPIPE reports it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status (0 ok, 1 some slides failed, 2 bad input,
    130 interrupted, 141 stdout closed)."""
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        code = int(args.run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except MRANError as exc:  # bad input of any kind, argparse's errors included
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = formatwarning
