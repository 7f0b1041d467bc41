"""``runledger rebuild`` as real processes on a real SQLite file: with ``--jobs 2`` its spawned
workers and multiprocessing's resource tracker end with it, whether it is killed (``SIGKILL``)
or asked to stop (``SIGTERM``); next to a running ``runledger serve`` it has the projector lock
to itself, as on PostgreSQL (``SQLiteDatabase.advisory_lock``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import _cpu_s
from infra.runtime import build_runtime
from infra.settings import Settings
from tests.commands import message
from tests.servers import Server, base_env

pytestmark = pytest.mark.e2e

RUNLEDGER = str(Path(sys.executable).with_name("runledger"))
#: Events in the log: ``rebuild --all --jobs 2`` folds them for a few seconds on this machine.
EVENTS = 80_000


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time in clock ticks)`` of a process from ``/proc/<pid>/stat``
    (``proc(5)``); None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def children_of(pid: int) -> dict[int, int]:
    """``{child pid: start time}`` of the live processes whose parent is ``pid``."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found[int(entry.name)] = stat[2]
    return found


def running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie does not;
    a reused pid is another process)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The settings of a SQLite file holding ``EVENTS`` messages in 400 sessions, written
    through the ledger (its read models built: rebuilds start from a full set of rows)."""
    tmp_path = tmp_path_factory.mktemp("rebuild")
    env = base_env(tmp_path, RUNLEDGER_SNAPSHOT_INTERVAL="0", COLUMNS="200")
    runtime = build_runtime(Settings(data_dir=tmp_path / "var"), create_tables=True)
    try:
        batch = 2_000
        for b in range(EVENTS // batch):
            runtime.ledger.handle(
                [message(f"m{b}-{i}", f"s{i % 400}", {"b": b}) for i in range(batch)]
            )
        runtime.projector.run_once()
    finally:
        runtime.close()
    yield env


def rebuild_all(env: dict[str, str], *, jobs: int) -> subprocess.CompletedProcess[str]:
    """``runledger rebuild --all --jobs <jobs>`` to its end (5 minutes at most), output kept."""
    return subprocess.run(
        [RUNLEDGER, "rebuild", "--all", "--jobs", str(jobs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_rebuild_leaves_no_worker_process_behind(
    sqlite_env: dict[str, str], stop: signal.Signals, tmp_path: Path
) -> None:
    # Output to files: a worker left behind would hold a pipe open, and reading it would hang.
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        rebuild = subprocess.Popen(
            [RUNLEDGER, "rebuild", "--all", "--jobs", "2"],
            env=sqlite_env,
            stdout=out_file,
            stderr=err_file,
        )
    children: dict[int, int] = {}
    try:
        # two workers and the resource tracker, then give the workers time to start folding
        deadline = time.monotonic() + 60
        workers: dict[int, int] = {}
        while len(workers) < 2:
            assert rebuild.poll() is None, out_path.read_text() + err_path.read_text()
            assert time.monotonic() < deadline, "the rebuild never started its workers"
            children = children_of(rebuild.pid)
            workers = {p: s for p, s in children.items() if "spawn_main" in cmdline(p)}
            time.sleep(0.05)
        # Let them get going, then hold them where they are: on a fast hour they fold this file
        # in ~1.2 s after they appear, so a fixed pause raced their end. Stopped (SIGSTOP), they
        # are still running when the rebuild is stopped, and SIGCONT lets them act on it.
        while min(_cpu_s(p) for p in workers) < 0.3:
            assert time.monotonic() < deadline, "the workers never got going"
            time.sleep(0.02)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        children = children_of(rebuild.pid)
        assert set(workers) <= set(children)
        trackers = [p for p in children if "resource_tracker" in cmdline(p)]
        assert len(trackers) == 1, {p: cmdline(p) for p in children}
        assert rebuild.poll() is None, "the rebuild ended before it was stopped"
        rebuild.send_signal(stop)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        rebuild.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(running(p, s) for p, s in children.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p: cmdline(p) for p, s in children.items() if running(p, s)}
        assert left == {}, f"still running after the rebuild was stopped: {left}"
        out, err = out_path.read_text(), err_path.read_text()
        if stop == signal.SIGTERM:  # stopped, not killed: it says so and exits 128 + 15
            assert rebuild.returncode == 128 + signal.SIGTERM, out + err
            assert "rebuild stopped" in out + err
            assert "Traceback" not in err, err
        else:
            assert rebuild.returncode == -signal.SIGKILL
    finally:
        if rebuild.poll() is None:
            rebuild.kill()
            rebuild.wait()
        for pid, started in children.items():  # none left when the test passes
            if running(pid, started):
                os.kill(pid, signal.SIGKILL)
    # and the next rebuild finishes the work
    done = rebuild_all(sqlite_env, jobs=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"over {EVENTS} events" in done.stdout


def test_a_rebuild_next_to_a_serving_projector_folds_the_log_alone_and_counts_it_right(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    # serve's projector polls every 0.05 s: once the rebuild reset the positions to 0 it would
    # fold the log too, unless the rebuild's lock keeps it out (on SQLite it did not: the two
    # folded at once, and the rebuild counted only the events it folded itself)
    server = Server(env=dict(sqlite_env), log_path=tmp_path / "server.log").start()
    try:
        server.wait_projected()
        done = rebuild_all(sqlite_env, jobs=1)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"rebuilt all projections over {EVENTS} events" in done.stdout, done.stdout
        assert f"{EVENTS}/{EVENTS}" in done.stdout  # the last progress: the head, not past it
        server.wait_projected()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            listed = client.get("/v1/sessions", params={"limit": 500}).json()["items"]
        assert len(listed) == 400
        assert sum(row["message_count"] for row in listed) == EVENTS
    finally:
        server.stop()


def test_a_second_rebuild_waits_for_the_first_and_both_count_every_event(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    # Started together, each resets the read models and folds the whole log: on PostgreSQL the
    # second waits for the first's lock. On SQLite they folded at once, and the one whose
    # batches the other committed first counted only the rest.
    outputs = [tmp_path / "first.out", tmp_path / "second.out"]
    rebuilds = []
    for path in outputs:
        with path.open("wb") as out:
            rebuilds.append(
                subprocess.Popen(
                    [RUNLEDGER, "rebuild", "--all", "--jobs", "1"],
                    env=sqlite_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [rebuild.wait(timeout=300) for rebuild in rebuilds]
    finally:
        for rebuild in rebuilds:
            if rebuild.poll() is None:
                rebuild.kill()
                rebuild.wait()
    said = [path.read_text() for path in outputs]
    assert codes == [0, 0], said
    for text in said:
        assert f"rebuilt all projections over {EVENTS} events" in text, said
        assert f"{EVENTS}/{EVENTS}" in text, said
