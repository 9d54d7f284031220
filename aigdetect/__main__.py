"""``python -m aigdetect`` runs the command-line tool."""

from .cli import run

run()
