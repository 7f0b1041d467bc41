"""What wakes the projector when the log grew, so that read models follow a commit in
milliseconds instead of a poll interval (``projections.runner.Wake``).

- ``CommitSignal``: in-process; the ``GroupCommitWriter`` of the same process calls ``notify``
  after each commit that appended events (SQLite: the projector in ``serve``).
- ``PostgresListener``: a connection of its own ``LISTEN``ing on the log's channel, on which every
  append sends ``NOTIFY`` (eventsourcing's recorder and runledger's append function both do), so
  commits of every process wake it (PostgreSQL: ``serve`` and ``runledger project``).

Either way the projector still polls every ``projector_poll_interval_s``: a lost wake-up (a broken
connection, another projector's lock) costs at most that long.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg.sql import SQL, Identifier

log = logging.getLogger("runledger.wake")


class CommitSignal:
    """Set by this process's writer after a commit, waited on by its projector."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def notify(self) -> None:
        """The log grew (called after the commit)."""
        self._event.set()

    def wait(self, timeout_s: float) -> None:
        """Return when ``notify`` (or ``interrupt``) was called since the last return, or after
        ``timeout_s``."""
        self._event.wait(timeout_s)
        self._event.clear()

    def interrupt(self) -> None:
        """End the current (or next) ``wait`` now (the projector is being stopped)."""
        self._event.set()

    def close(self) -> None:
        """Nothing to release."""


class PostgresListener:
    """``LISTEN`` on ``channel`` over a connection of its own (opened on first use, opened again
    after a failure).

    Args:
        url: the PostgreSQL URL (``RUNLEDGER_DATABASE_URL``).
        channel: the channel the log's appends notify: the recorder's ``channel_name`` (the events
            table's name; channels are per database, so projectors of other schemas of the same
            database wake too, and find nothing new).
    """

    #: Longest single wait on the socket, seconds (how soon ``interrupt`` is seen).
    SLICE_S = 0.25

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    def wait(self, timeout_s: float) -> None:
        """Return after a notification on the channel (all pending ones are consumed), after
        ``interrupt``, or after ``timeout_s``. A connection failure is logged and waited out."""
        deadline = time.monotonic() + timeout_s
        try:
            conn = self._connection()
            while not self._interrupted.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # in slices, so that ``interrupt`` is seen within one
                slice_s = min(remaining, self.SLICE_S)
                if any(True for _ in conn.notifies(timeout=slice_s, stop_after=1)):
                    break
            for _ in conn.notifies(timeout=0):  # the rest of a burst: one run covers them
                pass
        except psycopg.Error as error:
            log.warning("listening on %r failed (%s); polling until it works", self.channel, error)
            self.close()
            self._interrupted.wait(max(0.0, deadline - time.monotonic()))
        self._interrupted.clear()

    def interrupt(self) -> None:
        """End the current (or next) ``wait`` within ``SLICE_S`` (the projector is being stopped)."""
        self._interrupted.set()

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                conn.execute(SQL("LISTEN {}").format(Identifier(self.channel)))
                self._conn = conn
            return self._conn

    def close(self) -> None:
        """Close the connection (``wait`` opens a new one)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("closing the listening connection failed", exc_info=True)
