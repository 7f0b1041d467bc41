"""The projector's lock on SQLite (``SQLiteDatabase.advisory_lock``: ``flock`` on a sidecar file
per lock name) has the PostgreSQL advisory lock's semantics: a try fails while another holder
has it, a wait takes it once released or gives up after its timeout, a waiter goes before later
tries, it is held for the block and released after it, and a process that dies lets go of it.
The same projector scenario as ``test_a_second_projector_does_no_work_while_the_first_holds_the_lock``
on PostgreSQL (tests/integration/test_projections_postgres.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from domain.ledger import Ledger
from projections.db import SQLiteDatabase
from projections.runner import Projector
from tests.unit.test_projections import (
    Writer,
    check_idle_while_another_holds_the_lock,
    write_realistic,
)

pytestmark = pytest.mark.unit


@pytest.fixture()
def two_dbs(tmp_path: Path) -> tuple[SQLiteDatabase, SQLiteDatabase]:
    """Two ``SQLiteDatabase`` objects of one file, as two processes have."""
    path = tmp_path / "runledger.sqlite"
    return SQLiteDatabase(path), SQLiteDatabase(path)


def test_a_held_lock_is_refused_to_a_try_and_given_after_the_block(
    two_dbs: tuple[SQLiteDatabase, SQLiteDatabase],
) -> None:
    first, second = two_dbs
    with first.advisory_lock("projector") as held:
        assert held
        assert first.lock_path("projector").exists()  # next to the database file
        assert first.lock_path("projector").parent == first.path.parent
        with second.advisory_lock("projector") as taken:
            assert not taken
        with first.advisory_lock("projector") as again:  # a second holder in one process too
            assert not again
        with second.advisory_lock("projector:ddl") as other_name:
            assert other_name  # another name is another lock
        started = time.monotonic()
        with second.advisory_lock("projector", wait_s=0.3) as waited:
            assert not waited
        assert 0.25 < time.monotonic() - started < 5
    with second.advisory_lock("projector") as taken:
        assert taken


def test_a_waiter_takes_the_lock_once_released_and_goes_before_a_later_try(
    two_dbs: tuple[SQLiteDatabase, SQLiteDatabase],
) -> None:
    first, second = two_dbs
    got = threading.Event()
    waited: list[float] = []

    def wait_for_it() -> None:
        started = time.monotonic()
        with second.advisory_lock("projector", wait_s=30) as held:
            if held:
                waited.append(time.monotonic() - started)
                got.set()
                time.sleep(0.1)

    with first.advisory_lock("projector") as held:
        assert held
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not got.is_set()  # waiting
    # released: tries come back to back, as a busy projector's do, and the waiter goes first
    deadline = time.monotonic() + 10
    while not got.is_set() and time.monotonic() < deadline:
        with first.advisory_lock("projector") as tried:
            assert not tried, "a try took the lock from a waiter"
    waiter.join(10)
    assert got.is_set() and waited[0] >= 0.3


def test_the_lock_of_a_process_that_dies_is_released(
    two_dbs: tuple[SQLiteDatabase, SQLiteDatabase],
) -> None:
    first, _ = two_dbs
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from projections.db import SQLiteDatabase\n"
            "with SQLiteDatabase(sys.argv[1]).advisory_lock('projector') as held:\n"
            "    print(held, flush=True); time.sleep(120)",
            str(first.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with first.advisory_lock("projector") as taken:
            assert not taken
        holder.kill()
        holder.wait(10)
        with first.advisory_lock("projector", wait_s=5) as taken:
            assert taken
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_second_projector_does_no_work_while_the_first_holds_the_lock_on_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runledger.sqlite"
    ledger = Ledger({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})
    db, other_process = SQLiteDatabase(path), SQLiteDatabase(path)
    projector = Projector(ledger, db, lock_wait_s=0.3)
    projector.create_tables()
    write_realistic(Writer(ledger), lambda: None)
    try:
        check_idle_while_another_holds_the_lock(projector, other_process, caplog)
    finally:
        db.close()
        other_process.close()
