"""Benchmark 5, ``stream_state``: a 10,000-event stream's state at a random version.

Set-up (timed and printed): one session stream of 10,000 events (tool calls started/ended with
realistic inputs and outputs, messages, scafld evidence) appended through ``Ledger.handle`` in
batches of 500 on PostgreSQL (fresh schema), snapshots every 100 events (the default
``snapshot_interval``).

Measured: p50 and p99 latency (ms) over random versions (200 per round; ``--quick`` 50), the
same versions in every round and way:

- direct: ``Ledger.load("session", id, version=v)`` on a ledger built by
  ``infra.store.build_ledger`` with snapshots;
- HTTP: ``GET /v1/streams/session/{id}/state?version=v`` against ``runledger serve`` (one
  request at a time over a keep-alive connection; each answer must be 200 with that version);
- as of a time, direct and HTTP: the same, addressed by the ``recorded_at`` of event ``v``
  (``Ledger.version_as_of`` then ``Ledger.load``; ``?as_of=``), the version reached checked
  against the stream's own timestamps;
- a writer's batch to the stream when it is not in the write cache (``write_cache_streams=0``:
  every batch loads it): ``Ledger.handle`` of event ``v`` sent again (a duplicate, answered with
  version ``v``) and one new message. The stream is restored from its newest snapshot and the
  key index is asked about the two event ids (bounded writer loads). Each batch appends one
  event, so the stream grows by the number of batches.

Reference: the same loads with snapshots disabled (``snapshot_interval=0``: a ledger without
snapshotting; a second server with ``RUNLEDGER_SNAPSHOT_INTERVAL=0`` and the projector off), and
for the writer the same batches replaying the stream whole (``writer_replay_events`` above its
length: what every writer did before the key index), on
the first 60 of the versions per round (``--quick`` 20): without snapshots a load replays up to
10,000 events, so the reference is sampled less. Rounds interleave measured and reference.

Target: p99 <= 10 ms (the loads of a state; the writer's batch has none).

Run: ``python -m bench.stream_state [--quick] [--rounds N] [--events N] [--loads N]``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Measurement,
    banner,
    fmt,
    fresh_schema,
    median,
    parse_args,
    percentile,
    report,
    runledger_server,
    running,
    unwind_on_sigterm,
    wait_projected,
)
from bench.workload import long_session, to_commands
from domain.ledger import Ledger
from infra.settings import Settings
from infra.store import build_ledger

TARGET_P99_MS = 10.0
SNAPSHOT_INTERVAL = 100
POPULATE_BATCH = 500


def populate(settings: Settings, session_id: str, events: int) -> float:
    """Append the long session through the Ledger (snapshots as ``settings`` say). Returns seconds.

    Raises:
        RuntimeError: a command was not created, or the stream has another length.
    """
    ledger, _ = build_ledger(settings, create_table=True)
    try:
        typed = long_session(session_id, events)
        started = time.perf_counter()
        for start in range(0, len(typed), POPULATE_BATCH):
            outcomes = ledger.handle(to_commands(typed[start : start + POPULATE_BATCH]))
            bad = [o for o in outcomes if o.status != "created"]
            if bad:
                raise RuntimeError(f"{len(bad)} commands not created; first: {bad[0]}")
        seconds = time.perf_counter() - started
        version = ledger.load("session", session_id).version
    finally:
        ledger.close()
    if version != events:
        raise RuntimeError(f"the stream has {version} events, expected {events}")
    return seconds


def writer_loader(ledger: Ledger, typed: list[dict[str, Any]], tag: str) -> Callable[[int], None]:
    """``write(v)``: ``ledger.handle`` of event ``v`` of ``typed`` sent again and one new message.

    Raises:
        RuntimeError: the resent event is not a duplicate of version ``v``, or the message was
            not created.
    """
    session_id = typed[0]["session_id"]
    sent = itertools.count()

    def write(version: int) -> None:
        message = {
            "type": "session.message_recorded",
            "session_id": session_id,
            "event_id": f"{tag}-{next(sent)}",
            "role": "assistant",
            "content": "a new message",
        }
        again, new = ledger.handle(to_commands([typed[version - 1], message]))
        if (again.status, again.version, new.status) != ("duplicate", version, "created"):
            raise RuntimeError(f"unexpected outcomes: {again} / {new}")

    return write


def timed_ms(load: Callable[[int], None], versions: list[int]) -> list[float]:
    """Latency of ``load(v)`` for each version, in ms."""
    latencies = []
    for version in versions:
        started = time.perf_counter()
        load(version)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def direct_loader(ledger: Ledger, session_id: str) -> Callable[[int], None]:
    """``Ledger.load`` at a version, checking the version reached."""

    def load(version: int) -> None:
        state = ledger.load("session", session_id, version=version)
        if state.version != version:
            raise RuntimeError(f"loaded version {state.version}, asked for {version}")

    return load


def http_loader(client: httpx.Client, url: str, session_id: str) -> Callable[[int], None]:
    """``GET .../state?version=v``, checking status and version."""

    def load(version: int) -> None:
        response = client.get(
            f"{url}/v1/streams/session/{session_id}/state", params={"version": version}
        )
        if response.status_code != 200 or response.json()["version"] != version:
            raise RuntimeError(f"state at {version}: {response.status_code} {response.text[:300]}")

    return load


def as_of_loaders(
    ledger: Ledger, client: httpx.Client, url: str, session_id: str, stamps: list[datetime]
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """Loaders of the state *as of a time*: for version ``v``, the ``recorded_at`` of event ``v``
    (``stamps[v - 1]``; ``Ledger.version_as_of`` + ``Ledger.load``, and
    ``GET .../state?as_of=``), each checking the version reached against the stream's own
    timestamps (the last version recorded by then)."""
    last_at: dict[datetime, int] = {}
    for version, stamp in enumerate(stamps, start=1):
        last_at[stamp] = version  # ties: the last version recorded at that instant

    def direct(version: int) -> None:
        expected = last_at[stamps[version - 1]]
        found = ledger.version_as_of("session", session_id, stamps[version - 1])
        state = ledger.load("session", session_id, version=found)
        if found != expected or state.version != expected:
            raise RuntimeError(f"as of event {version}'s time: {found}, expected {expected}")

    def http(version: int) -> None:
        expected = last_at[stamps[version - 1]]
        response = client.get(
            f"{url}/v1/streams/session/{session_id}/state",
            params={"as_of": stamps[version - 1].isoformat()},
        )
        if response.status_code != 200 or response.json()["version"] != expected:
            raise RuntimeError(
                f"as of event {version}: {response.status_code} {response.text[:300]}"
            )

    return direct, http


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=10_000, help="stream length (10,000)")
    parser.add_argument(
        "--loads", type=int, default=None, help="random versions per round (200; quick 50)"
    )


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=3, quick_rounds=2, add=_options)
    unwind_on_sigterm()
    loads = args.loads or (50 if args.quick else 200)
    reference_loads = 20 if args.quick else 60
    banner(
        "stream_state: state of a 10,000-event stream at a random version, PostgreSQL",
        rounds=args.rounds,
        stream_events=f"{args.events:,}",
        versions_per_round=f"{loads} (reference: the first {reference_loads})",
        reference="the same loads with snapshot_interval=0",
    )
    session_id = f"long-{uuid.uuid4().hex[:8]}"
    versions = random.Random(17).choices(range(1, args.events + 1), k=loads)
    stats: dict[str, list[tuple[float, float]]] = {}

    def record(way: str, latencies: list[float]) -> None:
        stats.setdefault(way, []).append((percentile(latencies, 0.5), percentile(latencies, 0.99)))

    with (
        tempfile.TemporaryDirectory(prefix="bench-state-") as tmp,
        fresh_schema(args.database_url, "state") as schema,
    ):
        workdir = Path(tmp)

        def settings(interval: int, **more: Any) -> Settings:
            return Settings(
                database_url=args.database_url,
                database_schema=schema,
                data_dir=workdir / "var",
                snapshot_interval=interval,
                **more,
            )

        seconds = populate(settings(SNAPSHOT_INTERVAL), session_id, args.events)
        print(
            f"   populated {args.events:,} events in {seconds:.1f} s (snapshots every {SNAPSHOT_INTERVAL})"
        )
        with_snapshots, _ = build_ledger(settings(SNAPSHOT_INTERVAL), create_table=False)
        without, _ = build_ledger(settings(0), create_table=False)
        writer, _ = build_ledger(
            settings(SNAPSHOT_INTERVAL, write_cache_streams=0), create_table=False
        )
        replaying, _ = build_ledger(
            settings(SNAPSHOT_INTERVAL, write_cache_streams=0, writer_replay_events=2**40),
            create_table=False,
        )
        typed = long_session(session_id, args.events)
        try:
            with (
                running(
                    runledger_server(args.database_url, schema, workdir, name="snapshots"),
                    runledger_server(
                        args.database_url,
                        schema,
                        workdir,
                        name="no-snapshots",
                        snapshot_interval="0",
                        projector="off",
                    ),
                ) as (server, plain),
                httpx.Client(trust_env=False, timeout=120.0) as client,
            ):
                wait_projected(server.url)
                # The client process holds the populated ledgers: keep its own garbage collector
                # from pausing inside the timed loads (the server is what is measured).
                gc.collect()
                gc.freeze()
                stamps = [e.timestamp for e in with_snapshots.history("session", session_id)]
                as_of_direct, as_of_http = as_of_loaders(
                    with_snapshots, client, server.url, session_id, stamps
                )
                as_of_direct_ref, as_of_http_ref = as_of_loaders(
                    without, client, plain.url, session_id, stamps
                )
                ways = {
                    "direct": direct_loader(with_snapshots, session_id),
                    "direct-ref": direct_loader(without, session_id),
                    "http": http_loader(client, server.url, session_id),
                    "http-ref": http_loader(client, plain.url, session_id),
                    "asof": as_of_direct,
                    "asof-ref": as_of_direct_ref,
                    "http-asof": as_of_http,
                    "http-asof-ref": as_of_http_ref,
                    "writer": writer_loader(writer, typed, "bounded"),
                    "writer-ref": writer_loader(replaying, typed, "whole"),
                }
                for load in ways.values():  # warm-up: connections, imports, caches
                    timed_ms(load, versions[:3])
                for number in range(args.rounds):
                    for way, load in ways.items():
                        sample = versions[:reference_loads] if way.endswith("-ref") else versions
                        record(way, timed_ms(load, sample))
                    print(
                        f"   round {number + 1}: "
                        + "; ".join(
                            f"{way} p50 {fmt(stats[way][-1][0])} ms p99 {fmt(stats[way][-1][1])} ms"
                            for way in ways
                        )
                    )
        finally:
            for ledger in (with_snapshots, without, writer, replaying):
                ledger.close()

    notes = (
        f"{args.events:,}-event session, snapshots every {SNAPSHOT_INTERVAL}; "
        f"{loads} random versions per round, reference {reference_loads}; {args.rounds} rounds"
    )
    measurements = []
    for way, label in (
        ("direct", "Ledger.load"),
        ("http", "GET .../state"),
        ("asof", "as of a time, Ledger.version_as_of + load"),
        ("http-asof", "as of a time, GET .../state?as_of="),
        ("writer", "a writer's batch, the stream not cached"),
    ):
        p50 = [s[0] for s in stats[way]]
        p99 = [s[1] for s in stats[way]]
        reference = stats[f"{way}-ref"]
        targeted = way != "writer"  # a state's load has the target; a writer's batch none
        unit = "ms no snapshots" if targeted else "ms replayed whole"
        measurements.append(
            Measurement(
                "stream_state",
                f"p50 ms, {label}",
                median(p50),
                median([s[0] for s in reference]),
                unit,
                rounds=p50,
                notes=notes,
            )
        )
        measurements.append(
            Measurement(
                "stream_state",
                f"p99 ms, {label}",
                median(p99),
                median([s[1] for s in reference]),
                unit,
                "<= 10 ms" if targeted else "-",
                median(p99) <= TARGET_P99_MS if targeted else None,
                p99,
                notes,
            )
        )
    report(measurements, quick=args.quick, record=not args.no_record)


if __name__ == "__main__":
    main()
