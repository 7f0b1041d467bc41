"""A child process kept running beside ``runledger serve``: the projector of
``RUNLEDGER_PROJECTOR=process`` (the default), with an interpreter, and so an interpreter lock, of
its own instead of a thread competing with the API for one.

The child runs in a session of its own (a terminal's Ctrl-C reaches ``serve``, which stops it
with ``SIGTERM``), watches its parent (``runledger project --parent-pid``: it stops when
``serve`` is gone, even after a ``SIGKILL``), and is started again after it exits on its own
(after 1, 2, 4 ... at most ``max_backoff_s`` seconds; back to 1 s once a run lasted a minute).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("runledger.supervise")

#: A child that ran this long before exiting is restarted after the shortest pause again.
STABLE_RUN_S = 60.0


def projector_command(parent_pid: int | None = None) -> list[str]:
    """``runledger project`` with this interpreter, stopping when ``parent_pid`` (default: this
    process) is gone."""
    pid = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-m", "api.cli", "project", "--parent-pid", str(pid)]


class ChildProcess:
    """Keeps ``argv`` running until ``stop``.

    Args:
        argv: the command.
        env: its environment (default: this process's).
        name: what the log calls it.
        max_backoff_s: longest pause before a restart, seconds.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        name: str = "projector",
        max_backoff_s: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.name = name
        self.max_backoff_s = max_backoff_s
        #: How many times the child was started.
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between runs)."""
        with self._lock:
            process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the child and the thread that restarts it."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._keep_running, name=f"runledger-{self.name}-supervisor", daemon=True
        )
        self._thread.start()

    def _keep_running(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                started = time.monotonic()
                process: subprocess.Popen[bytes] | None = None
                try:
                    process = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
                    self.starts += 1
                except OSError as error:
                    outcome = f"could not start ({error})"
                self._process = process
            if process is not None:
                outcome = f"exited (code {process.wait()})"
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= STABLE_RUN_S:
                backoff = 1.0
            log.warning(
                "the %s process %s; starting it again in %.0f s", self.name, outcome, backoff
            )
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Stop the child (``SIGTERM``, then ``SIGKILL`` after ``timeout_s``) and stop restarting
        it.

        Returns:
            The child's exit code (None when none was running).
        """
        self._stopping.set()
        with self._lock:
            process = self._process
        code = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the %s process ignored SIGTERM for %.0f s; killing it", self.name, timeout_s
                )
                process.kill()
                code = process.wait()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        return code
