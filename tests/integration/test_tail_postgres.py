"""``api.tail.LogHeadWatch`` on a real PostgreSQL: an append's ``NOTIFY`` (from any process)
wakes the live tails of an API process at once."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from api.tail import LogHeadWatch
from infra.wake import PostgresListener

pytestmark = pytest.mark.integration


def test_a_notify_on_the_logs_channel_wakes_the_waiting_tails(
    postgres_url: str, pg_schema: str
) -> None:
    channel = f"{pg_schema}_tail_test"
    head = {"value": 7}
    watch = LogHeadWatch(
        lambda: head["value"], wake=PostgresListener(postgres_url, channel), poll_s=60.0
    )

    def another_process_appends() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while not conn.execute(  # the watch's connection LISTENs
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{channel}"',),
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the watch never listened"
                time.sleep(0.01)
            head["value"] = 8
            conn.execute(SQL("NOTIFY {}").format(Identifier(channel)))

    async def tails() -> tuple[list[bool], float]:
        started = time.monotonic()
        threading.Thread(target=another_process_appends).start()
        woken = await asyncio.gather(*(watch.wait_past(7, 30.0) for _ in range(3)))
        return list(woken), time.monotonic() - started

    try:
        woken, waited = asyncio.run(tails())
    finally:
        watch.close()
    assert woken == [True] * 3
    assert waited < 10  # the NOTIFY, not the 60 s poll nor the 30 s timeout
    assert watch.reads == 2  # the first read, and the one the NOTIFY caused
