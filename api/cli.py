"""The ``runledger`` command line (typer): serve, migrate, project, rebuild, status, replay, demo.

Configuration comes from ``RUNLEDGER_*`` environment variables (``infra.settings.Settings``);
options given here override them: ``--project`` (``replay``, ``demo``) defaults to
``RUNLEDGER_DEFAULT_PROJECT``, the project the API files requests that name none under.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.render import jsonable
from infra.runtime import build_runtime, process_parts, watch_parent, yield_cpu
from infra.settings import Settings
from infra.supervise import ChildProcess, projector_command

app = typer.Typer(
    help="runledger: an event-sourced audit ledger for AI agent runs.", no_args_is_help=True
)
console = Console()

#: ``--project`` of the commands that take one: given, or the configured default.
PROJECT_HELP = "Project (tenant) [default: RUNLEDGER_DEFAULT_PROJECT, else 'default']"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (RUNLEDGER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (RUNLEDGER_PORT)")] = None,
    projector: Annotated[
        str | None, typer.Option(help="process | inprocess | off (RUNLEDGER_PROJECTOR)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="API worker processes (RUNLEDGER_WORKERS)")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput)")] = False,
) -> None:
    """Run the HTTP API (and, by default, the projector in a child process)."""
    import uvicorn

    from api.app import create_app

    overrides: dict[str, Any] = {}
    for name, value in (
        ("host", host),
        ("port", port),
        ("projector", projector),
        ("workers", workers),
    ):
        if value is not None:
            overrides[name] = value
    settings = Settings(**overrides)
    store = (settings.database_url and "PostgreSQL") or f"SQLite file {settings.sqlite_path}"
    console.print(
        f"runledger on http://{settings.host}:{settings.port} ({store}, {settings.workers} "
        f"worker(s), projector {settings.projector}); OpenAPI at /docs"
    )
    child: ChildProcess | None = None
    if settings.projector == "process":
        # The API itself runs no projector; the child builds its settings from the environment.
        overrides["projector"] = "off"
        settings = settings.model_copy(update={"projector": "off"})
        child = ChildProcess(projector_command())
        # uvicorn restores this handler and raises the signal again once it has shut down: exit
        # through ``finally`` (which stops the child) instead of dying on the spot.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if settings.workers == 1:
            if child is not None:
                child.start()
            uvicorn.run(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                log_level="info",
                access_log=access_log,
            )
            return
        # Worker processes build their settings from the environment: hand the overrides down.
        for name, value in overrides.items():
            os.environ[f"RUNLEDGER_{name.upper()}"] = str(value)
        if settings.create_tables:
            build_runtime(settings, create_tables=True).close()  # once, before the workers start
            os.environ["RUNLEDGER_CREATE_TABLES"] = "false"
        if child is not None:
            child.start()
        uvicorn.run(
            "api.app:app_factory",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=access_log,
        )
    finally:
        if child is not None:
            child.stop()


@app.command()
def migrate() -> None:
    """Create the log's and the read models' tables, and the S3 bucket when one is configured
    (idempotent, under a lock)."""
    runtime = build_runtime(Settings(), create_tables=True)
    runtime.close()
    console.print("tables ready")


@app.command()
def project(
    once: Annotated[bool, typer.Option(help="Catch up to the head, then exit")] = False,
    parent_pid: Annotated[
        int | None,
        typer.Option(help="Stop when this process is gone (serve's child projector)", hidden=True),
    ] = None,
) -> None:
    """Run the projector on its own (use with ``RUNLEDGER_PROJECTOR=off`` on the API), at the
    niceness ``RUNLEDGER_PROJECTOR_NICE`` (``infra.runtime.yield_cpu``)."""
    settings = Settings()
    yield_cpu(settings.projector_nice)
    runtime = build_runtime(settings, blobs_used=False)
    try:
        if once:
            count = runtime.projector.run_once()
            console.print(f"projected {count} events")
            return
        stop = threading.Event()

        def stopping(*_: Any) -> None:
            stop.set()
            runtime.wake.interrupt()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        if parent_pid is not None:

            def parent_gone() -> None:
                console.print(f"parent process {parent_pid} is gone; stopping")
                stopping()

            watch_parent(parent_pid, parent_gone, stop)
        console.print("projector running; Ctrl-C to stop")
        runtime.run_projector(stop)
    finally:
        runtime.close()


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@app.command()
def rebuild(
    name: Annotated[str | None, typer.Argument(help="Projection to rebuild")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Rebuild every projection")] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes folding parts of the projections at once (1: this process only; "
            "default: 2 on a machine with 2 cores or more)",
        ),
    ] = None,
) -> None:
    """Rebuild a projection (or all) from position 0, with a progress bar.

    ``SIGTERM`` (or Ctrl-C) stops it: its worker processes are stopped, its lock released, and
    it exits with 143 (130); the rebuilt projections keep the positions they reached, from
    which the projector or the next rebuild goes on.
    """
    if jobs is None:
        jobs = min(2, os.cpu_count() or 1)
    if (name is None) == (not all_):
        raise typer.BadParameter("give a projection NAME or --all")
    # Without a handler SIGTERM ends the process on the spot, its workers orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = Settings()
    runtime = build_runtime(settings, blobs_used=False)
    try:
        names = None if all_ or name is None else [name]
        columns = (TextColumn("rebuild"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("rebuild", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            count = runtime.projector.rebuild(
                names, progress=report, jobs=jobs, run_parts=process_parts(settings)
            )
        console.print(
            f"rebuilt {', '.join(names) if names else 'all projections'} over {count} events"
        )
    except KeyError as error:
        raise typer.BadParameter(
            str(error.args[0]) if error.args else "unknown projection"
        ) from None
    except (SystemExit, KeyboardInterrupt):
        console.print(
            "rebuild stopped: the projections keep the positions they reached; the projector "
            "or the next rebuild goes on from there"
        )
        raise
    finally:
        runtime.close()


@app.command()
def status() -> None:
    """Each projection's position and lag behind the log's head."""
    runtime = build_runtime(Settings(), blobs_used=False)
    try:
        table = Table("projection", "position", "head", "lag")
        for row in runtime.projector.status():
            table.add_row(row["name"], str(row["position"]), str(row["head"]), str(row["lag"]))
        console.print(table)
    finally:
        runtime.close()


@app.command()
def replay(
    kind: Annotated[str, typer.Argument(help="session | trace | approval | chain")],
    external_id: Annotated[str, typer.Argument(help="The stream's upstream id")],
    version: Annotated[int | None, typer.Option(help="State at this version")] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            help="State as recorded at this RFC 3339 time",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"],
        ),
    ] = None,
    project_: Annotated[str | None, typer.Option("--project", help=PROJECT_HELP)] = None,
) -> None:
    """Print a stream's history and its state (now, at --version, or --as-of)."""
    from api.routes.audit import stream_history, stream_state
    from domain.errors import LedgerError

    settings = Settings()
    project_ = project_ or settings.default_project
    runtime = build_runtime(settings)
    try:
        history = stream_history(runtime, kind, external_id, project_, limit=1_000_000)
        state = stream_state(runtime, kind, external_id, project_, version, as_of)
    except LedgerError as error:
        console.print(f"[red]{error.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        runtime.close()
    table = Table("version", "position", "recorded_at", "occurred_at", "type", "event_id")
    for item in history["items"]:
        if state["version"] is not None and item["version"] > state["version"]:
            style = "dim"
        else:
            style = ""
        table.add_row(
            str(item["version"]), str(item["position"]), item["recorded_at"], item["occurred_at"],
            item["type"], item["event_id"], style=style,
        )  # fmt: skip
    console.print(table)
    console.print_json(json.dumps(jsonable(state), default=str))


@app.command()
def demo(
    url: Annotated[
        str, typer.Option(help="Base URL of a running runledger")
    ] = "http://127.0.0.1:8000",
    project_: Annotated[str | None, typer.Option("--project", help=PROJECT_HELP)] = None,
) -> None:
    """Post a real recorded agent run to a running server; print the chain summary and criterion states."""
    from api.demo import run_demo

    settings = Settings()
    result = run_demo(url, project=project_ or settings.default_project, token=settings.api_token)
    console.print(
        f"posted {result['requests']} requests; the ledger appended {result['events_written']} events "
        f"(0 when the run was posted before: every request is idempotent)"
    )
    chain = result["chain"]
    console.print(
        f"[bold]chain {chain['chain_id']}[/bold]: {chain['status']}, {chain['stages_completed']}/{chain['stage_count']} "
        f"stages, flow {chain['agent_flow']}, cost ${chain['cost_usd']:.2f}"
    )
    table = Table("criterion", "status", "updated_at", "source_id")
    for criterion_id, record in sorted(result["criteria"]["criterion_states"].items()):
        table.add_row(
            criterion_id,
            record["status"],
            record.get("updated_at", ""),
            record.get("source_id", ""),
        )
    console.print(table)
    session = result["session"]
    console.print(
        f"session {session['session_id']}: {session['status']}, {session['tool_call_count']} tool calls"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
