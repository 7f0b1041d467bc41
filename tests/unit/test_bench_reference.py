"""What a benchmark row rests on: ``bench.common.noop_server``, the reference server, runs as many
worker processes as the measured ``runledger serve`` (``BENCH_RUNLEDGER_WORKERS``), so a ratio
compares like with like; ``git_revision`` names the code measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from bench.common import _children, git_revision, noop_server, running, server_workers

pytestmark = pytest.mark.unit


def spawned_workers(pid: int) -> list[int]:
    """uvicorn's worker processes among ``pid``'s children (multiprocessing's spawn)."""
    return [
        child
        for child in _children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_the_noop_reference_runs_as_many_workers_as_runledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_RUNLEDGER_WORKERS", "2")
    assert server_workers() == 2
    with running(noop_server(tmp_path)) as (noop,):
        assert noop.process is not None
        assert len(spawned_workers(noop.process.pid)) == 2
        answer = httpx.post(
            f"{noop.url}/v1/events",
            json={"type": "chain.created", "chain_id": "c1"},
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json() == {}

    monkeypatch.delenv("BENCH_RUNLEDGER_WORKERS")
    assert server_workers() == 1  # serve's default
    with running(noop_server(tmp_path, name="noop-1")) as (noop,):
        assert noop.process is not None
        assert spawned_workers(noop.process.pid) == []


@pytest.mark.parametrize("given", ["0", "two", "-1"])
def test_a_bad_worker_count_stops_the_benchmark(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_RUNLEDGER_WORKERS", given)
    with pytest.raises(SystemExit, match="positive integer"):
        server_workers()


def test_the_revision_is_dirty_for_any_change_but_the_results_file(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "RESULTS.md").write_text("| rows |\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    sha = git_revision(tmp_path)
    assert len(sha) >= 7 and "+" not in sha
    (tmp_path / "bench" / "RESULTS.md").write_text("| rows |\n| a new row |\n")
    assert git_revision(tmp_path) == sha  # the benchmarks' own rows
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == sha + "+dirty"
