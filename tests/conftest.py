"""Shared fixtures: real servers are found, never faked.

``RUNLEDGER_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) names the
PostgreSQL the integration and e2e tests use; each test gets a schema of its own. The
S3-compatible server is moto's (``moto_server``, from the test extras) started on a free port for
the session, or the one at ``RUNLEDGER_TEST_S3_ENDPOINT_URL`` (e.g. a MinIO); each test gets a
bucket of its own. Outside CI a missing server skips those tests; under ``CI=true`` it fails
them, saying what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import Server, free_port, make_server, sqlite_server

__all__ = ["Server", "make_server", "sqlite_server"]

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def missing_server(what: str) -> None:
    """Skip (developer machine) or fail (``CI=true``) for a server the test needs."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI=true and is not reachable", pytrace=False)
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the real PostgreSQL for integration tests (checked reachable)."""
    url = os.environ.get("RUNLEDGER_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as error:
        missing_server(f"PostgreSQL at {url} ({error})")
    return url


@pytest.fixture()
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    import psycopg

    name = f"rl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture()
def new_pg_schema(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL schema name that does not exist yet (the code under test creates it);
    dropped afterwards, whatever was made in it. Request it before ``make_server``, so that it
    outlives the server."""
    import psycopg

    name = f"rl_new_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A server's store settings, once the embedded SQLite default (``{}``), once PostgreSQL in
    a fresh schema; request it before ``make_server``, so that the schema outlives the server."""
    if request.param == "sqlite":
        return {}
    return {
        "RUNLEDGER_DATABASE_URL": request.getfixturevalue("postgres_url"),
        "RUNLEDGER_DATABASE_SCHEMA": request.getfixturevalue("pg_schema"),
    }


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible endpoint and credentials it accepts."""

    endpoint_url: str
    access_key_id: str = "runledger-test"
    secret_access_key: str = "runledger-test-secret"
    region: str = "us-east-1"

    def settings_env(self, bucket: str) -> dict[str, str]:
        """``RUNLEDGER_S3_*`` variables selecting this server and ``bucket``."""
        return {
            "RUNLEDGER_S3_BUCKET": bucket,
            "RUNLEDGER_S3_ENDPOINT_URL": self.endpoint_url,
            "RUNLEDGER_S3_REGION": self.region,
            "RUNLEDGER_S3_PATH_STYLE": "true",
            "RUNLEDGER_S3_ACCESS_KEY_ID": self.access_key_id,
            "RUNLEDGER_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self) -> object:
        """A boto3 client of this server (what tests check S3 with, independently of runledger)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )


def _s3_answers(endpoint_url: str) -> bool:
    import httpx

    try:
        httpx.get(endpoint_url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server over HTTP: ``RUNLEDGER_TEST_S3_ENDPOINT_URL``, or moto's
    server started here on a free port (stopped at the end of the session)."""
    given = os.environ.get("RUNLEDGER_TEST_S3_ENDPOINT_URL")
    if given:
        if not _s3_answers(given):
            missing_server(f"the S3-compatible server at {given}")
        yield S3Server(given)
        return
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if binary is None:
        missing_server("moto_server (pip install 'moto[server]', in the test extras)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _s3_answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                missing_server(f"moto_server on port {port} ({log.read_text()[-2000:]})")
            time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture()
def s3_bucket() -> str:
    """A bucket name of its own for one test (created by the code under test)."""
    return f"rl-test-{uuid.uuid4().hex[:12]}"
