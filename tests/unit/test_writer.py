"""Group commit: concurrent requests are saved together, each gets its own outcome."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from domain import errors
from domain.base import EventMeta, content_sha256
from domain.ledger import Command, Ledger
from infra.writer import GroupCommitWriter

pytestmark = pytest.mark.unit


def command(session: str, event_id: str, action: str = "record_message", **args: Any) -> Command:
    if action == "record_message" and not args:
        args = {"role": "user", "message_kind": "prompt", "content": event_id}
    meta = EventMeta(event_id, content_sha256(event_id), datetime.now(UTC), "api")
    return Command("session", session, action, meta, args)


class CountingLedger(Ledger):
    """A real in-memory Ledger that records the size of each ``handle`` call."""

    def __init__(self) -> None:
        super().__init__({"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.calls: list[int] = []

    def handle(self, commands: Any) -> Any:
        self.calls.append(len(commands))
        return super().handle(commands)


def test_concurrent_requests_share_transactions_and_each_gets_its_own_outcomes() -> None:
    ledger = CountingLedger()
    writer = GroupCommitWriter(ledger)

    async def main() -> list[Any]:
        requests = [[command(f"s{i % 7}", f"e{i}-{j}") for j in range(3)] for i in range(200)]
        return await asyncio.gather(*(writer.submit(r) for r in requests))

    results = asyncio.run(main())
    writer.stop()
    assert all(len(r) == 3 for r in results)
    for i, outcomes in enumerate(results):
        assert [o.command.meta.event_id for o in outcomes] == [f"e{i}-{j}" for j in range(3)]
        assert all(o.status == "created" and o.position is not None for o in outcomes)
    assert sum(ledger.calls) == 600
    assert len(ledger.calls) < 200  # merged: fewer transactions than requests
    positions = [o.position for r in results for o in r]
    assert len(set(positions)) == 600


def test_a_refused_command_does_not_fail_the_other_requests_of_its_batch() -> None:
    ledger = CountingLedger()
    writer = GroupCommitWriter(ledger)

    async def main() -> list[Any]:
        good = [[command("s1", f"g{i}")] for i in range(20)]
        bad = [
            [
                Command(
                    "approval",
                    "nope",
                    "decide",
                    EventMeta("d", "x", datetime.now(UTC), "api"),
                    {"decision": "approved"},
                )
            ]
        ]
        return await asyncio.gather(*(writer.submit(r) for r in [*good[:10], *bad, *good[10:]]))

    results = asyncio.run(main())
    writer.stop()
    statuses = [r[0].status for r in results]
    assert statuses.count("created") == 20 and statuses.count("rejected") == 1
    assert isinstance(results[10][0].error, errors.ApprovalNotFoundError)


def test_an_unexpected_failure_is_confined_to_the_request_that_caused_it() -> None:
    class Exploding(CountingLedger):
        def handle(self, commands: Any) -> Any:
            if any(c.external_id == "boom" for c in commands):
                raise ValueError("boom")
            return super().handle(commands)

    writer = GroupCommitWriter(Exploding())

    async def main() -> list[Any]:
        requests = [[command("ok", f"a{i}")] for i in range(10)] + [[command("boom", "x")]]
        return await asyncio.gather(*(writer.submit(r) for r in requests), return_exceptions=True)

    results = asyncio.run(main())
    writer.stop()
    assert isinstance(results[-1], ValueError)
    assert all(r[0].status == "created" for r in results[:-1])


def test_submit_sync_waits_for_the_commit() -> None:
    ledger = CountingLedger()
    writer = GroupCommitWriter(ledger)
    [outcome] = writer.submit_sync([command("s", "e")])
    writer.stop()
    assert outcome.status == "created"
    assert len(ledger.history("session", "s")) == 2  # the implied status change and the message
