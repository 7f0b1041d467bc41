"""Benchmark 6, ``rss``: peak resident memory of the API process under the ``ingest_batch`` load.

Measured: ``VmHWM`` (peak RSS) from ``/proc/<pid>/status`` of the API process, the
``runledger serve`` process (uvicorn runs in it; under ``--workers N``, the largest of it and its
workers), not its projector child (``ServerProcess.memory_kb``), at the end of an
``ingest_batch`` load (batches of 1,000 mixed typed events over 4 connections, PostgreSQL, the
projector where ``BENCH_PROJECTOR`` puts it), with ``VmRSS`` sampled every 100 ms during the
load. Each round starts a fresh server process
(``VmHWM`` only grows within a process), on one fresh schema for the run.

Reference: the same process's ``VmRSS`` right after start-up (ready, before any request).
Also in the notes (medians of the rounds): the projector's peak when it is a process of its own,
and the API processes' peaks summed when there are several.

Target: <= 300 MB.

``python -m bench.ingest_batch`` reports the same number for its own load; this module measures
it alone. Run: ``python -m bench.rss [--quick] [--rounds N] [--batches N]``.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from bench.common import (
    Measurement,
    RssSampler,
    banner,
    fresh_schema,
    median,
    memory_notes,
    parse_args,
    report,
    runledger_server,
    running,
    unwind_on_sigterm,
)
from bench.ingest_batch import BATCH_SIZE, TARGET_RSS_MB, http_round, load_options, make_batches


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=3, quick_rounds=2, add=load_options)
    unwind_on_sigterm()
    batches_per_round = args.batches or (10 if args.quick else 100)
    banner(
        "rss: peak RSS of runledger serve under the ingest_batch load, PostgreSQL",
        rounds=f"{args.rounds} (a fresh server process each)",
        events_per_round=f"{batches_per_round * BATCH_SIZE:,}",
        concurrency=args.concurrency,
        reference="VmRSS of the same process right after start-up",
    )
    peaks_mb: list[float] = []
    idle_mb: list[float] = []
    sampled_mb: list[float] = []
    memories: list[dict[str, int]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp,
        fresh_schema(args.database_url, "rss") as schema,
    ):
        for number in range(args.rounds):
            batches = make_batches(batches_per_round, f"rss{number}{uuid.uuid4().hex[:6]}")
            server = runledger_server(args.database_url, schema, Path(tmp), name=f"rss{number}")
            with running(server):
                idle_mb.append(server.memory_kb()["VmRSS"] / 1024)
                with RssSampler(server) as sampler:
                    result = http_round(
                        server,
                        batches,
                        concurrency=args.concurrency,
                        database_url=args.database_url,
                        schema=schema,
                    )
                memories.append(server.memory_kb())
                peaks_mb.append(memories[-1]["VmHWM"] / 1024)
                sampled_mb.append(sampler.peak_kb / 1024)
            print(
                f"   round {number + 1}: VmHWM {peaks_mb[-1]:.0f} MB (max sampled VmRSS "
                f"{sampled_mb[-1]:.0f} MB, idle {idle_mb[-1]:.0f} MB) after "
                f"{result.created:,} events at {result.events_per_s:,.0f} events/s{memory_notes(memories[-1])}"
            )
    med = median(peaks_mb)
    report(
        [
            Measurement(
                "rss",
                "peak RSS MB (VmHWM), ingest_batch load",
                med,
                median(idle_mb),
                "MB idle",
                "<= 300 MB",
                med <= TARGET_RSS_MB,
                peaks_mb,
                f"{args.rounds} fresh processes x {batches_per_round * BATCH_SIZE:,} events; "
                f"max sampled VmRSS {median(sampled_mb):.0f} MB (median)"
                + memory_notes({key: median([m[key] for m in memories]) for key in memories[0]}),
            )
        ],
        quick=args.quick,
        record=not args.no_record,
    )


if __name__ == "__main__":
    main()
