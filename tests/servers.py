"""The real server on a free port: ``runledger serve`` in a subprocess, reached over HTTP.

Fixtures here are registered by ``tests/conftest.py``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``runledger serve`` process."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    #: More options of ``runledger serve`` (e.g. ``["--workers", "2"]``).
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: The route whose 200 means started (``/healthz`` for a server whose tables are not there
    #: yet, which ``/readyz`` answers 503).
    ready_path: str = "/readyz"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Server:
        runledger = Path(sys.executable).with_name("runledger")
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(runledger), "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def wait_projected(self, timeout_s: float = 30.0) -> None:
        """Wait until every projection caught up with the log's head."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = httpx.get(f"{self.url}/readyz", timeout=5).json()
            if all(p["lag"] == 0 for p in ready["projections"]):
                return
            time.sleep(0.05)
        raise TimeoutError("projections did not catch up")


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env.update(RUNLEDGER_DATA_DIR=str(tmp_path / "var"), RUNLEDGER_PROJECTOR_POLL_INTERVAL_S="0.05")
    env.update(extra)
    return env


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``make_server(**RUNLEDGER_env)`` starts a server; all are stopped afterwards."""
    servers: list[Server] = []

    def make(**extra: str) -> Server:
        server = Server(env=base_env(tmp_path, **extra))
        server.log_path = tmp_path / f"server-{len(servers)}.log"
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture()
def sqlite_server(make_server: Callable[..., Server]) -> Server:
    """A server on the embedded SQLite default (a fresh file)."""
    return make_server()


def read_sse(lines: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages of a Server-Sent Events stream (``iter_lines()``), each as
    ``{"id", "event", "data"}`` (``data`` parsed as JSON); comment and ``retry`` lines skipped."""
    messages: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                messages.append(fields)
                if len(messages) == count:
                    return messages
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            if name != "retry":
                fields[name] = value
    raise AssertionError(f"the stream ended after {len(messages)} of {count} messages")
