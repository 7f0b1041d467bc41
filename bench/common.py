"""The benchmarks' shared harness: arguments, real server processes, fresh PostgreSQL schemas,
statistics, HTTP load helpers and the ``bench/RESULTS.md`` table.

Conventions every benchmark follows:

- servers are real processes (``.venv/bin/runledger serve``; the no-op reference app under the
  same uvicorn settings), bound to 127.0.0.1 on a free port, logging to a file in a temporary
  directory, and stopped in a ``finally`` (SIGTERM, then SIGKILL after 20 s) even on failure;
  SIGTERM to the benchmark itself unwinds the same way;
- each PostgreSQL run gets a fresh schema (``bench_<name>_<random>``), dropped afterwards;
- every loop is bounded in count and in time; all traffic goes to 127.0.0.1;
- a benchmark reports the median of its rounds, the reference measured in the same run (rounds
  interleaved with the measured ones, so that the noise of this shared 2-core machine hits
  both), the ratio ``median / reference`` and its target with PASS/MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = ROOT / "bench" / "RESULTS.md"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
LOCALHOST = "127.0.0.1"

RESULTS_HEADER = (
    "| date (UTC) | benchmark | metric | median | reference | ratio | target | cores | notes |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


# -- arguments and process hygiene ---------------------------------------------------------------


def parse_args(
    description: str,
    *,
    rounds: int,
    quick_rounds: int,
    add: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """The common command line of a benchmark.

    Args:
        description: the benchmark's one-line summary (``--help``).
        rounds: rounds of a full run (>= 3).
        quick_rounds: rounds of a ``--quick`` run.
        add: adds the benchmark's own options.
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The parsed namespace; ``rounds`` is resolved from ``--quick`` when not given.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds (default {rounds}, --quick {quick_rounds})",
    )
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help="PostgreSQL (a schema per run)"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="do not append to bench/RESULTS.md"
    )
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = quick_rounds if args.quick else rounds
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def unwind_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks stop servers and drop schemas."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def runledger_bin() -> Path:
    """The ``runledger`` console script of the project's virtualenv."""
    venv = ROOT / ".venv" / "bin" / "runledger"
    return venv if venv.exists() else Path(sys.executable).with_name("runledger")


def git_revision(root: Path = ROOT) -> str:
    """``<short sha>`` of HEAD, ``+dirty`` when the working tree differs from it, except in
    ``bench/RESULTS.md``, which the benchmarks themselves append to (read-only git calls)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        clean = subprocess.run(
            [
                "git",
                "diff-index",
                "--quiet",
                "HEAD",
                "--",
                ".",
                f":(exclude){RESULTS_PATH.relative_to(ROOT)}",
            ],
            cwd=root,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("" if clean.returncode == 0 else "+dirty")


# -- PostgreSQL ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_schema(database_url: str, label: str) -> Iterator[str]:
    """Create an empty schema ``bench_<label>_<random>``; drop it (CASCADE) afterwards.

    Stop every process and close every connection using the schema before leaving the block
    (``DROP SCHEMA`` waits for their locks, at most 60 s).
    """
    name = f"bench_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        drop_schema(database_url, name)


def drop_schema(database_url: str, name: str) -> None:
    """``DROP SCHEMA IF EXISTS name CASCADE`` (lock wait at most 60 s, three attempts)."""
    for attempt in range(3):
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '60s'")
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )
            return
        except psycopg.Error as error:
            if attempt == 2:
                print(f"!! could not drop schema {name}: {error}", file=sys.stderr)
                raise
            time.sleep(2)


def log_table(database_url: str, schema: str) -> str:
    """The name of the application's events table in ``schema`` (the one with ``notification_id``)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = %s AND column_name = 'notification_id' ORDER BY table_name",
            (schema,),
        ).fetchall()
    if len(rows) != 1:
        raise RuntimeError(f"expected one events table in schema {schema!r}, found {rows}")
    return str(rows[0][0])


