"""``bench.common.noop_server``: the reference server runs as many worker processes as the
measured ``runledger serve`` (``BENCH_RUNLEDGER_WORKERS``), so a ratio compares like with like."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.common import _children, noop_server, running, server_workers

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
