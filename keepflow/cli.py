"""`keepflow`: validate sequences, run the engine, play the demo."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from keepflow.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")

SequencesArg = Annotated[Optional[Path], typer.Argument(help="sequences file (default: $KEEPFLOW_SEQUENCES or ./sequences.yaml)")]
TemplatesOpt = Annotated[Optional[Path], typer.Option("--templates", help="templates folder (default: templates/ beside the sequences file)")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _run(coroutine) -> None:
    """Run an engine command; an invalid sequences file ends it with its problems, not a traceback."""
    from keepflow.loader import InvalidSequences

    try:
        asyncio.run(coroutine)
    except InvalidSequences as invalid:
        print(invalid, file=sys.stderr)
        print("refusing to start: fix the problems above (`keepflow validate` checks again)", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def validate(path: SequencesArg = None, templates: TemplatesOpt = None) -> None:
    """Check sequences.yaml and its templates; print every problem as PATH:LINE:COL: message."""
    from keepflow.loader import run_validate

    settings = get_settings()
    raise typer.Exit(run_validate(path or settings.sequences_path, templates or settings.templates_dir))


@app.command()
def dev(
    temporal_port: Annotated[int, typer.Option(help="gRPC port of the embedded Temporal dev server")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal web UI port (0: no UI)")] = 8233,
    data_dir: Annotated[Optional[Path], typer.Option(help="where the databases live (default: var/)")] = None,
) -> None:
    """Run the engine locally: Temporal's dev server (unless TEMPORAL_ADDRESS is set) and the worker."""
    from keepflow.dev import run_dev

    _logging()
    settings = get_settings()
    if data_dir:
        settings = settings.model_copy(update={"data_dir": data_dir})
    _run(run_dev(settings, temporal_port, ui_port or None))


@app.command()
def worker() -> None:
    """Run a worker against TEMPORAL_ADDRESS (run more of them to scale out)."""
    from worker import run_worker

    _logging()
    _run(run_worker(get_settings()))


@app.command()
def demo(
    locale: Annotated[str, typer.Option(help="the demo customer's language: en, th or zh-Hant")] = "en",
) -> None:
    """Play one order through the whole post-purchase journey, a day per second, and exit."""
    from keepflow.demo import CUSTOMERS, run_demo

    if locale not in CUSTOMERS:
        raise typer.BadParameter(f"choose one of {', '.join(CUSTOMERS)}", param_hint="--locale")
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    code = 1
    try:
        code = asyncio.run(run_demo(settings.sequences_path, settings.templates_dir, locale))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of DATABASE_URL (the engine also does this when it starts)."""
    from keepflow.store import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"schema up to date: {settings.resolved_database_url}")


if __name__ == "__main__":  # pragma: no cover
    app()