def log_event_count(database_url: str, schema: str) -> int:
    """The exact number of events in the application log of ``schema`` (``count(*)``)."""
    table = log_table(database_url, schema)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- server processes ---------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server in a subprocess, reached over HTTP on 127.0.0.1.

    Attributes:
        name: a label for messages.
        argv: the command line.
        env: the complete environment of the process.
        log_path: where stdout and stderr go (never a pipe: a full pipe would stall the server).
        port: the bound port.
        ready_path: the GET path answering 200 once the server is ready.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    ready_path: str = "/healthz"
    #: A second process started once the server is ready and stopped with it (the projector of
    #: the ``BENCH_PROJECTOR=process`` layout).
    companion_argv: list[str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    companion: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The process id (the uvicorn process itself: ``runledger serve`` runs uvicorn in-process)."""
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        """Start the process and wait until ``ready_path`` answers 200.

        Raises:
            RuntimeError: the process exited, or was not ready within ``timeout_s``.
        """
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        self._start_companion()
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def _start_companion(self) -> None:
        if self.companion_argv is None:
            return
        with self.log_path.with_suffix(".companion.log").open("ab") as log:
            self.companion = subprocess.Popen(
                self.companion_argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        """SIGTERM, wait up to 20 s, then SIGKILL (the companion first). Idempotent."""
        for attr in ("companion", "process"):
            process = getattr(self, attr)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)
            setattr(self, attr, None)

    def memory_kb(self) -> dict[str, int]:
        """Resident memory from ``/proc/<pid>/status``, in kB (``server_roles`` tells the parts).

        Returns:
            ``VmRSS`` and ``VmHWM`` (peak RSS) of the API: the largest value among the server
            process and its descendants but the projector (``serve --workers N``: uvicorn's
            workers; the target is per API process); ``VmHWM_total``, the sum of the API
            processes' peaks (an upper bound of all of them together: their peaks need not
            coincide); ``projector_VmHWM``, the projector's peak (0 when it is not a process of
            its own).
        """
        found = {"VmRSS": 0, "VmHWM": 0, "VmHWM_total": 0, "projector_VmHWM": 0}
        for pid, role in server_roles(self).items():
            try:
                with open(f"/proc/{pid}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if ":" in line)
            except OSError:  # a child that just exited
                continue
            rss_kb, peak_kb = (int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM"))
            if role == "projector":
                found["projector_VmHWM"] = max(found["projector_VmHWM"], peak_kb)
                continue
            found["VmRSS"] = max(found["VmRSS"], rss_kb)
            found["VmHWM"] = max(found["VmHWM"], peak_kb)
            found["VmHWM_total"] += peak_kb
        return found

    def log_tail(self, size: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in children.read_text().split())
        except OSError:
            continue
    return found


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Start ``servers`` in order; stop every started one on leaving, even on failure."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        try:
            yield servers
        except BaseException:
            for server in servers:
                if server.process is not None and server.process.poll() is not None:
                    print(
                        f"!! {server.name} (pid {server.pid}) exited with "
                        f"{server.process.returncode}:\n{server.log_tail()}",
                        file=sys.stderr,
                    )
            raise


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env.update(extra)
    return env


def runledger_server(
    database_url: str,
    schema: str,
    workdir: Path,
    *,
    name: str = "runledger",
    **settings: str,
) -> ServerProcess:
    """``runledger serve`` on PostgreSQL in ``schema`` (not started yet).

    Args:
        database_url: ``RUNLEDGER_DATABASE_URL``.
        schema: ``RUNLEDGER_DATABASE_SCHEMA``.
        workdir: holds the log file and ``RUNLEDGER_DATA_DIR`` (local blobs).
        name: label, also the log file's name.
        settings: more ``RUNLEDGER_*`` settings by lower-case name (e.g. ``projector="off"``).
            ``BENCH_RUNLEDGER_<NAME>`` variables of the benchmark's own environment are passed on
            as ``RUNLEDGER_<NAME>`` too (e.g. ``BENCH_RUNLEDGER_WORKERS=2``), to measure a
            configuration without editing the benchmark.

    ``BENCH_PROJECTOR`` (``projector_layout``) chooses where the projector runs: unset, as
    ``serve`` runs it by default (its child process); ``inprocess``, a thread of the API;
    ``process``, docker-compose's layout (the API's projector off and ``runledger project`` as a
    second process on the same database, started once the API is ready, stopped with it).
    """
    port = free_port()
    passed_on = {
        key.removeprefix("BENCH_"): value
        for key, value in os.environ.items()
        if key.startswith("BENCH_RUNLEDGER_")
    }
    chosen = {
        "RUNLEDGER_DATABASE_URL": database_url,
        "RUNLEDGER_DATABASE_SCHEMA": schema,
        "RUNLEDGER_DATA_DIR": str(workdir / f"{name}-var"),
        **passed_on,
        # the benchmark's own choices win over the passed-on ones
        **{f"RUNLEDGER_{key.upper()}": value for key, value in settings.items()},
    }
    companion = None
    layout = projector_layout()
    if layout == "process" and chosen.get("RUNLEDGER_PROJECTOR") != "off":
        chosen["RUNLEDGER_PROJECTOR"] = "off"
        companion = [str(runledger_bin()), "project"]
    elif layout == "inprocess" and "RUNLEDGER_PROJECTOR" not in chosen:
        chosen["RUNLEDGER_PROJECTOR"] = "inprocess"
    env = _clean_env(**chosen)
    return ServerProcess(
        name=name,
        argv=[str(runledger_bin()), "serve", "--host", LOCALHOST, "--port", str(port)],
        env=env,
        log_path=workdir / f"{name}.log",
        port=port,
        ready_path="/readyz",
        companion_argv=companion,
    )


#: ``BENCH_PROJECTOR`` values: how the notes of a row name the layout.
LAYOUTS = {
    "serve": "",
    "inprocess": "projector in the API process",
    "process": "projector in its own process",
}


def projector_layout() -> str:
    """``serve`` (default: ``runledger serve`` as the quick start runs it, which starts its
    projector as a child process), ``inprocess`` (``RUNLEDGER_PROJECTOR=inprocess``: a thread of
    the API process) or ``process`` (docker-compose's: the API's projector off and
    ``runledger project`` started beside it) (``BENCH_PROJECTOR``).

    Raises:
        SystemExit: any other value.
    """
    layout = os.environ.get("BENCH_PROJECTOR", "serve")
    if layout not in LAYOUTS:
        raise SystemExit(f"BENCH_PROJECTOR must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    return layout


def noop_server(workdir: Path, *, name: str = "noop") -> ServerProcess:
    """``bench.noop_app``: the reference endpoints under the same uvicorn settings (not started),
    with as many worker processes as ``runledger_server`` gives runledger (``server_workers``):
    a reference with fewer processes than the measured server would flatter the ratio."""
    port = free_port()
    workers = str(server_workers())
    return ServerProcess(
        name=name,
        argv=[sys.executable, "-m", "bench.noop_app", "--port", str(port), "--workers", workers],
        env=_clean_env(),
        log_path=workdir / f"{name}.log",
        port=port,
        ready_path="/healthz",
    )


def server_workers() -> int:
    """API worker processes of the measured ``runledger serve``: ``BENCH_RUNLEDGER_WORKERS``
    (passed on as ``RUNLEDGER_WORKERS``), else ``serve``'s default; checked by the
    ``Settings.workers`` field itself (default and bounds), not by this process's environment.

    Raises:
        SystemExit: ``BENCH_RUNLEDGER_WORKERS`` is not a positive integer within those bounds.
    """
    from pydantic import TypeAdapter, ValidationError

    from infra.settings import Settings

    field = Settings.model_fields["workers"]
    given = os.environ.get("BENCH_RUNLEDGER_WORKERS")
    if given is None:
        return int(field.default)
    try:
        return int(TypeAdapter(Annotated[int, field]).validate_python(given))
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise SystemExit(
            f"BENCH_RUNLEDGER_WORKERS must be a positive integer (RUNLEDGER_WORKERS), not "
            f"{given!r}: {reason}"
        ) from None


def readyz(url: str, client: httpx.Client | None = None) -> dict[str, Any]:
    """``GET /readyz`` of a runledger server (through ``client`` when given: making a client
    costs this process ~10 ms of CPU, its TLS context, which pollers should not pay each time)."""
    if client is None:
        with httpx.Client(trust_env=False, timeout=30.0) as own:
            return readyz(url, own)
    response = client.get(url + "/readyz")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_projected(url: str, timeout_s: float = 300.0) -> float:
    """Wait until every projection of the server at ``url`` has caught up with the log's head.

    Returns:
        Seconds waited.

    Raises:
        TimeoutError: still lagging after ``timeout_s``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        while time.monotonic() < deadline:
            if all(p["lag"] == 0 for p in readyz(url, client)["projections"]):
                return time.monotonic() - started
            time.sleep(0.1)
    raise TimeoutError(f"projections of {url} still lagging after {timeout_s} s")


