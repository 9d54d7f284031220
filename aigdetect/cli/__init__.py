"""The ``aigdetect`` command: options, checks of what the user asked, and rendering,
over the package's modules, one module per command.

Results go to stdout; progress, warnings and errors go to stderr.
"""

from .app import app, main, run
from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_FLAGGED_AND_UNREADABLE,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    load_detector,
)
from .explain import new_file

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CLEAN",
    "EXIT_FLAGGED",
    "EXIT_FLAGGED_AND_UNREADABLE",
    "EXIT_INTERNAL_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_UNREADABLE",
    "EXIT_USAGE",
    "app",
    "load_detector",
    "main",
    "new_file",
    "run",
]
