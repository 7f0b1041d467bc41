"""Group commit: concurrent requests are saved together, each gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from domain import errors
from domain.base import EventMeta, content_sha256
from domain.ledger import Command, Ledger
from infra.writer import GroupCommitWriter, WriterOverloadedError

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
    assert writer.pending == 0  # a failed request leaves the admission count too


class GatedLedger(CountingLedger):
    """``handle`` waits until ``gate`` is set: the writer is busy with a transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def handle(self, commands: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        return super().handle(commands)


def test_a_saturated_writer_refuses_requests_whole_and_takes_them_again_once_drained() -> None:
    ledger = GatedLedger()
    writer = GroupCommitWriter(ledger, max_pending_commands=4)

    async def main() -> None:
        first = asyncio.ensure_future(writer.submit([command("s", f"a{i}") for i in range(3)]))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(ledger.entered.wait, 10)  # the writer holds it
        writer.check_admission()  # 3 < 4 wait: let in, whatever the request's size
        second = asyncio.ensure_future(writer.submit([command("s", "b0"), command("s", "b1")]))
        await asyncio.sleep(0)
        assert writer.pending == 5
        with pytest.raises(WriterOverloadedError) as refused:
            await writer.submit([command("s", "c0")])
        assert (refused.value.pending, refused.value.limit) == (5, 4)
        with pytest.raises(WriterOverloadedError):
            writer.check_admission()  # what the API asks before reading a body
        assert writer.pending == 5 and writer.refused == 2
        ledger.gate.set()
        outcomes = [*(await first), *(await second)]
        assert [o.status for o in outcomes] == ["created"] * 5
        assert writer.pending == 0
        writer.check_admission()  # drained: admitted again
        [again] = await writer.submit([command("s", "c0")])
        assert again.status == "created"

    asyncio.run(main())
    writer.stop()
    messages = [e for e in ledger.history("session", "s") if e.event_id.startswith("c")]
    assert len(messages) == 1  # the refused request appended nothing; its retry did


def test_a_request_larger_than_the_limit_is_taken_while_nothing_waits() -> None:
    ledger = GatedLedger()
    ledger.gate.set()
    writer = GroupCommitWriter(ledger, max_pending_commands=2)
    outcomes = writer.submit_sync([command("s", f"e{i}") for i in range(6)])
    writer.stop()
    assert [o.status for o in outcomes] == ["created"] * 6
    assert writer.pending == 0


def test_without_a_limit_nothing_is_refused() -> None:
    ledger = GatedLedger()
    writer = GroupCommitWriter(ledger)

    async def main() -> list[Any]:
        requests = [writer.submit([command("s", f"e{i}")]) for i in range(50)]
        tasks = [asyncio.ensure_future(r) for r in requests]
        await asyncio.sleep(0)
        writer.check_admission()
        ledger.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    writer.stop()
    assert all(r[0].status == "created" for r in results)


def test_submit_sync_waits_for_the_commit() -> None:
    ledger = CountingLedger()
    writer = GroupCommitWriter(ledger)
    [outcome] = writer.submit_sync([command("s", "e")])
    writer.stop()
    assert outcome.status == "created"
    assert len(ledger.history("session", "s")) == 2  # the implied status change and the message