class RssSampler:
    """Samples a process's ``VmRSS`` every ``interval_s`` in a background thread (a context manager).

    Args:
        server: the process to watch.
        interval_s: sampling period, seconds.
        max_samples: the thread stops after this many samples whatever happens.
    """

    def __init__(
        self, server: ServerProcess, interval_s: float = 0.1, max_samples: int = 100_000
    ) -> None:
        self.server = server
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples_kb: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while len(self.samples_kb) < self.max_samples and not self._stop.is_set():
            try:
                self.samples_kb.append(self.server.memory_kb()["VmRSS"])
            except (OSError, KeyError, AssertionError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_kb(self) -> int:
        """The highest sampled ``VmRSS`` (0 without samples)."""
        return max(self.samples_kb, default=0)


#: ``CpuMeter`` roles, in the order they are printed.
CPU_ROLES = ("api", "projector", "postgres", "client")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int | str) -> float:
    """CPU seconds (``utime + stime``, fields 14 and 15 of ``/proc/<pid>/stat``) of a live
    process, threads included.

    Raises:
        OSError: the process is gone.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _postgres_pids() -> list[str]:
    """Every process named ``postgres`` (the postmaster, its backends and its background
    workers: what the database spends, whoever's connection it serves)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                found.append(comm.parent.name)
        except OSError:  # gone
            continue
    return found


def memory_notes(memory_kb: Mapping[str, float]) -> str:
    """The other peaks of ``ServerProcess.memory_kb`` for a row's notes: ``"; projector N MB"``
    when it is a process of its own, and ``"; all API processes together N MB"`` when the API
    runs in several."""
    notes = ""
    if memory_kb["projector_VmHWM"]:
        notes += f"; projector {memory_kb['projector_VmHWM'] / 1024:.0f} MB"
    if memory_kb["VmHWM_total"] > memory_kb["VmHWM"]:
        notes += f"; all API processes together {memory_kb['VmHWM_total'] / 1024:.0f} MB"
    return notes


def server_roles(server: ServerProcess) -> dict[str, str]:
    """``{pid: role}`` of a running server's processes: ``api``, the server process and its
    descendants (uvicorn's workers under ``--workers N``), but ``projector`` for the companion
    process and any descendant whose command line runs ``project`` (``serve``'s child)."""
    roles = {str(server.pid): "api"}
    pending = [server.pid]
    if server.companion is not None:
        roles[str(server.companion.pid)] = "projector"
        pending.append(server.companion.pid)
    while pending:
        for child in _children(pending.pop()):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            roles[str(child)] = "projector" if b"project" in argv else "api"
            pending.append(child)
    return roles


class CpuMeter:
    """CPU seconds spent during a ``with`` block, by role (a context manager).

    Roles (``CPU_ROLES``): ``api``, the server process and its children but the projector
    (uvicorn's workers under ``--workers N``); ``projector``, the child or companion process
    whose command line runs ``project``; ``postgres``, every process named ``postgres`` on this
    machine; ``client``, this benchmark process (``time.process_time``: its threads too, e.g. the
    OpenTelemetry SDK's exporter). Read from ``/proc/<pid>/stat`` at entry and exit: a process
    started in between counts from zero, one that ended in between is not counted (its parent
    gets its time only once it is reaped, as ``cutime``, which is not read).

    Attributes:
        seconds: ``{role: CPU seconds}`` once the block has ended.
        wall_s: the block's wall-clock seconds.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.seconds: dict[str, float] = {}
        self.wall_s = 0.0
        self._start: dict[str, tuple[str, float]] = {}
        self._started = 0.0
        self._client_start = 0.0

    def _roles(self) -> dict[str, str]:
        """``{pid: role}`` of the server's processes and PostgreSQL's."""
        roles = server_roles(self.server)
        roles.update(dict.fromkeys(_postgres_pids(), "postgres"))
        return roles

    def _snapshot(self) -> dict[str, tuple[str, float]]:
        found = {}
        for pid, role in self._roles().items():
            try:
                found[pid] = (role, _cpu_s(pid))
            except OSError:
                continue
        return found

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        self._client_start = time.process_time()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._started
        spent = dict.fromkeys(CPU_ROLES, 0.0)
        spent["client"] = time.process_time() - self._client_start
        for pid, (role, seconds) in self._snapshot().items():
            spent[role] += seconds - self._start.get(pid, (role, 0.0))[1]
        self.seconds = spent

    def per_unit_us(self, units: int) -> dict[str, float]:
        """``{role: CPU microseconds per unit}`` (per event, per span) for ``units`` done in the
        block."""
        return {role: seconds / units * 1e6 for role, seconds in self.seconds.items()}

    def describe(self, units: int, unit: str) -> str:
        """One line: CPU µs per ``unit`` by role, and the cores busy on average."""
        busy = sum(self.seconds.values()) / self.wall_s if self.wall_s else 0.0
        return (
            f"CPU µs per {unit}: {cpu_text(self.per_unit_us(units))}; "
            f"{busy:.2f} of {os.cpu_count()} cores busy"
        )


def cpu_text(per_unit_us: dict[str, float]) -> str:
    """``"api 61, projector 31, postgres 25, client 7"`` (µs, in ``CPU_ROLES`` order)."""
    return ", ".join(f"{role} {per_unit_us[role]:.0f}" for role in CPU_ROLES)


def median_cpu(meters: Sequence[CpuMeter], units: Sequence[int]) -> dict[str, float]:
    """``{role: median CPU µs per unit}`` over rounds (``meters[i]`` measured ``units[i]``)."""
    rounds = [m.per_unit_us(n) for m, n in zip(meters, units, strict=True)]
    return {role: median([r[role] for r in rounds]) for role in CPU_ROLES}


# -- HTTP load ---------------------------------------------------------------------------------


def post_all(
    url: str,
    bodies: Sequence[bytes],
    *,
    content_type: str,
    concurrency: int,
    check: Callable[[httpx.Response], int],
    timeout_s: float = 600.0,
) -> tuple[float, int]:
    """POST every body once over ``concurrency`` keep-alive connections; time it.

    Args:
        url: the endpoint.
        bodies: pre-encoded request bodies (encoding is not timed).
        content_type: the ``content-type`` header.
        concurrency: concurrent connections (each keeps one request in flight).
        check: validates a response (raising on anything unexpected) and returns what it
            counts (e.g. events created).
        timeout_s: the whole load's time limit.

    Returns:
        ``(elapsed seconds from the first request to the last response, sum of check())``.

    Raises:
        TimeoutError: the load took longer than ``timeout_s``.
    """

    async def load() -> tuple[float, int]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"content-type": content_type}
        async with httpx.AsyncClient(
            trust_env=False, limits=limits, timeout=httpx.Timeout(120.0)
        ) as client:
            await client.get(url.rsplit("/v1/", 1)[0] + "/healthz")  # open one connection
            queue = iter(range(len(bodies)))
            counted = 0

            async def worker() -> None:
                nonlocal counted
                for index in queue:  # shared iterator: each body is posted exactly once
                    response = await client.post(url, content=bodies[index], headers=headers)
                    counted += check(response)

            started = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(worker() for _ in range(concurrency))), timeout=timeout_s
            )
            return time.perf_counter() - started, counted

    return asyncio.run(load())


# -- statistics and reporting --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (``statistics.median``)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fmt(value: float | None) -> str:
    """A number for humans: thousands separators above 100, two or three decimals below."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(ratio: float) -> str:
    """A ratio with two decimals, or three significant digits below 0.1."""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


@dataclass
class Measurement:
    """One reported number.

    Attributes:
        benchmark: the benchmark's name (``ingest_batch``...).
        metric: what was measured, with its unit (``events/s committed``).
        median: median over the rounds.
        reference: median of the reference over the same rounds (None: no reference).
        reference_label: what the reference is (``COPY``, ``no-op endpoint``...).
        target: the target in words (``>= 25,000``).
        passed: whether the target is met (None: no target for this line).
        rounds: the per-round values, for the printout.
        notes: anything a reader needs (load generator, sizes, quick run...).
    """

    benchmark: str
    metric: str
    median: float
    reference: float | None = None
    reference_label: str = ""
    target: str = "-"
    passed: bool | None = None
    rounds: list[float] = field(default_factory=list)
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        """``median / reference`` (None without a reference)."""
        if self.reference in (None, 0):
            return None
        assert self.reference is not None
        return self.median / self.reference

    @property
    def verdict(self) -> str:
        """``PASS``, ``MISS`` or ``-``."""
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


def report(measurements: Sequence[Measurement], *, quick: bool, record: bool) -> None:
    """Print the measurements and (unless ``record`` is false) append them to ``bench/RESULTS.md``."""
    print()
    print(f"{'metric':<44} {'median':>12} {'reference':>22} {'ratio':>7}  target")
    for m in measurements:
        reference = f"{fmt(m.reference)} {m.reference_label}".strip() if m.reference else "-"
        ratio = f"{fmt_ratio(m.ratio)}x" if m.ratio is not None else "-"
        print(
            f"{m.benchmark + ': ' + m.metric:<44} {fmt(m.median):>12} {reference:>22} "
            f"{ratio:>7}  {m.target} -> {m.verdict}"
        )
        if m.rounds:
            print(f"{'':<4}rounds: {', '.join(fmt(v) for v in m.rounds)}")
    if record:
        append_results(measurements, quick=quick)
        print(f"\nappended {len(measurements)} row(s) to {RESULTS_PATH.relative_to(ROOT)}")


def append_results(measurements: Sequence[Measurement], *, quick: bool) -> None:
    """Append one markdown row per measurement to ``bench/RESULTS.md`` (header written once)."""
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    cores = os.cpu_count() or 0
    revision = git_revision()
    lines = []
    for m in measurements:
        reference = f"{fmt(m.reference)} ({m.reference_label})" if m.reference else "-"
        ratio = fmt_ratio(m.ratio) if m.ratio is not None else "-"
        config = ", ".join(
            f"{k.removeprefix('BENCH_')}={v}"
            for k, v in sorted(os.environ.items())
            if k.startswith("BENCH_RUNLEDGER_")
        )
        config = ", ".join(part for part in (config, LAYOUTS[projector_layout()]) if part)
        notes = "; ".join(
            part for part in ("quick" if quick else "", m.notes, config, f"rev {revision}") if part
        )
        cells = [
            date,
            m.benchmark,
            m.metric,
            fmt(m.median),
            reference,
            ratio,
            f"{m.target} {m.verdict}" if m.passed is not None else m.target,
            str(cores),
            notes,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")
    new = not RESULTS_PATH.exists() or RESULTS_PATH.stat().st_size == 0
    with RESULTS_PATH.open("a") as results:
        if new:
            results.write("# Benchmark results\n\nAppended by `python -m bench.<name>`; ")
            results.write("see `bench/README.md`. Ratio = median / reference.\n\n")
            results.write(RESULTS_HEADER)
        results.writelines(lines)


def banner(title: str, **facts: object) -> None:
    """Print the benchmark's title and its parameters."""
    print(f"== {title}  ({datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} cores)")
    for key, value in facts.items():
        print(f"   {key}: {value}")
