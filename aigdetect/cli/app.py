"""The ``aigdetect`` Typer application: the version option and every command."""

from __future__ import annotations

import errno
import sys
import traceback

import typer

from .. import __version__
from .common import EXIT_BROKEN_PIPE, EXIT_INTERNAL_ERROR, flag
from .evaluate import evaluate_command
from .explain import explain_command
from .fit import calibrate_command, fit_gmm_command, fit_residual_command
from .scan import scan_command
from .train import train_command

app = typer.Typer(
    name="aigdetect",
    help=(
        "Tell camera photographs from AI-generated images.\n\n"
        "An extractor learns camera traces by predicting real photos' EXIF tags from their "
        "pixels. Detectors: a one-class model of those traces (images that fit no camera), "
        "a binary real/AI classifier regularised by the same extractor, a linear classifier "
        "on hand-crafted residual statistics and a pretrained network's features (the "
        "shipped default: it ranks unseen generators best), and their fusion."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aigdetect {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = flag("--version", callback=_version, is_eager=True,
                         help="Print the version and exit."),
) -> None:
    """Tell camera photographs from AI-generated images."""


app.command("train")(train_command)
app.command("fit-gmm")(fit_gmm_command)
app.command("fit-residual")(fit_residual_command)
app.command("calibrate")(calibrate_command)
app.command("scan")(scan_command)
app.command("evaluate")(evaluate_command)
app.command("explain")(explain_command)


def run(args: list[str] | None = None) -> None:
    """The console entry point: ``app``, with exit codes a pipeline can trust.

    Click ends a run whose stdout reader went away, and Python one that hit a bug,
    both with exit code 1, which ``scan`` gives for "an image was flagged". Here they
    get codes of their own (README, *Exit codes*)."""
    try:
        app(args, prog_name="aigdetect")
    except SystemExit as ended:
        cause = ended.__context__  # click exits 1 while handling a broken pipe
        if isinstance(cause, OSError) and cause.errno == errno.EPIPE:
            sys.exit(EXIT_BROKEN_PIPE)
        raise
    except Exception:
        traceback.print_exc()
        print("internal error: this is a bug in aigdetect; please report it with the "
              "traceback above", file=sys.stderr)
        sys.exit(EXIT_INTERNAL_ERROR)
