"""What wakes the projector when the log grew, so that read models follow a commit in
milliseconds instead of a poll interval (``projections.runner.Wake``).

- ``DatagramSignal`` (SQLite, which has no ``NOTIFY``): the projector binds a Unix datagram
  socket named after the database file; every writer on the host (``serve``'s group-commit
  writer, in any process) sends it an empty datagram after each commit that appended events.
  So the projector of ``serve`` (in its thread, or in the child process ``serve`` starts) and
  ``runledger project`` are woken alike.
- ``PostgresListener``: a connection of its own ``LISTEN``ing on the log's channel, on which every
  append sends ``NOTIFY`` (eventsourcing's recorder and runledger's append function both do), so
  commits of every process wake it (PostgreSQL: ``serve`` and ``runledger project``).

``LocalSignal`` wakes a waiter in the same process only (the live tails' ``api.tail.LogHeadWatch``
on SQLite).

Either way the projector still polls every ``projector_poll_interval_s``: a lost wake-up (a broken
connection, a socket another projector took over) costs at most that long.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg.sql import SQL, Identifier

log = logging.getLogger("runledger.wake")


def socket_path_for(database: Path) -> Path:
    """Where ``DatagramSignal`` binds for an SQLite file: ``<tmp>/runledger-<sha256 of the
    file's absolute path, 16 hex>.wake`` (short: a Unix socket's path is limited to 107 bytes).
    """
    digest = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"runledger-{digest}.wake"


class DatagramSignal:
    """A wake-up shared by the processes of one host: ``notify`` from any of them, ``wait`` in
    the projector's.

    The first ``wait`` binds the socket at ``path`` (replacing a stale one: the last projector
    to start is the one woken; another one falls back to its poll interval). A failed bind is
    logged once, and ``wait`` then only sleeps.

    Args:
        path: the socket's path (``socket_path_for(settings.sqlite_path)``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        # the bound socket and its poll(2) (no FD_SETSIZE limit, unlike select(2))
        self._receiver: tuple[socket.socket, select.poll] | None = None
        self._inode: int | None = None
        self._bind_failed = False
        self._interrupted = threading.Event()
        self._lock = threading.Lock()

    def notify(self) -> None:
        """The log grew: wake the projector bound to ``path``, if any (never blocks, never
        raises: with none listening, or its queue full, there is nobody to wake or it will run
        anyway)."""
        with contextlib.suppress(OSError):
            self._sender.sendto(b"", str(self.path))

    def wait(self, timeout_s: float) -> bool:
        """Return after a ``notify`` (all pending ones are consumed): True; after ``interrupt``
        or after ``timeout_s``: False (always False where the socket could not be bound: it
        then only sleeps)."""
        bound = self._bound()
        woken = False
        if bound is None:
            self._interrupted.wait(timeout_s)
        elif not self._interrupted.is_set():
            receiver, poller = bound
            if poller.poll(max(0, int(timeout_s * 1000))):
                woken = not self._interrupted.is_set()  # ``interrupt`` sends a datagram too
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while True:  # the rest of a burst: one run covers them
                        receiver.recv(64)
        self._interrupted.clear()
        return woken

    def interrupt(self) -> None:
        """End the current (or next) ``wait`` now (the projector is being stopped)."""
        self._interrupted.set()
        self.notify()

    def _bound(self) -> tuple[socket.socket, select.poll] | None:
        with self._lock:
            if self._receiver is None and not self._bind_failed:
                receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                receiver.setblocking(False)
                try:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    receiver.bind(str(self.path))
                except OSError as error:
                    receiver.close()
                    self._bind_failed = True
                    log.warning(
                        "cannot bind %s (%s): the projector polls instead", self.path, error
                    )
                    return None
                poller = select.poll()
                poller.register(receiver, select.POLLIN)
                self._receiver, self._inode = (receiver, poller), os.stat(self.path).st_ino
            return self._receiver

    def close(self) -> None:
        """Close the sockets; remove the bound one's path unless another projector took it."""
        self._sender.close()
        with self._lock:
            bound, self._receiver = self._receiver, None
        if bound is None:
            return
        bound[0].close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()


class LocalSignal:
    """A wake-up within one process: ``notify`` from any thread (the group-commit writer, after
    a commit), ``wait`` on one (``api.tail.LogHeadWatch`` on SQLite, where ``DatagramSignal``'s
    one socket belongs to the projector). Commits of other processes are not seen: the waiter's
    poll covers them."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interrupted = threading.Event()

    def notify(self) -> None:
        """The log grew: end the current (or next) ``wait``. Never blocks, never raises."""
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        """Return after a ``notify`` (all pending ones are consumed): True; after ``interrupt``
        or after ``timeout_s``: False."""
        woken = self._event.wait(timeout_s) and not self._interrupted.is_set()
        self._event.clear()
        self._interrupted.clear()
        return woken

    def interrupt(self) -> None:
        """End the current (or next) ``wait`` now (``PostgresListener``'s interface)."""
        self._interrupted.set()
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

    def wait(self, timeout_s: float) -> bool:
        """Return after a notification on the channel (all pending ones are consumed): True;
        after ``interrupt`` or after ``timeout_s``: False. A connection failure is logged and
        waited out (False)."""
        deadline = time.monotonic() + timeout_s
        woken = False
        try:
            conn = self._connection()
            while not self._interrupted.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # in slices, so that ``interrupt`` is seen within one
                slice_s = min(remaining, self.SLICE_S)
                if any(True for _ in conn.notifies(timeout=slice_s, stop_after=1)):
                    woken = True
                    break
            for _ in conn.notifies(timeout=0):  # the rest of a burst: one run covers them
                pass
        except psycopg.Error as error:
            log.warning("listening on %r failed (%s); polling until it works", self.channel, error)
            self.close()
            self._interrupted.wait(max(0.0, deadline - time.monotonic()))
        self._interrupted.clear()
        return woken

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
