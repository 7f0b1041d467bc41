"""The pieces of ``serve``'s child projector: ``infra.supervise.ChildProcess`` (real child
processes), ``infra.wake.DatagramSignal`` (real Unix datagram sockets) and
``infra.wake.LocalSignal``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.supervise import ChildProcess
from infra.wake import DatagramSignal, LocalSignal, socket_path_for

pytestmark = pytest.mark.unit

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone too
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_child_that_dies_is_started_again_and_stop_ends_it_for_good() -> None:
    child = ChildProcess(SLEEPER, name="sleeper")
    child.start()
    try:
        wait_for(lambda: child.pid is not None)
        first = child.pid
        assert first is not None
        os.kill(first, 9)
        wait_for(lambda: child.pid not in (None, first))  # restarted after ~1 s
        assert child.starts == 2
        second = child.pid
        assert second is not None
    finally:
        code = child.stop(timeout_s=10)
    assert code == -15  # SIGTERM
    assert not alive(second)
    time.sleep(1.5)  # longer than the first restart pause: nothing comes back
    assert child.starts == 2 and child.pid is None


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)",
    ]
    child = ChildProcess(stubborn, name="stubborn")
    child.start()
    wait_for(lambda: child.pid is not None)
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    assert child.stop(timeout_s=1.0) == -9
    assert 0.9 <= time.monotonic() - started < 8


def test_a_command_that_cannot_start_is_tried_again_and_logged(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    child = ChildProcess([str(tmp_path / "no-such-program")], name="missing")
    with caplog.at_level("WARNING", logger="runledger.supervise"):
        child.start()
        wait_for(lambda: sum("could not start" in r.message for r in caplog.records) >= 2, 10)
        started = time.monotonic()
        assert child.stop(timeout_s=5) is None
    assert time.monotonic() - started < 5 and child.starts == 0 and child.pid is None


def test_a_notify_from_another_process_wakes_the_wait_at_once(tmp_path: Path) -> None:
    path = socket_path_for(tmp_path / "runledger.sqlite3")
    signal = DatagramSignal(path)
    try:
        started = time.monotonic()
        assert signal.wait(0.2) is False  # binds; nobody notifies: the whole timeout
        assert time.monotonic() - started >= 0.19
        sender = (
            "import sys, time; from pathlib import Path; from infra.wake import DatagramSignal; "
            "time.sleep(0.5); DatagramSignal(Path(sys.argv[1])).notify()"
        )
        proc = subprocess.Popen([sys.executable, "-c", sender, str(path)])
        started = time.monotonic()
        assert signal.wait(30) is True
        waited = time.monotonic() - started
        proc.wait(10)
        assert 0.3 <= waited < 5  # woken by the other process, not by the timeout
        # a burst is consumed by one wait
        for _ in range(5):
            signal.notify()
        assert signal.wait(1) is True
        started = time.monotonic()
        assert signal.wait(0.2) is False
        assert time.monotonic() - started >= 0.19
    finally:
        signal.close()
    assert not path.exists()


def test_interrupt_ends_a_wait_and_a_second_projector_takes_the_socket_over(
    tmp_path: Path,
) -> None:
    path = socket_path_for(tmp_path / "x.sqlite3")
    first, second = DatagramSignal(path), DatagramSignal(path)
    try:
        first.wait(0)
        timer = threading.Timer(0.3, first.interrupt)
        timer.start()
        started = time.monotonic()
        assert first.wait(30) is False  # interrupted: no commit woke it
        assert time.monotonic() - started < 5
        first.interrupt()  # before the wait: it returns at once
        started = time.monotonic()
        assert first.wait(30) is False
        assert time.monotonic() - started < 5
        second.wait(0)  # binds last: the path is its socket now
        first.close()  # leaves the other's socket alone
        assert path.exists()
        notifier = DatagramSignal(path)
        notifier.notify()
        started = time.monotonic()
        assert second.wait(30) is True
        assert time.monotonic() - started < 5
        notifier.close()
    finally:
        first.close()
        second.close()
    assert not path.exists()


def test_a_socket_that_cannot_be_bound_leaves_a_plain_poll(tmp_path: Path) -> None:
    signal = DatagramSignal(tmp_path / "missing-dir" / "x.wake")
    try:
        started = time.monotonic()
        assert signal.wait(0.2) is False
        assert 0.19 <= time.monotonic() - started < 5
        signal.notify()  # nobody there: no error
        assert signal.wait(0.05) is False  # nor anything to be woken by
    finally:
        signal.close()


def test_a_local_signal_says_whether_a_notify_ended_its_wait() -> None:
    signal = LocalSignal()
    started = time.monotonic()
    assert signal.wait(0.2) is False  # nobody notified: the whole timeout
    assert time.monotonic() - started >= 0.19
    threading.Timer(0.3, signal.notify).start()
    started = time.monotonic()
    assert signal.wait(30) is True
    assert 0.2 <= time.monotonic() - started < 5
    for _ in range(5):  # a burst is consumed by one wait
        signal.notify()
    assert signal.wait(1) is True
    assert signal.wait(0.05) is False


def test_an_interrupt_ends_a_local_signals_wait_as_no_commit() -> None:
    signal = LocalSignal()
    threading.Timer(0.3, signal.interrupt).start()
    started = time.monotonic()
    assert signal.wait(30) is False
    assert time.monotonic() - started < 5
    signal.interrupt()  # before the wait: it returns at once
    started = time.monotonic()
    assert signal.wait(30) is False
    assert time.monotonic() - started < 5
    signal.notify()  # the interrupt is spent: a notify wakes the next wait again
    assert signal.wait(1) is True


#: Calls ``yield_cpu`` for each argument in turn, then prints the niceness and the scheduling
#: group (``/proc/self/autogroup``, "-" where Linux has none) of the process as JSON.
YIELDER = (
    "import json, os, sys; from pathlib import Path; from infra.runtime import yield_cpu; "
    "returned = [yield_cpu(int(n)) for n in sys.argv[1:]]; "
    "group = Path('/proc/self/autogroup'); "
    "print(json.dumps({'returned': returned, 'nice': os.getpriority(os.PRIO_PROCESS, 0), "
    "'group': group.read_text().strip() if group.exists() else '-'}))"
)


def yielded(*nice: int, own_session: bool, inherited: int = 0) -> dict[str, object]:
    """``YIELDER``'s findings; ``inherited``: the niceness the child starts with."""
    done = subprocess.run(
        [sys.executable, "-c", YIELDER, *map(str, nice)],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
        preexec_fn=(lambda: os.nice(inherited)) if inherited else None,  # after setsid
        timeout=60,
    )
    return json.loads(done.stdout)


