"""Benchmark 4, ``rebuild``: rebuilding every projection from position 0, on PostgreSQL and SQLite.

Set-up (timed and printed, not the measurement): the log is populated directly through
``domain.ledger.Ledger`` (``infra.store.build_ledger(Settings(...), create_table=True)``, no
HTTP) with batches of 5,000 realistic mixed commands (``bench.workload``: the typed events the
API takes, validated by the API's own models and mapped with ``to_command``) until it holds
1,000,000 events (``--quick``: 50,000); PostgreSQL in a fresh schema, SQLite in a temporary file.

Measured: events/s of ``Projector.rebuild()`` (all projections of ``projections.catalog``, built
by ``infra.runtime.build_runtime``; default page size) over the whole log, once in the benchmark's
process, once in ``--jobs`` parts (``infra.runtime.process_parts``: a spawned process per part,
as ``runledger rebuild --jobs N`` runs; the processes' start is timed too).

Reference: reading and decoding the whole log in pages of the same size with
``ledger.recorder.select_notifications`` + ``ledger.mapper.to_domain_event``: the upper bound of
any projection (it must at least do that). Rounds interleave reference and rebuild.

Target: >= 50,000 events/s (a million events in under 20 s).

Run: ``python -m bench.rebuild [--quick] [--rounds N] [--events N] [--backend both|postgres|sqlite]
[--jobs N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    Measurement,
    banner,
    fmt,
    fresh_schema,
    median,
    parse_args,
    report,
    unwind_on_sigterm,
)
from bench.workload import mixed_batches, to_commands
from domain.ledger import Ledger
from infra.runtime import build_runtime, process_parts
from infra.settings import Settings
from infra.store import build_ledger

TARGET_EVENTS_S = 50_000
POPULATE_BATCH = 5_000


def populate(settings: Settings, events: int) -> tuple[int, float]:
    """Append mixed commands through the Ledger until the log holds at least ``events`` events.

    Returns:
        ``(events in the log, seconds)``.

    Raises:
        RuntimeError: a command was not created.
    """
    ledger, _ = build_ledger(settings, create_table=True)
    appended = 0
    started = time.perf_counter()
    try:
        max_batches = events // POPULATE_BATCH + 2
        for number, batch in enumerate(
            mixed_batches(max_batches, batch_size=POPULATE_BATCH, prefix=uuid.uuid4().hex[:6])
        ):
            outcomes = ledger.handle(to_commands(batch.events))
            bad = [o for o in outcomes if o.status != "created"]
            if bad:
                raise RuntimeError(f"{len(bad)} commands not created; first: {bad[0]}")
            appended += batch.log_events
            if number % 20 == 19:
                rate = appended / (time.perf_counter() - started)
                print(f"      populated {appended:,} events ({fmt(rate)} events/s)", flush=True)
            if appended >= events:
                break
        seconds = time.perf_counter() - started
        head = int(ledger.recorder.max_notification_id() or 0)
    finally:
        ledger.close()
    if head < appended:
        raise RuntimeError(f"log head {head} below the {appended} events appended")
    return appended, seconds


def read_and_decode(ledger: Ledger, page_size: int) -> int:
    """Read the whole log in pages and decode every notification. Returns the count."""
    count = 0
    start = 1
    head = int(ledger.recorder.max_notification_id() or 0)
    for _ in range(head // page_size + head + 2):  # bounded: pages cannot outnumber events
        notifications = ledger.recorder.select_notifications(start=start, limit=page_size)
        if not notifications:
            break
        for notification in notifications:
            ledger.mapper.to_domain_event(notification)
        count += len(notifications)
        start = notifications[-1].id + 1
    return count


def _sampler(samples: list[tuple[float, int]]) -> Callable[[int, int], None]:
    """A ``rebuild`` progress callback appending ``(time, position)`` to ``samples``."""

    def progress(position: int, _head: int) -> None:
        samples.append((time.perf_counter(), position))

    return progress


def rate_by_tenth(samples: list[tuple[float, int]], started: float) -> str:
    """Rebuild speed over each tenth of the log, from ``(time, position)`` progress samples."""
    if len(samples) < 2:
        return "-"
    head = samples[-1][1]
    rates = []
    previous_t, previous_p = started, 0
    for tenth in range(1, 11):
        limit = head * tenth // 10
        t, p = next((t, p) for t, p in samples if p >= limit)
        if p > previous_p and t > previous_t:
            rates.append(fmt((p - previous_p) / (t - previous_t)))
            previous_t, previous_p = t, p
    return ", ".join(rates)


def bench_backend(
    name: str, settings: Settings, events: int, rounds: int, jobs: int
) -> tuple[list[float], list[float], list[float], int, float]:
    """Populate, then time ``rounds`` x (reference, rebuild, rebuild with ``jobs`` parts).

    Returns:
        ``(rebuild events/s per round, the same in parts, reference events/s per round, log
        events, population seconds)``.

    Raises:
        RuntimeError: a rebuild folded a different number of events than the reference read.
    """
    print(f"   {name}: populating {events:,} events through the Ledger ...", flush=True)
    total, populate_s = populate(settings, events)
    print(
        f"   {name}: populated {total:,} events in {populate_s:.1f} s ({fmt(total / populate_s)} events/s)"
    )
    runtime = build_runtime(settings, create_tables=True)
    rebuild_rates: list[float] = []
    parts_rates: list[float] = []
    reference_rates: list[float] = []
    try:
        page_size = settings.projector_page_size
        for number in range(rounds):
            started = time.perf_counter()
            read = read_and_decode(runtime.ledger, page_size)
            reference_rates.append(read / (time.perf_counter() - started))
            runs: tuple[tuple[str, list[float], dict[str, Any]], ...] = (
                ("rebuild", rebuild_rates, {}),
                (
                    f"rebuild --jobs {jobs}",
                    parts_rates,
                    {"jobs": jobs, "run_parts": process_parts(settings)},
                ),
            )
            for label, rates, options in runs:
                samples: list[tuple[float, int]] = []
                started = time.perf_counter()
                folded = runtime.projector.rebuild(progress=_sampler(samples), **options)
                seconds = time.perf_counter() - started
                if folded != read:
                    raise RuntimeError(f"{label} folded {folded} events, the log holds {read}")
                rates.append(folded / seconds)
                print(
                    f"   {name} round {number + 1}: {label} {fmt(rates[-1])} events/s "
                    f"({folded:,} in {seconds:.1f} s)"
                )
                print(f"      events/s by tenth of the log: {rate_by_tenth(samples, started)}")
            print(f"   {name} round {number + 1}: read+decode {fmt(reference_rates[-1])} events/s")
    finally:
        runtime.close()
    return rebuild_rates, parts_rates, reference_rates, total, populate_s


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=None, help="log size (1,000,000; quick 50,000)"
    )
    parser.add_argument("--backend", choices=("both", "postgres", "sqlite"), default="both")
    parser.add_argument(
        "--jobs", type=int, default=2, help="parts of the second rebuild of a round (2)"
    )


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=3, quick_rounds=2, add=_options)
    unwind_on_sigterm()
    events = args.events or (50_000 if args.quick else 1_000_000)
    banner(
        "rebuild: Projector.rebuild() of all projections",
        rounds=args.rounds,
        events=f"{events:,}",
        backends=args.backend,
        reference="read + decode the whole log (select_notifications + to_domain_event)",
    )
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as tmp:
        backends = ("postgres", "sqlite") if args.backend == "both" else (args.backend,)
        for backend in backends:  # each backend's row is recorded as soon as it is measured
            started = time.perf_counter()
            if backend == "postgres":
                with fresh_schema(args.database_url, "rebuild") as schema:
                    settings = Settings(
                        database_url=args.database_url,
                        database_schema=schema,
                        data_dir=Path(tmp) / "pg-var",
                    )
                    result = bench_backend("PostgreSQL", settings, events, args.rounds, args.jobs)
            else:
                settings = Settings(data_dir=Path(tmp) / "sqlite-var")
                result = bench_backend("SQLite", settings, events, args.rounds, args.jobs)
            rates, parts_rates, references, total, populate_s = result
            wall = time.perf_counter() - started
            measurements = []
            for label, measured in (
                (f"events/s, {backend}", rates),
                (f"events/s, {backend}, --jobs {args.jobs}", parts_rates),
            ):
                med = median(measured)
                measurements.append(
                    Measurement(
                        "rebuild",
                        label,
                        med,
                        median(references),
                        "read+decode events/s",
                        ">= 50,000",
                        med >= TARGET_EVENTS_S,
                        measured,
                        f"{total:,} events (populated in {populate_s:.0f} s, "
                        f"{fmt(total / populate_s)} events/s via Ledger.handle); 1M at this "
                        f"rate: {1_000_000 / med:.0f} s; {backend} wall {wall:.0f} s",
                    )
                )
            report(measurements, quick=args.quick, record=not args.no_record)


if __name__ == "__main__":
    main()
