"""Composition root: builds the ledger, the view database, the projector and the blob store from
``Settings``. Nothing is built at import time; the API's lifespan and the CLI call ``build_runtime``.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.ledger import Ledger
from infra.blobs import BlobStore, LocalBlobStore, S3BlobStore, s3_client
from infra.database import PostgresDatabase
from infra.settings import Settings
from infra.store import EventLog, build_ledger, migration_lock
from infra.wake import DatagramSignal, PostgresListener, socket_path_for
from infra.writer import GroupCommitWriter
from projections.db import Database, SQLiteDatabase
from projections.runner import PART_POLL_S, Projector, RunParts
from projections.views import Views

log = logging.getLogger("runledger")


@dataclass
class Runtime:
    """Everything a process of runledger works with."""

    settings: Settings
    ledger: Ledger
    log: EventLog
    db: Database
    views: Views
    projector: Projector
    blobs: BlobStore
    writer: GroupCommitWriter
    #: Wakes the projector when the log grew (``infra.wake``).
    wake: DatagramSignal | PostgresListener
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def run_projector(self, stop: threading.Event) -> None:
        """Run the projector until ``stop`` is set (``Projector.run_forever`` with this
        runtime's wake-up and the ``projector_*`` settings): on this thread for
        ``runledger project``, on a thread of its own for ``start_projector``."""
        self.projector.run_forever(
            stop,
            poll_interval_s=self.settings.projector_poll_interval_s,
            wake=self.wake,
            min_interval_s=self.settings.projector_min_interval_s,
            bulk_rate=self.settings.projector_bulk_rate,
            bulk_max_delay_s=self.settings.projector_bulk_max_delay_s,
        )

    def start_projector(self) -> None:
        """Run the projector in a background thread of this process (``projector=inprocess``)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_projector, args=(self._stop,), name="runledger-projector", daemon=True
        )
        self._thread.start()

    def stop_projector(self, timeout_s: float = 10.0) -> None:
        """Stop the background projector, letting its current page finish."""
        if self._thread is None:
            return
        self._stop.set()
        self.wake.interrupt()
        self._thread.join(timeout_s)
        self._thread = None

    def close(self) -> None:
        """Stop the writer (after what it holds is saved) and the projector; close connections."""
        self.writer.stop()
        self.stop_projector()
        self.projector.close()
        self.wake.close()
        self.ledger.close()
        closer: Any = getattr(self.db, "close", None)
        if callable(closer):
            closer()


def build_database(settings: Settings) -> Database:
    """The view database: the SQLite file of the log, or the PostgreSQL database of the log."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return SQLiteDatabase(settings.sqlite_path)
    return PostgresDatabase(settings.database_url, schema=settings.database_schema)


def build_projector(settings: Settings, ledger: Ledger, db: Database) -> Projector:
    """The projector of ``ledger``'s log into ``db``, sized by the ``projector_*`` settings."""
    return Projector(
        ledger,
        db,
        page_size=settings.projector_page_size,
        keep_rows=settings.projector_keep_rows,
    )


def build_blob_store(settings: Settings, *, create: bool, check: bool = True) -> BlobStore:
    """S3 when ``settings.s3_bucket`` is set (the bucket checked, and created when missing and
    ``create``; neither when not ``check``), else the local blob directory.

    Raises:
        RuntimeError: (``check``) the S3 bucket is missing (and not ``create``), not accessible,
            not reachable, or could not be created.
    """
    if settings.s3_bucket is None:
        return LocalBlobStore(settings.blob_path)
    secret = settings.s3_secret_access_key
    store = S3BlobStore(
        s3_client(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
        ),
        settings.s3_bucket,
        settings.s3_prefix,
    )
    if check:
        store.ensure_bucket(create=create)
    return store


def tune_gc(young_threshold: int) -> None:
    """Set the process's garbage collector thresholds to ``(young_threshold, 20, 100)`` (0: leave
    them). With Python's default of 700, a rebuild of a million events (its row cache holds up to
    200,000 rows) made ~50 full collections, each walking the whole heap, and ran at 0.80-0.86 x
    the speed it has with 10,000 (2 full collections; SQLite, ``bench.rebuild``'s log). The older
    generations' 20 and 100 (Python's: 10 and 10) make full collections rarer still: in the API
    process they showed in the state reads' p99. The default young threshold, 100,000 (was
    10,000), spares the ingest path walking a batch in flight again and again: 4-5 % less CPU
    in process (``settings.gc_young_threshold``)."""
    if young_threshold:
        gc.set_threshold(young_threshold, 20, 100)


