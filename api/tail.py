"""The log's head for the live tails of one API process (``GET /v1/log/tail``).

A tail that has sent everything waits for the log to grow. Each one used to read its page of the
log every 0.25 s: N listening clients cost 4N queries a second, and an event showed up to 0.25 s
after its commit. Now one ``LogHeadWatch`` per process reads the head for all of them, on a
thread of its own that runs while some tail waits:

- when a commit wakes it: on PostgreSQL, a ``LISTEN`` connection of its own on the log's channel,
  which every append of every process ``NOTIFY``s (``infra.wake.PostgresListener``); on SQLite,
  an ``infra.wake.LocalSignal`` that this process's group-commit writer notifies after each
  commit that appended;
- and every ``poll_s`` besides, for what nothing announces (on SQLite, commits of other
  processes; a lost notification).

Tails read the log only once the head moved past them (``wait_past``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from infra.runtime import Runtime
from infra.wake import LocalSignal, PostgresListener

log = logging.getLogger("runledger.tail")


class LogHeadWatch:
    """The log's head as tails of this process wait for it.

    Args:
        read_head: the log's highest position (``EventLog.head``; blocking, on the watch's
            thread).
        wake: what a commit wakes (``infra.wake``: a ``PostgresListener`` of the watch's own
            on the log's channel, or a ``LocalSignal`` the writer notifies); closed by
            ``close``.
        poll_s: longest time between two reads of the head while a tail waits, seconds.
    """

    def __init__(
        self,
        read_head: Callable[[], int],
        *,
        wake: PostgresListener | LocalSignal,
        poll_s: float = 1.0,
    ) -> None:
        self._read_head = read_head
        self._wake = wake
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.Future[bool], int] = {}
        self._head = -1
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False
        #: Reads of the head so far (for diagnostics and tests).
        self.reads = 0

    @property
    def running(self) -> bool:
        """Whether the watch's thread runs (it does while a tail waits, and ends after)."""
        with self._lock:
            return self._thread is not None

    async def wait_past(self, position: int, timeout_s: float) -> bool:
        """Wait until the log's head is past ``position``.

        Returns:
            ``True`` once the head is known to be past ``position``; ``False`` after
            ``timeout_s`` seconds without that (also after ``close``, and while the head cannot
            be read: the store is down).
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._head > position:
                return True
            if self._closed:
                return False
            self._waiters[future] = position
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="runledger-log-head", daemon=True
                )
                self._thread.start()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.pop(future, None)

    def close(self) -> None:
        """Stop the thread (within ``PostgresListener.SLICE_S`` or at once), release the
        waiters and close ``wake`` (a listener's connection)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            waiters = list(self._waiters)
        self._wake.interrupt()
        if thread is not None:
            thread.join(5.0)
        for future in waiters:
            _release(future, False)
        self._wake.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiters or self._closed:
                    self._thread = None
                    return
            head = self._read()
            with self._lock:
                self.reads += 1
                if head is not None and head > self._head:
                    self._head = head
                ready = [f for f, position in self._waiters.items() if self._head > position]
                for future in ready:
                    del self._waiters[future]
            for future in ready:
                _release(future, True)
            self._wake.wait(self.poll_s)  # a commit (one during the read too), or poll_s

    def _read(self) -> int | None:
        """The head, or ``None`` when it cannot be read (logged once per failing streak)."""
        try:
            head = self._read_head()
        except Exception as error:  # the store is down: tails wait on; their reads say so
            if not self._failing:
                log.warning("reading the log's head for live tails failed: %s", error)
            self._failing = True
            return None
        self._failing = False
        return head


def _release(future: asyncio.Future[bool], past: bool) -> None:
    """Resolve a waiter's future on its own event loop, from any thread."""

    def settle() -> None:
        if not future.done():  # not timed out meanwhile
            future.set_result(past)

    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
        future.get_loop().call_soon_threadsafe(settle)


def build_log_head_watch(runtime: Runtime) -> LogHeadWatch:
    """The ``LogHeadWatch`` of an API process: on PostgreSQL woken by a ``LISTEN`` connection
    of its own (opened when a tail first waits); on SQLite by ``runtime.writer`` after each
    commit. Polls every ``settings.tail_poll_interval_s``."""
    settings = runtime.settings
    wake: PostgresListener | LocalSignal
    if settings.database_url is not None:
        channel: str = runtime.ledger.recorder.channel_name  # type: ignore[attr-defined]
        wake = PostgresListener(settings.database_url, channel)
    else:
        wake = LocalSignal()
        runtime.writer.on_commit.append(wake.notify)
    return LogHeadWatch(runtime.log.head, wake=wake, poll_s=settings.tail_poll_interval_s)
