"""Group commit: one writer thread per process saves the commands of concurrent requests together.

Requests ``submit`` their commands and wait for their own outcomes. The writer takes whatever
has queued up while the previous transaction was committing (up to ``max_batch_commands``) and
runs it as one ``Ledger.handle`` call: one transaction, one table lock on PostgreSQL. There is no
batching timer: under light load a request is saved alone at once, under heavy load batches grow
by themselves (DESIGN.md §3: 100 aggregates per save reach ~10x the events/s of one).

A rule violation or an idempotency conflict is a per-command outcome and never fails the other
requests of a batch. If a merged batch fails as a whole for an unexpected reason, each request is
retried on its own, so only the culprit sees the error. A batch whose connection PostgreSQL
closed (a restart, a failover; ``infra.codec.connection_lost``) is saved once more, on a live
connection: what had committed before comes back ``duplicate``. Acknowledgement still means
committed.

Admission: a request is let in while fewer than ``max_pending_commands`` commands wait for the
writer (the transaction being saved included), whatever its size, so the writer holds at most
that many plus one request's. Otherwise it is refused at once with ``WriterOverloadedError`` (the
API answers 503 with ``Retry-After``) and nothing of it is appended: an overloaded process sheds
load instead of queueing without bound (memory, and waits past every client's timeout).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from domain.ledger import Command, Ledger, Outcome
from infra.codec import connection_lost

log = logging.getLogger("runledger.writer")


class WriterOverloadedError(RuntimeError):
    """The writer holds as many commands as it may take (``max_pending_commands``); the request
    was refused before anything of it was queued, so retrying it later is safe.

    Attributes:
        pending: commands waiting for the writer when the request came.
        limit: ``max_pending_commands``.
    """

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(
            f"{pending} events are waiting to be committed by this process and it takes at most "
            f"{limit}; nothing of this request was appended, retry later"
        )
        self.pending, self.limit = pending, limit
        self.fields = {"pending": pending, "limit": limit}


@dataclass
class _Request:
    commands: Sequence[Command]
    deliver: Any  # Callable[[list[Outcome] | BaseException], None]
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None
    #: Set when a ``submit_sync`` caller may read ``outcomes``/``error`` (None for async callers).
    done: threading.Event | None = None


class GroupCommitWriter:
    """The process's single writer.

    Args:
        ledger: the application whose ``handle`` saves each batch.
        max_batch_commands: most commands merged into one transaction.
        max_pending_commands: requests are let in while fewer commands than this wait for the
            writer, the transaction being saved included (None: no limit); see the module
            docstring.
        on_commit: each called after a transaction that appended events, before its
            requests are answered (``infra.wake``, ``api.tail``); more may be appended to
            ``self.on_commit``. They must not block or raise.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch_commands: int = 5000,
        max_pending_commands: int | None = None,
        on_commit: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.ledger = ledger
        self.max_batch_commands = max_batch_commands
        self.max_pending_commands = max_pending_commands
        #: Commands submitted and not yet answered (guarded by ``_pending_lock``).
        self.pending = 0
        self._pending_lock = threading.Lock()
        #: Requests refused by admission (``WriterOverloadedError``), for diagnostics.
        self.refused = 0
        self.on_commit = list(on_commit)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Batches saved and commands in them, for diagnostics and benchmarks.
        self.batches = 0
        self.commands = 0

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="runledger-writer", daemon=True
                )
                self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def check_admission(self) -> None:
        """Refuse a request before its body is even read when the writer holds
        ``max_pending_commands`` already (``submit`` checks again: others may have come in
        while the body was read).

        Raises:
            WriterOverloadedError: the writer is saturated.
        """
        with self._pending_lock:
            self._admit(0)

    async def submit(self, commands: Sequence[Command]) -> list[Outcome]:
        """Save ``commands`` with whatever else is pending; resolve when they are committed.

        Raises:
            WriterOverloadedError: admission refused (nothing queued).
            IntegrityError, OperationalError: the batch could not be committed.
        """
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()

        def deliver(result: list[Outcome] | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, future, result)

        self._enqueue(_Request(commands, deliver))
        return await future

    def submit_sync(self, commands: Sequence[Command]) -> list[Outcome]:
        """``submit`` for callers outside an event loop (blocks the calling thread); raises
        as ``submit``."""
        if not commands:
            return []
        done = threading.Event()
        request = _Request(commands, deliver=None, done=done)
        self._enqueue(request)
        done.wait()
        if request.error is not None:
            raise request.error
        assert request.outcomes is not None
        return request.outcomes

    def _enqueue(self, request: _Request) -> None:
        if self._thread is None:
            self.start()
        with self._pending_lock:
            self._admit(len(request.commands))
        self._queue.put(request)

    def _admit(self, size: int) -> None:
        """Count ``size`` more pending commands, or refuse them (the caller holds
        ``_pending_lock``).

        Raises:
            WriterOverloadedError: ``max_pending_commands`` commands are pending already.
        """
        limit = self.max_pending_commands
        if limit is not None and self.pending >= limit:
            self.refused += 1
            raise WriterOverloadedError(self.pending, limit)
        self.pending += size

    def _finish(self, request: _Request, result: list[Outcome] | BaseException) -> None:
        with self._pending_lock:
            self.pending -= len(request.commands)
        _deliver(request, result)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first.commands)
            stop = False
            while size < self.max_batch_commands:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                size += len(nxt.commands)
            self._save(batch)
            if stop:
                return

    def _save(self, batch: list[_Request], *, again: bool = False) -> None:
        commands = [c for request in batch for c in request.commands]
        try:
            outcomes = self.ledger.handle(commands)
        except (IntegrityError, OperationalError, InterfaceError) as error:
            if not again and connection_lost(error):
                # PostgreSQL closed the connection (a restart, a failover, a terminated
                # session); the datastore has replaced its dead connections. Once more: events
                # that did commit before the connection went are found as duplicates.
                log.warning("the store's connection was lost (%s); saving the batch again", error)
                self._save(batch, again=True)
                return
            for request in batch:
                self._finish(request, error)
            return
        except Exception as error:
            if len(batch) == 1:
                log.exception("write failed")
                self._finish(batch[0], error)
                return
            for request in batch:
                self._save([request])
            return
        self.batches += 1
        self.commands += len(commands)
        if self.on_commit and (again or any(o.status == "created" for o in outcomes)):
            for notify in self.on_commit:  # before answering: a reader told "created" finds
                notify()  # the projector and the live tails awake
        offset = 0
        for request in batch:
            self._finish(request, outcomes[offset : offset + len(request.commands)])
            offset += len(request.commands)


def _deliver(request: _Request, result: list[Outcome] | BaseException) -> None:
    if request.deliver is not None:
        request.deliver(result)
        return
    if isinstance(result, BaseException):
        request.error = result
    else:
        request.outcomes = result
    assert request.done is not None
    request.done.set()


def _settle(future: asyncio.Future[list[Outcome]], result: list[Outcome] | BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
