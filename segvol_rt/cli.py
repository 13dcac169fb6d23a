"""The ``segvol-rt`` command line: a thin typer layer over the public API.

Every command parses its options, calls the API and prints. A
:class:`~segvol_rt.errors.SegVolError` becomes one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from .errors import SegVolError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegVol deployment SDK: export, build, infer, bench, demo.",
)


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        app()  # standalone: click prints usage errors and exits by itself
    except SegVolError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


@app.callback()
def _root() -> None:
    """SegVol deployment SDK: export, build, infer, bench, demo."""


@app.command()
def version() -> None:
    """Print the segvol-rt version."""
    from . import __version__

    typer.echo(__version__)
