"""Benchmark 1, ``ingest_batch``: batched HTTP ingest into PostgreSQL through a real uvicorn.

Measured: events/s committed by ``POST /v1/events`` with batches of 1,000 mixed typed events
(``bench.workload``: sessions with messages, tool calls started/ended and scafld evidence;
chains created, stages added and moved; approvals requested and decided; ~88 streams per
batch, ~500 bytes per event) posted over 4 concurrent keep-alive connections to
``runledger serve`` (PostgreSQL, fresh schema, the projector where ``BENCH_PROJECTOR`` puts it:
by default ``serve``'s child process). A round counts from the first request to the last
response; every response must be 200 with every result ``created``,
and the log (``count(*)`` of the events table) must have grown by exactly the events the round
implies (typed events + implied chain status changes). The ``/readyz`` head is printed too,
and per round the CPU µs per log event of the API, the projector, PostgreSQL and this client,
from the first request until the projector has caught up, and from the first request to the last
response (the projector defers its folds while a bulk load lasts) (``bench.common.CpuMeter``;
medians in the row's notes).

Reference: psycopg ``COPY`` of the same rows (``event_id, stream, type, payload jsonb``) into a
bare table (no index) in the same database, one ``COPY`` + commit per 1,000 rows on one
connection, in the same rounds (interleaved with the HTTP rounds).

Target: >= 25,000 events/s committed, i.e. >= 0.35 x COPY.

Also reported (benchmark 6, ``rss``, folded in): the API process's peak RSS (``VmHWM`` at the
end of the run, ``VmRSS`` sampled every 100 ms during the rounds; not the projector's, whose
peak the notes give) against its RSS right after start-up. Target <= 300 MB.
``python -m bench.rss`` measures it alone.

Run: ``python -m bench.ingest_batch [--quick] [--rounds N] [--batches N] [--concurrency N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psycopg
from psycopg import sql

from bench.common import (
    CpuMeter,
    Measurement,
    RssSampler,
    ServerProcess,
    banner,
    cpu_text,
    fmt,
    fresh_schema,
    log_event_count,
    median,
    median_cpu,
    memory_notes,
    parse_args,
    post_all,
    readyz,
    report,
    runledger_server,
    running,
    unwind_on_sigterm,
    wait_projected,
)
from bench.workload import Batch, copy_rows, mixed_batches

BATCH_SIZE = 1000
TARGET_EVENTS_S = 25_000
TARGET_RATIO = 0.35
TARGET_RSS_MB = 300
COPY_TABLE = "bench_copy"


@dataclass
class IngestRound:
    """One timed HTTP round.

    Attributes:
        created: typed events answered ``created``.
        log_events: events the log gained (typed + implied).
        seconds: first request to last response.
        lag_s: from the last response until the projector had caught up.
        cpu: CPU spent by role from the first request until the projector had caught up.
        load_cpu: CPU spent by role from the first request to the last response (the projector
            defers its folds while a bulk load lasts: ``RUNLEDGER_PROJECTOR_BULK_RATE``).
    """

    created: int
    log_events: int
    seconds: float
    lag_s: float
    cpu: CpuMeter
    load_cpu: CpuMeter

    @property
    def events_per_s(self) -> float:
        """Typed events committed per second."""
        return self.created / self.seconds


def check_batch_response(response: httpx.Response) -> int:
    """A batch answer: 200, nothing rejected or duplicate. Returns the ``created`` count.

    Raises:
        RuntimeError: any other answer (with the first problem).
    """
    if response.status_code != 200:
        raise RuntimeError(f"batch answered {response.status_code}: {response.text[:800]}")
    body = orjson.loads(response.content)
    if body["rejected"] or body["duplicates"]:
        bad = next(r for r in body["results"] if r["status"] != "created")
        raise RuntimeError(
            f"{body['rejected']} rejected, {body['duplicates']} duplicate; first: {bad}"
        )
    return int(body["created"])


def make_batches(count: int, label: str) -> list[Batch]:
    """``count`` batches of ``BATCH_SIZE`` events with ids unique to ``label`` (not timed)."""
    return list(mixed_batches(count, batch_size=BATCH_SIZE, prefix=f"{label}-"))


def http_round(
    server: ServerProcess,
    batches: list[Batch],
    *,
    concurrency: int,
    database_url: str,
    schema: str,
) -> IngestRound:
    """Post ``batches`` concurrently, verify the log grew by exactly what they imply and wait
    until the projector has caught up.

    Raises:
        RuntimeError: a response was not all-created, or the log count does not match.
        TimeoutError: the projector had not caught up 300 s after the last response.
    """
    bodies = [batch.body() for batch in batches]
    before = log_event_count(database_url, schema)
    with CpuMeter(server) as cpu:
        with CpuMeter(server) as load_cpu:
            seconds, created = post_all(
                f"{server.url}/v1/events",
                bodies,
                content_type="application/json",
                concurrency=concurrency,
                check=check_batch_response,
            )
        lag_s = wait_projected(server.url)
    expected_created = sum(len(b.events) for b in batches)
    expected_log = sum(b.log_events for b in batches)
    gained = log_event_count(database_url, schema) - before
    if created != expected_created or gained != expected_log:
        raise RuntimeError(
            f"created {created} of {expected_created}; log gained {gained}, expected {expected_log}"
        )
    return IngestRound(created, gained, seconds, lag_s, cpu, load_cpu)


def copy_round(database_url: str, schema: str, batches: list[Batch]) -> float:
    """COPY the batches' rows into the bare table (one COPY + commit per batch). Returns rows/s."""
    row_batches = [copy_rows(batch.events) for batch in batches]
    table = sql.Identifier(schema, COPY_TABLE)
    statement = sql.SQL("COPY {} (event_id, stream, type, payload) FROM STDIN").format(table)
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(table))
        conn.commit()
        started = time.perf_counter()
        for rows in row_batches:
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
    return sum(len(rows) for rows in row_batches) / seconds


