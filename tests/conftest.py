"""Shared fixtures: real servers are found, never faked.

``RUNLEDGER_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) names the
PostgreSQL the integration and e2e tests use; each test gets a schema of its own. Outside CI a
missing server skips those tests; under ``CI=true`` it fails them, saying what is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, make_server, sqlite_server

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
