"""``napari-mran`` command line: a thin front end over the headless core, one module per
command (info, analyze, export, train, predict, evaluate, tcga-labels).

Every command returns an exit status; errors print one line ``error: <file>: <reason>``
to stderr and exit 2, never a traceback (docs/cli.md, "Exit status").
"""

from ._common import (DEMO_NOTE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED,
                      model_spec)
from .main import build_parser, main

__all__ = ["DEMO_NOTE", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED",
           "build_parser", "main", "model_spec"]