def create_copy_table(database_url: str, schema: str) -> None:
    """The reference's bare table: no key, no index."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (event_id text, stream text, type text, payload jsonb)"
            ).format(sql.Identifier(schema, COPY_TABLE))
        )


def warm_up(server: ServerProcess, *, concurrency: int) -> None:
    """Two untimed batches: imports, connection pools and caches warm."""
    post_all(
        f"{server.url}/v1/events",
        [b.body() for b in make_batches(2, f"warm{uuid.uuid4().hex[:6]}")],
        content_type="application/json",
        concurrency=min(concurrency, 2),
        check=check_batch_response,
    )


def load_options(parser: argparse.ArgumentParser) -> None:
    """``--batches`` and ``--concurrency`` of the ingest load (also ``bench.rss``'s)."""
    parser.add_argument(
        "--batches", type=int, default=None, help="batches per round (100; quick 10)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="client connections (4)")


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=5, quick_rounds=2, add=load_options)
    unwind_on_sigterm()
    batches_per_round = args.batches or (10 if args.quick else 100)
    banner(
        "ingest_batch: POST /v1/events, batches of 1,000 mixed typed events, PostgreSQL",
        rounds=args.rounds,
        events_per_round=f"{batches_per_round * BATCH_SIZE:,}",
        concurrency=args.concurrency,
        reference="psycopg COPY of the same rows into a bare table, one COPY+commit per batch",
    )
    http_rates: list[float] = []
    copy_rates: list[float] = []
    rounds: list[IngestRound] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        fresh_schema(args.database_url, "ingest") as schema,
        running(runledger_server(args.database_url, schema, Path(tmp))) as (server,),
    ):
        idle_kb = server.memory_kb()["VmRSS"]
        create_copy_table(args.database_url, schema)
        warm_up(server, concurrency=args.concurrency)
        wait_projected(server.url)
        with RssSampler(server) as sampler:
            for number in range(args.rounds):
                batches = make_batches(batches_per_round, f"r{number}{uuid.uuid4().hex[:6]}")
                copy_rates.append(copy_round(args.database_url, schema, batches))
                result = http_round(
                    server,
                    batches,
                    concurrency=args.concurrency,
                    database_url=args.database_url,
                    schema=schema,
                )
                http_rates.append(result.events_per_s)
                rounds.append(result)
                print(
                    f"   round {number + 1}: HTTP {fmt(result.events_per_s)} events/s "
                    f"({result.created:,} typed, {result.log_events:,} log events in "
                    f"{result.seconds:.2f} s); COPY {fmt(copy_rates[-1])} rows/s; "
                    f"projector caught up {result.lag_s:.1f} s later\n"
                    f"            until caught up: "
                    f"{result.cpu.describe(result.log_events, 'log event')}\n"
                    f"            during the load: "
                    f"{result.load_cpu.describe(result.log_events, 'log event')}"
                )
        memory = server.memory_kb()
        head = readyz(server.url)["head"]
        total = log_event_count(args.database_url, schema)
        print(f"   log: {total:,} events, /readyz head {head:,}")

    med, ref = median(http_rates), median(copy_rates)
    log_events = [r.log_events for r in rounds]
    cpu_note = cpu_text(median_cpu([r.cpu for r in rounds], log_events))
    load_note = cpu_text(median_cpu([r.load_cpu for r in rounds], log_events))
    print(f"   CPU µs per log event (median of rounds): {cpu_note}; during the load: {load_note}")
    peak_mb = memory["VmHWM"] / 1024
    notes = (
        f"{args.rounds}x{batches_per_round * BATCH_SIZE:,} events, {args.concurrency} conns, "
        f">= 25,000/s: {'PASS' if med >= TARGET_EVENTS_S else 'MISS'}, "
        f">= 0.35x: {'PASS' if med / ref >= TARGET_RATIO else 'MISS'}; "
        f"projector catch-up after a round {fmt(median([r.lag_s for r in rounds]))} s (median); "
        f"CPU µs per log event: {cpu_note} (during the load: {load_note})"
    )
    report(
        [
            Measurement(
                "ingest_batch",
                "events/s committed",
                med,
                ref,
                "COPY rows/s",
                ">= 25,000 & >= 0.35x",
                med >= TARGET_EVENTS_S and med / ref >= TARGET_RATIO,
                http_rates,
                notes,
            ),
            Measurement(
                "rss",
                "peak RSS MB (VmHWM) during ingest_batch",
                peak_mb,
                idle_kb / 1024,
                "MB idle",
                "<= 300 MB",
                peak_mb <= TARGET_RSS_MB,
                [],
                f"folded into ingest_batch; max sampled VmRSS {sampler.peak_kb / 1024:.0f} MB"
                + memory_notes(memory),
            ),
        ],
        quick=args.quick,
        record=not args.no_record,
    )


if __name__ == "__main__":
    main()