def yield_cpu(nice: int) -> int:
    """Lower this process's CPU priority to the niceness ``nice`` (0-19; a higher value already
    set is kept, nothing is ever raised), so that under CPU contention the scheduler runs the API
    and PostgreSQL first; idle CPU still goes to this process. For the projector
    (``RUNLEDGER_PROJECTOR_NICE``): the write path's acknowledgements come first, the read models
    trail further under a saturating load and catch up after it.

    Call it on the main thread before any other thread starts: on Linux the niceness is a
    thread's (``setpriority(2)``), inherited by the threads it creates. Where Linux groups a
    session's processes for scheduling (``/proc/sys/kernel/sched_autogroup_enabled``; see
    ``sched(7)``, "The autogroup feature"), niceness only orders the processes of one group; a
    session leader (``serve``'s projector child runs in a session of its own) therefore lowers
    its group's priority as well (``/proc/self/autogroup``), whatever niceness it inherited. A
    process that does not lead its session (``runledger project`` typed into a shell) leaves the
    group, which it shares with the shell, alone.

    Returns:
        The process's niceness now in force (``os.getpriority``). An ``OSError`` from
        ``setpriority`` or from ``/proc`` is logged, not raised.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as error:
            log.warning("could not set the niceness to %d: %s", nice, error)
    if os.getsid(0) == os.getpid():
        _yield_group(nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _yield_group(nice: int) -> None:
    """Raise this session's autogroup niceness to ``nice`` (never lower it): ``/proc/self/autogroup``
    reads ``/autogroup-<id> nice <n>``; a kernel without autogroups has no such file."""
    autogroup = Path("/proc/self/autogroup")
    try:
        group_nice = int(autogroup.read_text().split()[-1])
        if nice > group_nice:
            autogroup.write_text(f"{nice}\n")
    except FileNotFoundError:
        return
    except (OSError, ValueError, IndexError) as error:
        log.warning("could not set the scheduling group's niceness to %d: %s", nice, error)


def build_runtime(
    settings: Settings, *, create_tables: bool | None = None, blobs_used: bool = True
) -> Runtime:
    """Wire a runtime. Tables are created under the migration lock when ``create_tables``
    (default: ``settings.create_tables``). Sets the process's garbage collector thresholds
    (``settings.gc_young_threshold``, see ``tune_gc``).

    ``blobs_used=False`` is for processes that never read or write a blob (the projector,
    ``rebuild``, ``status``): the S3 bucket is then neither checked nor created, so a missing
    bucket or S3 being down does not stop them, and a bucket an operator removed is not made
    again behind the API's back.

    On PostgreSQL the configured schema is created first when missing (``create_tables``), or
    checked (otherwise: ``infra.store.prepare_schema``).

    Raises:
        RuntimeError: (``blobs_used``) the blob store is not usable (``build_blob_store``).
        SchemaMissingError: not ``create_tables``, and the configured PostgreSQL schema is
            missing.
    """
    tune_gc(settings.gc_young_threshold)
    create = settings.create_tables if create_tables is None else create_tables
    # first: nothing to close if S3 fails
    blobs = build_blob_store(settings, create=create, check=blobs_used)
    with migration_lock(settings) if create else nullcontext():
        ledger, event_log = build_ledger(settings, create_table=create)
        db = build_database(settings)
        projector = build_projector(settings, ledger, db)
        if create:
            projector.create_tables()
    # PostgreSQL: every process's appends NOTIFY the log's channel. SQLite: every writer on the
    # host sends the file's projector a datagram.
    wake: DatagramSignal | PostgresListener
    if settings.database_url is not None:
        wake = PostgresListener(settings.database_url, ledger.recorder.channel_name)  # type: ignore[attr-defined]
    else:
        wake = DatagramSignal(socket_path_for(settings.sqlite_path))
    return Runtime(
        settings=settings,
        ledger=ledger,
        log=event_log,
        db=db,
        views=Views(db),
        projector=projector,
        blobs=blobs,
        writer=GroupCommitWriter(
            ledger,
            max_batch_commands=settings.max_group_commit_commands,
            max_pending_commands=settings.max_pending_events or None,
            on_commit=[wake.notify] if isinstance(wake, DatagramSignal) else [],
        ),
        wake=wake,
    )


def process_parts(settings: Settings) -> RunParts:
    """``RunParts`` folding each part of a rebuild in a process of its own (``spawn``: a fresh
    interpreter, which builds its own ledger and view database from ``settings``), so that a
    rebuild uses more than one core: ``Projector.rebuild(jobs=N, run_parts=...)``,
    ``runledger rebuild --jobs N``.

    The workers end with the process that runs the parts: killed with it when it dies, however
    it dies (``die_with_parent``), and stopped when the wait for them is interrupted (an
    exception in the calling thread, e.g. ``SystemExit`` from a ``SIGTERM`` handler, or
    ``KeyboardInterrupt``: ``SIGTERM`` to each, ``SIGKILL`` after ``PART_STOP_GRACE_S``), before
    that exception goes on. A stopped part's projections keep the positions they committed (a
    batch and its tracking position commit together), and the next run goes on from there.
    Call it on a thread that lives as long as the workers (it does: it returns only after they
    ended); ``PR_SET_PDEATHSIG`` fires when the thread that started them exits.

    Measured with ``bench.rebuild`` (SQLite and PostgreSQL, 2 cores): see README's table.
    """

    def run(parts: list[list[str]], tick: Callable[[], None]) -> list[int]:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=len(parts),
            mp_context=context,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            try:
                futures = [pool.submit(fold_part, settings, part) for part in parts]
                pending = set(futures)
                while pending:
                    _, pending = wait(pending, timeout=PART_POLL_S, return_when=FIRST_EXCEPTION)
                    tick()
            except BaseException:
                _stop_workers(pool)
                raise
            return [future.result() for future in futures]

    return run


#: How long the workers of an interrupted rebuild get to exit after ``SIGTERM``, seconds.
PART_STOP_GRACE_S = 5.0
#: ``prctl(2)``'s option setting the signal a process gets when its parent exits (Linux).
_PR_SET_PDEATHSIG = 1
#: How often ``watch_parent`` checks that the parent is still there, seconds.
PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process (a rebuild's worker, whose parent is ``parent_pid``) end when its
    parent does: the initializer of ``process_parts``'s workers.

    On Linux the kernel sends it ``SIGKILL`` when the parent exits, however the parent ends
    (``prctl(PR_SET_PDEATHSIG)``, through ctypes); then it checks that its parent is still
    ``parent_pid``, as the parent may have died before the signal was armed (a process whose
    parent died is re-parented, and ``getppid`` changes). Chosen over a thread polling
    ``getppid``: no polling delay, nothing running in the worker, and it acts even while the
    worker's interpreter is busy. ``SIGKILL``, because the parent is gone and nothing is left to
    hand a result to; what the worker had not committed is rolled back by the database (a batch
    and its tracking position commit together). Elsewhere (no ``prctl``), ``watch_parent``
    ends the process once its parent changed.
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        watch_parent(parent_pid, lambda: os._exit(1))
    if os.getppid() != parent_pid:
        os._exit(1)


def _set_parent_death_signal(signum: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)``; whether it was set (False: not Linux, or failed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(done == 0)


def watch_parent(
    parent_pid: int, gone: Callable[[], None], stop: threading.Event | None = None
) -> threading.Thread:
    """Start a daemon thread that calls ``gone`` once ``parent_pid`` is no longer this process's
    parent (it exited: the process was re-parented), checking every ``PARENT_POLL_S`` seconds;
    it ends without calling it once ``stop`` is set. Used by ``runledger project --parent-pid``
    (``serve``'s projector child) and by rebuild workers where ``prctl`` is missing."""
    never = threading.Event()

    def watch() -> None:
        while not (stop or never).wait(PARENT_POLL_S):
            if os.getppid() != parent_pid:
                gone()
                return

    thread = threading.Thread(target=watch, name="runledger-parent-watch", daemon=True)
    thread.start()
    return thread


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """``SIGTERM`` to each of ``pool``'s worker processes, ``SIGKILL`` to those still running
    ``PART_STOP_GRACE_S`` seconds later; returns once all have exited. The executor then finds
    its workers gone and fails their futures (``BrokenProcessPool``), so its shutdown does not
    wait for parts to finish. Python before 3.14 (``terminate_workers``) has no public way to
    reach an executor's workers: this reads its ``_processes`` (pid -> ``Process``)."""
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + PART_STOP_GRACE_S
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0))
        if process.is_alive():
            process.kill()
            process.join()


def fold_part(settings: Settings, names: list[str]) -> int:
    """One part of a rebuild, in the process that runs it: catch the named projections up to
    the head of the log (``Projector.catch_up``; the rebuilding process holds the lock).

    Returns:
        The number of notifications folded.
    """
    tune_gc(settings.gc_young_threshold)
    ledger, _ = build_ledger(settings, create_table=False)
    db = build_database(settings)
    projector = build_projector(settings, ledger, db)
    try:
        return projector.catch_up(names)
    finally:
        projector.close()
        db.close()
        ledger.close()
