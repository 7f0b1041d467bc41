"""Benchmark ``overload``: admission (``RUNLEDGER_MAX_PENDING_EVENTS``) under more load than commits.

Not one of issue 3's targets: it shows what the writer's bound on waiting events does to the
throughput, to the time a request waits for its answer and to the API's memory when clients send
more than the ledger commits.

Load: ``--concurrency`` (64) clients, each a keep-alive connection posting 1,000-event batches
(``bench.workload``, ids fresh per round) back to back for ``--duration`` seconds (30); a 503 is
retried after its ``Retry-After``, as the OpenTelemetry SDK's exporters and any careful client
do (given up when that would fall after the window). Two ``runledger serve`` (PostgreSQL, fresh
schemas, both running; their rounds alternate, which goes first too, each starting once both
projectors have caught up): admission at its default and admission off (``0``), the reference.

Per configuration, medians over rounds: events/s committed within the window (the log's count at
its end); p99 of each attempt's answer time (a 200 or a 503); p99 of each acknowledged batch's
time to acknowledgement (first attempt to its 200, retries included); 503s per acknowledged
batch (notes); and the API's peak RSS (``VmHWM``) over all rounds. Once every answer is in, the
log must hold exactly the acknowledged batches' events (nothing refused appended, nothing
acknowledged missing).

Run: ``python -m bench.overload [--quick] [--rounds N] [--duration S] [--concurrency N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    Measurement,
    ServerProcess,
    banner,
    fmt,
    fresh_schema,
    log_event_count,
    median,
    parse_args,
    percentile,
    report,
    runledger_server,
    running,
    unwind_on_sigterm,
    wait_projected,
)
from bench.ingest_batch import check_batch_response, make_batches, warm_up
from infra.settings import Settings

DEFAULT_LIMIT = Settings.model_fields["max_pending_events"].default


@dataclass
class OverloadRound:
    """One round against one server."""

    events_per_s: float
    attempt_p99_ms: float
    ack_p99_ms: float
    refusals_per_batch: float


#: Most events/s one server is expected to commit: sizes the default pool of a round.
MAX_EXPECTED_EVENTS_S = 25_000


def encoded_pool(count: int, label: str) -> list[tuple[bytes, int]]:
    """``count`` batches of 1,000 events, ids unique to ``label``, encoded before any timing:
    ``[(POST /v1/events body, log events it implies), ...]``."""
    return [(batch.body(), batch.log_events) for batch in make_batches(count, label)]


def overload_round(
    server: ServerProcess,
    pool: list[tuple[bytes, int]],
    seconds: float,
    concurrency: int,
    database: str,
) -> OverloadRound:
    """Post the bodies of ``pool`` (``encoded_pool``) back to back from ``concurrency`` clients for ``seconds`` (a 503
    retried after its ``Retry-After``; one that could only be retried after the window is given
    up). Counts the events committed within the window; then, once every answer is in, checks
    that the log holds exactly the acknowledged batches' events.

    Raises:
        RuntimeError: an answer other than 200 or 503, a batch not all created, the pool used
            up before the window closed, or a log that does not match the acknowledgements.
    """
    url, schema = f"{server.url}/v1/events", server.env["RUNLEDGER_DATABASE_SCHEMA"]
    attempts: list[float] = []
    acks: list[float] = []
    refusals = 0
    acked_events = 0

    async def load() -> int:
        nonlocal refusals, acked_events
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"content-type": "application/json"}
        batches = iter(pool)
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal refusals, acked_events
            while time.perf_counter() < deadline:
                body, log_events = next(batches, (b"", 0))
                if not body:
                    raise RuntimeError(f"the pool of {len(pool)} batches ran out; raise --batches")
                first = time.perf_counter()
                while True:
                    sent = time.perf_counter()
                    response = await client.post(url, content=body, headers=headers)
                    attempts.append(time.perf_counter() - sent)
                    if response.status_code != 503:
                        break
                    refusals += 1
                    wait = float(response.headers.get("retry-after", "1"))
                    if time.perf_counter() + wait >= deadline:
                        return  # given up: a refused batch appended nothing
                    await asyncio.sleep(wait)
                check_batch_response(response)
                acks.append(time.perf_counter() - first)
                acked_events += log_events

        async def window() -> int:
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            return await asyncio.to_thread(log_event_count, database, schema)

        async with httpx.AsyncClient(
            trust_env=False, limits=limits, timeout=httpx.Timeout(300.0)
        ) as client:
            counted = asyncio.ensure_future(window())
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
            return await counted

    before = log_event_count(database, schema)
    at_deadline = asyncio.run(load())
    grown = log_event_count(database, schema) - before
    if grown != acked_events:
        raise RuntimeError(
            f"{server.name}: the log grew by {grown:,}, the acknowledged batches hold "
            f"{acked_events:,}"
        )
    return OverloadRound(
        events_per_s=(at_deadline - before) / seconds,
        attempt_p99_ms=percentile(attempts, 0.99) * 1000,
        ack_p99_ms=percentile(acks, 0.99) * 1000,
        refusals_per_batch=refusals / max(1, len(acks)),
    )


def options(parser: argparse.ArgumentParser) -> None:
    """``--duration``, ``--batches`` and ``--concurrency``."""
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per round (30; quick 10)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="batches encoded per round (enough for 25,000 events/s over the duration)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="client connections (64)")


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=3, quick_rounds=1, add=options)
    unwind_on_sigterm()
    seconds = args.duration or (10.0 if args.quick else 30.0)
    pool_size = args.batches or math.ceil(seconds * MAX_EXPECTED_EVENTS_S / 1000)
    banner(
        "overload: POST /v1/events, 1,000-event batches, more clients than the writer keeps up with",
        rounds=args.rounds,
        seconds_per_round=seconds,
        concurrency=args.concurrency,
        reference="the same server with admission off (RUNLEDGER_MAX_PENDING_EVENTS=0)",
    )
    #: server name -> RUNLEDGER_MAX_PENDING_EVENTS
    configs = {"admission": str(DEFAULT_LIMIT), "off": "0"}
    results: dict[str, list[OverloadRound]] = {name: [] for name in configs}
    with (
        tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        made = [
            runledger_server(
                args.database_url,
                stack.enter_context(fresh_schema(args.database_url, f"overload_{name}")),
                Path(tmp),
                name=name,
                max_pending_events=limit,
            )
            for name, limit in configs.items()
        ]
        servers = stack.enter_context(running(*made))
        for server in servers:
            warm_up(server, concurrency=2)
        for number in range(args.rounds):
            # one pool per round: the servers' schemas differ, so both may take the same ids
            pool = encoded_pool(pool_size, f"o{number}{uuid.uuid4().hex[:6]}")
            for server in servers if number % 2 == 0 else reversed(servers):
                for other in servers:
                    wait_projected(other.url)
                result = overload_round(server, pool, seconds, args.concurrency, args.database_url)
                results[server.name].append(result)
                print(
                    f"   round {number + 1} {server.name}: {fmt(result.events_per_s)} events/s, "
                    f"attempt p99 {fmt(result.attempt_p99_ms)} ms, ack p99 "
                    f"{fmt(result.ack_p99_ms)} ms, {result.refusals_per_batch:.2f} 503s per batch"
                )
        peak_mb = {s.name: s.memory_kb()["VmHWM"] / 1024 for s in servers}

    def med(name: str, metric: str) -> float:
        return median([getattr(r, metric) for r in results[name]])

    notes = (
        f"{args.rounds}x{seconds:.0f} s, {args.concurrency} conns posting 1,000-event batches, "
        f"503s retried after Retry-After; 503s per batch {med('admission', 'refusals_per_batch'):.2f} "
        f"(off: {med('off', 'refusals_per_batch'):.2f}); RUNLEDGER_MAX_PENDING_EVENTS="
        f"{DEFAULT_LIMIT} vs 0"
    )
    rows = [
        ("events/s committed", "events_per_s", "events/s, off"),
        ("attempt answer p99 ms", "attempt_p99_ms", "ms, off"),
        ("batch acknowledged p99 ms (retries included)", "ack_p99_ms", "ms, off"),
    ]
    measurements = [
        Measurement(
            "overload",
            metric,
            med("admission", attr),
            med("off", attr),
            label,
            rounds=[getattr(r, attr) for r in results["admission"]],
            notes=notes,
        )
        for metric, attr, label in rows
    ]
    measurements.append(
        Measurement(
            "overload",
            "API peak RSS MB (VmHWM)",
            peak_mb["admission"],
            peak_mb["off"],
            "MB, off",
            notes=notes,
        )
    )
    report(measurements, quick=args.quick, record=not args.no_record)


if __name__ == "__main__":
    main()