def own_group() -> str:
    group = Path("/proc/self/autogroup")
    return group.read_text().strip() if group.exists() else "-"


def test_yield_cpu_lowers_a_session_leaders_priority_and_its_groups() -> None:
    # serve's child projector leads a session of its own: where Linux groups sessions for
    # scheduling, the group's niceness is what orders it against the API and PostgreSQL
    assert os.getpriority(os.PRIO_PROCESS, 0) < 7
    found = yielded(7, own_session=True)
    assert found["returned"] == [7] and found["nice"] == 7
    if own_group() != "-":
        assert str(found["group"]).endswith(" nice 7"), found


def test_yield_cpu_lowers_a_new_sessions_group_even_when_the_niceness_was_inherited() -> None:
    # serve started niced: its child starts at that niceness in a group still at 0
    found = yielded(7, own_session=True, inherited=9)
    assert found["returned"] == [9] and found["nice"] == 9
    if own_group() != "-":
        assert str(found["group"]).endswith(" nice 7"), found


def test_yield_cpu_never_raises_a_priority_and_leaves_a_shared_group_alone() -> None:
    found = yielded(9, 3, 0, own_session=False)
    assert found["returned"] == [9, 9, 9] and found["nice"] == 9
    # the group is the test run's own (shared with its shell): untouched
    assert found["group"] == own_group()
