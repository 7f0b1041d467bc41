"""docker-compose.yml's processes, run directly (no Docker engine here): ``migrate``, then the API
with the projector off and a separate ``runledger project``, on a real PostgreSQL. Plus the
command line against the embedded default."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from infra.settings import Settings
from infra.wake import socket_path_for
from tests.servers import ROOT, Server, base_env

pytestmark = pytest.mark.e2e

RUNLEDGER = str(Path(sys.executable).with_name("runledger"))


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``runledger <args>`` with ``env``, its output captured as text (never raises on a
    non-zero exit: the tests assert on it)."""
    return subprocess.run(
        [RUNLEDGER, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_declares_the_deployment_and_its_commands_exist() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) >= {"postgres", "minio", "migrate", "api", "projector"}
    for name in ("migrate", "api", "projector"):
        command = services[name]["command"]
        assert command[0] == "runledger"
        help_text = subprocess.run(
            [RUNLEDGER, command[1], "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "Usage" in help_text
        env = services[name]["environment"]
        assert env["RUNLEDGER_DATABASE_URL"].startswith("postgresql://")
    assert services["api"]["environment"]["RUNLEDGER_PROJECTOR"] == "off"
    # the projector yields the CPU to the API, as serve's child does by its niceness
    assert services["projector"]["cpu_shares"] < services["api"].get("cpu_shares", 1024)
    # Blobs go to the MinIO service, through its S3 API.
    assert services["api"]["environment"]["RUNLEDGER_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["api"]["environment"]["RUNLEDGER_S3_BUCKET"]
    assert services["migrate"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert (
        services["projector"]["depends_on"]["migrate"]["condition"]
        == "service_completed_successfully"
    )


def test_compose_processes_run_directly_migrate_api_and_a_separate_projector(
    tmp_path: Path, postgres_url: str, pg_schema: str, s3_server: Any, s3_bucket: str
) -> None:
    services = compose()["services"]
    env = base_env(tmp_path)
    env.update({k: str(v) for k, v in services["api"]["environment"].items()})
    # This machine's PostgreSQL and S3-compatible server in place of the compose services.
    env.update(RUNLEDGER_DATABASE_URL=postgres_url, RUNLEDGER_DATABASE_SCHEMA=pg_schema)
    env.update(s3_server.settings_env(s3_bucket))

    subprocess.run(
        [RUNLEDGER, *services["migrate"]["command"][1:]], env=env, check=True, timeout=120
    )
    # The API as compose runs it (`--workers 2`), bound to a free port here.
    options = serve_options(services["api"]["command"])
    workers = int(options[options.index("--workers") + 1])
    assert workers > 1
    api = Server(env=env, args=options)
    api.log_path = tmp_path / "api.log"
    projector = subprocess.Popen(
        [RUNLEDGER, *services["projector"]["command"][1:]],
        env=env,
        stdout=(tmp_path / "projector.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        api.start()
        assert api.process is not None
        # uvicorn's worker processes (beside multiprocessing's resource tracker; no projector:
        # the API's is off)
        children = [cmdline(c) for c in child_pids(api.process.pid)]
        spawned = [c for c in children if "spawn_main" in c]
        assert len(spawned) == workers, children
        assert not any(" project" in c for c in children), children
        with httpx.Client(base_url=api.url, timeout=30) as client:
            client.post(
                "/v1/events", json={"type": "chain.created", "chain_id": "deployed"}
            ).raise_for_status()
            deadline = time.monotonic() + 30
            while client.get("/v1/chains/deployed").status_code == 404:
                assert time.monotonic() < deadline, (tmp_path / "projector.log").read_text()
                time.sleep(0.1)
            assert client.get("/v1/chains/deployed").json()["status"] == "active"
            # `migrate` created the bucket; a large tool input lands there.
            tool_input = {"content": "x" * 40_000}
            client.post(
                "/v1/events",
                json={
                    "type": "session.tool_call_started",
                    "session_id": "deployed",
                    "tool_name": "Write",
                    "tool_use_id": "toolu_deployed",
                    "tool_input": tool_input,
                },
            ).raise_for_status()
            listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
            assert len(listed) == 1 and listed[0]["Size"] > 40_000
    finally:
        api.stop()
        projector.terminate()
        projector.wait(timeout=20)
    assert projector.returncode == 0


def test_serve_creates_a_schema_that_does_not_exist_yet_and_refuses_it_without_create_tables(
    tmp_path: Path, postgres_url: str, new_pg_schema: str
) -> None:
    env = base_env(
        tmp_path, RUNLEDGER_DATABASE_URL=postgres_url, RUNLEDGER_DATABASE_SCHEMA=new_pg_schema
    )
    refused = Server(env=dict(env, RUNLEDGER_CREATE_TABLES="false"))
    refused.log_path = tmp_path / "refused.log"
    with pytest.raises(RuntimeError, match="server exited"):
        refused.start()
    said = refused.log_path.read_text()
    assert "SchemaMissingError" in said and repr(new_pg_schema) in said, said[-3000:]
    # The API and its child projector both create tables at start-up, at once.
    server = Server(env=env)
    server.log_path = tmp_path / "server.log"
    try:
        server.start()  # /readyz answered 200
        with httpx.Client(base_url=server.url, timeout=30) as client:
            posted = client.post(
                "/v1/events",
                json={"type": "session.started", "session_id": "new-schema", "agent": "x"},
            )
            assert posted.status_code == 201, posted.text
            server.wait_projected()
            assert client.get("/v1/sessions/new-schema").json()["session_id"] == "new-schema"
    finally:
        server.stop()
    with psycopg.connect(postgres_url) as conn:
        (count,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.runledger_events").format(
                sql.Identifier(new_pg_schema)
            )
        ).fetchone() or (0,)
    assert count == 1


def test_command_line_replays_rebuilds_and_reports_status(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        for status in ("fail", "pass"):
            client.post(
                "/v1/events",
                json={
                    "type": "session.evidence_recorded",
                    "session_id": "cli-s",
                    "entry": {
                        "type": "criterion",
                        "criterion_id": "ac1",
                        "status": status,
                        "recorded_at": "2026-01-01T00:00:00Z",
                    },
                },
            ).raise_for_status()
        sqlite_server.wait_projected()
    env = dict(sqlite_server.env, COLUMNS="200")
    replay = cli("replay", "session", "cli-s", "--version", "1", env=env)
    assert replay.returncode == 0, replay.stderr
    assert "EvidenceRecorded" in replay.stdout and '"status": "fail"' in replay.stdout
    missing = cli("replay", "session", "nope", env=env)
    assert missing.returncode == 1 and "no session stream" in missing.stdout
    # here, then in parts (by default on 2 cores or more)
    for jobs in (["--jobs", "1"], []):
        rebuild = cli("rebuild", "--all", *jobs, env=env, timeout=120)
        assert rebuild.returncode == 0, rebuild.stderr
        assert "rebuilt all projections" in rebuild.stdout
    unknown = cli("rebuild", "nonsense", env=env)
    assert unknown.returncode != 0
    status = cli("status", env=env)
    assert status.returncode == 0 and "criterion_states" in status.stdout
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        sqlite_server.wait_projected()
        assert (
            client.get("/v1/sessions/cli-s/criteria").json()["criterion_states"]["ac1"]["status"]
            == "pass"
        )
    assert os.environ.get("RUNLEDGER_DATA_DIR") is None  # the test did not leak settings


def test_the_command_line_defaults_to_the_configured_default_project(make_server: Any) -> None:
    # The server and the command line share the configuration, as on one host.
    server = make_server(RUNLEDGER_DEFAULT_PROJECT="proj1")
    env = dict(server.env, COLUMNS="200")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post(  # no project named: filed under proj1
            "/v1/events", json={"type": "session.started", "session_id": "a", "agent": "x"}
        ).raise_for_status()
    replay = cli("replay", "session", "a", env=env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "SessionStarted" in replay.stdout
    elsewhere = cli("replay", "session", "a", "--project", "default", env=env)
    assert elsewhere.returncode == 1 and "in project 'default'" in elsewhere.stdout
    demo = cli("demo", "--url", server.url, env=env, timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    with httpx.Client(base_url=server.url, timeout=30) as client:
        path = "/v1/chains/demo-chain-issue-127"
        assert client.get(path).status_code == 200
        assert client.get(path, params={"project": "default"}).status_code == 404


def test_the_projector_rebuild_and_status_run_while_s3_is_unreachable(
    sqlite_server: Server,
) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        client.post(
            "/v1/events",
            json={"type": "session.started", "session_id": "no-s3", "cwd": "/w"},
        ).raise_for_status()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = dict(
        sqlite_server.env,
        COLUMNS="200",
        RUNLEDGER_S3_BUCKET="never-made",
        RUNLEDGER_S3_ENDPOINT_URL=f"http://127.0.0.1:{closed}",
        RUNLEDGER_S3_PATH_STYLE="true",
        RUNLEDGER_S3_ACCESS_KEY_ID="x",
        RUNLEDGER_S3_SECRET_ACCESS_KEY="y",
    )
    for command, said in (
        (["project", "--once"], "projected"),
        (["rebuild", "--all", "--jobs", "1"], "rebuilt all projections"),
        (["status"], "sessions"),
    ):
        done = cli(*command, env=env, timeout=120)
        assert done.returncode == 0 and said in done.stdout, (command, done.stdout, done.stderr)
    # the API does use blobs: it refuses to start without its bucket
    migrate = cli("migrate", env=env, timeout=120)
    assert migrate.returncode != 0 and "never-made" in migrate.stdout + migrate.stderr, migrate


def serve_options(command: list[str]) -> list[str]:
    """The options of a compose ``runledger serve`` command other than where it binds."""
    assert command[:2] == ["runledger", "serve"]
    options: list[str] = []
    given = iter(command[2:])
    for option in given:
        if option in ("--host", "--port"):
            next(given)
        else:
            options.append(option)
    return options


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` (any of its threads'), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def until(condition: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held (polled every 10 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"{what} within {timeout_s} s")


def test_serve_runs_its_projector_as_a_child_woken_by_each_commit_and_restarted(
    make_server: Any,
) -> None:
    # A 30 s poll: only the writer's wake-up can bring a commit to the read model quickly.
    server = make_server(RUNLEDGER_PROJECTOR_POLL_INTERVAL_S="30")
    assert server.process is not None
    serve_pid = server.process.pid
    until(lambda: child_pids(serve_pid), 10, "serve started no child")
    (child,) = child_pids(serve_pid)
    assert "project" in cmdline(child) and f"--parent-pid {serve_pid}" in cmdline(child)
    # the child yields the CPU to the API (RUNLEDGER_PROJECTOR_NICE, 10 by default), in its
    # scheduling group too where Linux has them; serve itself keeps its priority
    until(lambda: niceness(child) == max(10, niceness(serve_pid)), 10, "the child not niced")
    assert niceness(serve_pid) == os.getpriority(os.PRIO_PROCESS, 0)
    group = Path(f"/proc/{child}/autogroup")
    if group.exists():
        assert group.read_text().split()[-1] == str(niceness(child))

    def visible(session: str) -> bool:
        return httpx.get(f"{server.url}/v1/sessions/{session}", timeout=5).status_code == 200

    # the socket each child binds once it caught up (a new file per child)
    wake = socket_path_for(Settings(data_dir=Path(server.env["RUNLEDGER_DATA_DIR"])).sqlite_path)

    def bound_socket() -> tuple[int, int] | None:
        try:
            stat = wake.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_ctime_ns  # inode numbers are reused

    until(lambda: bound_socket() is not None, 10, "the child bound no wake-up socket")

    def projected_in(session: str) -> float:
        httpx.post(
            f"{server.url}/v1/events",
            json={"type": "session.started", "session_id": session, "agent": "claude-code"},
            timeout=10,
        ).raise_for_status()
        return until(lambda: visible(session), 5, f"{session} not projected")

    assert projected_in("child-1") < 2.0
    # the child dies: serve starts another, which goes on where it stopped
    before = bound_socket()
    os.kill(child, 9)
    until(lambda: child_pids(serve_pid) not in ([], [child]), 10, "no new child")
    (child,) = child_pids(serve_pid)
    until(lambda: bound_socket() not in (None, before), 15, "not bound again")
    assert projected_in("child-2") < 2.0

    # serve stopped: its child stops with it; serve killed: the child notices and stops
    server.stop()
    until(lambda: gone(child), 10, "the child outlived serve")
    second = make_server(RUNLEDGER_PROJECTOR_NICE="0")
    assert second.process is not None
    until(lambda: child_pids(second.process.pid), 10, "serve started no child")
    (orphan,) = child_pids(second.process.pid)
    # bound once it started its runtime, which is after it set its priority
    second_wake = socket_path_for(
        Settings(data_dir=Path(second.env["RUNLEDGER_DATA_DIR"])).sqlite_path
    )
    until(second_wake.exists, 15, "the second child bound no wake-up socket")
    assert niceness(orphan) == niceness(second.process.pid)  # 0: the API's priority
    second.process.kill()
    second.process.wait()
    until(lambda: gone(orphan), 10, "the child outlived a killed serve")
