"""Profile helper: what dominates the batched-ingest path, without HTTP.

Runs what ``POST /v1/events`` does for a batch, in-process, against a ``Ledger`` built by
``infra.store.build_ledger`` (PostgreSQL in a fresh schema, or ``--sqlite`` a temporary file):
the body bytes into commands as the route does it (``api.fast_events.event_commands``: msgspec
structs made from the models, their checks, the commands; with ``--full-path`` the route's
other path, which every batch took before: ``_parse_json``, orjson and the nesting check,
``validate_python`` of ``TypedEvent | EventBatch``, ``to_commands``), ``Ledger.handle`` (load
streams, domain commands, ``save()``: mapper/transcoder and recorder; the API's group-commit
writer hands a whole 1,000-event batch to one ``handle`` call as well) and the answer (the
route's own ``event_results``). Batches of 1,000 mixed typed events (``bench.workload``).

First an unprofiled pass (events/s without profiler overhead), then the same amount of work
under ``cProfile`` (``pyinstrument`` is used instead when installed and ``--pyinstrument`` is
given). Prints the top 25 functions by cumulative time and a breakdown of the stages
(cumulative seconds of their entry functions, share of the profiled total; stages nest).

Not a benchmark (nothing is appended to ``bench/RESULTS.md``).

Run: ``python -m bench.profile_ingest [--quick] [--batches N] [--full-path] [--sqlite]
[--pyinstrument]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.fast_events import event_commands
from api.offload import inline
from api.routes.ingest import _commands, event_results
from bench.common import DEFAULT_DATABASE_URL, banner, fmt, fresh_schema, unwind_on_sigterm
from bench.workload import mixed_batches
from domain.base import DEFAULT_PROJECT
from domain.ledger import Ledger
from infra.settings import Settings
from infra.store import build_ledger

#: Most events a batch may hold here (the bodies are 1,000-event batches).
MAX_EVENTS = 100_000

#: Breakdown rows: (label, file path suffixes, function name). Cumulative times nest; a row
#: takes the largest cumulative time among the functions it matches.
STAGES: list[tuple[str, tuple[str, ...], str]] = [
    ("ingest one batch (all below)", ("bench/profile_ingest.py",), "ingest"),
    ("  event_commands (msgspec, checks, commands)", ("api/fast_events.py",), "event_commands"),
    ("    content hash, meta and arguments (_command)", ("api/schemas.py",), "_command"),
    ("  --full-path: parse (orjson, nesting check)", ("api/routes/ingest.py",), "_parse_json"),
    ("  --full-path: validate (pydantic)", ("pydantic/type_adapter.py",), "validate_python"),
    ("  --full-path: to_commands (dump + sha256)", ("api/schemas.py",), "to_commands"),
    ("  Ledger.handle", ("domain/ledger.py",), "handle"),
    ("    _execute: load streams + domain", ("domain/ledger.py",), "_execute"),
    ("      load uncached streams (_load_streams)", ("domain/ledger.py",), "_load_streams"),
    ("    Ledger._commit (map, insert, snapshots)", ("domain/ledger.py",), "_commit"),
    ("      mapper.to_stored_event (encode)", ("infra/codec.py",), "to_stored_event"),
    (
        "      recorder.insert_events (SQL)",
        ("infra/codec.py", "eventsourcing/postgres.py", "eventsourcing/sqlite.py"),
        "insert_events",
    ),
    ("      take snapshots", ("eventsourcing/application.py",), "_take_snapshots"),
    ("  answer (the route's event_results)", ("api/routes/ingest.py",), "event_results"),
]


def ingest(ledger: Ledger, body: bytes, *, full_path: bool = False) -> int:
    """What ``POST /v1/events`` does with a batch body, minus HTTP. Returns events created.

    ``full_path``: parse and validate through orjson and pydantic, as the route does for a body
    ``api.fast_events`` leaves alone (what every batch took before that module existed).

    Raises:
        RuntimeError: an event was not created.
    """
    fast = None if full_path else event_commands(body, DEFAULT_PROJECT, inline, MAX_EVENTS)
    commands, _ = fast or _commands(body, DEFAULT_PROJECT, inline, MAX_EVENTS)
    outcomes = ledger.handle(commands)
    event_results(outcomes)
    created = sum(o.status == "created" for o in outcomes)
    if created != len(outcomes):
        raise RuntimeError(f"only {created} of {len(outcomes)} created")
    return created


def timed(ledger: Ledger, bodies: list[bytes], *, full_path: bool = False) -> float:
    """Ingest every body once. Returns events/s."""
    started = time.perf_counter()
    created = sum(ingest(ledger, body, full_path=full_path) for body in bodies)
    return created / (time.perf_counter() - started)


def bodies_for(count: int) -> list[bytes]:
    """``count`` batch bodies with fresh ids."""
    prefix = uuid.uuid4().hex[:8]
    return [batch.body() for batch in mixed_batches(count, prefix=prefix)]


def stage_times(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Cumulative seconds of each ``STAGES`` entry function (0 when it never ran)."""
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    found = []
    for label, suffixes, name in STAGES:
        cumulative = max(
            (
                row[3]
                for (path, _, func), row in table.items()
                if func == name and path.endswith(suffixes)
            ),
            default=0.0,
        )
        found.append((label, cumulative))
    return found


@contextmanager
def ledger_for(args: argparse.Namespace) -> Iterator[Ledger]:
    """A Ledger on PostgreSQL (fresh schema) or on a temporary SQLite file; closed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        if args.sqlite:
            ledger, _ = build_ledger(Settings(data_dir=Path(tmp)), create_table=True)
            try:
                yield ledger
            finally:
                ledger.close()
            return
        with fresh_schema(args.database_url, "profile") as schema:
            settings = Settings(
                database_url=args.database_url, database_schema=schema, data_dir=Path(tmp)
            )
            ledger, _ = build_ledger(settings, create_table=True)
            try:
                yield ledger
            finally:
                ledger.close()


def profile_cprofile(run: Callable[[], float]) -> tuple[float, pstats.Stats]:
    """Run under cProfile; print the top 25 by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    rate = run()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    print(out.getvalue())
    return rate, stats


def main() -> None:
    """Profile the ingest path (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (5 batches)")
    parser.add_argument("--batches", type=int, default=None, help="batches per pass (20; quick 5)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument(
        "--full-path", action="store_true", help="orjson and pydantic, not api.fast_events"
    )
    parser.add_argument("--pyinstrument", action="store_true", help="pyinstrument, if installed")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    unwind_on_sigterm()
    batches = args.batches or (5 if args.quick else 20)
    banner(
        "profile_ingest: the batched-ingest path in-process (no HTTP)",
        store="SQLite" if args.sqlite else "PostgreSQL",
        batches_per_pass=f"{batches} x 1,000 mixed typed events",
        path="orjson + pydantic (--full-path)" if args.full_path else "api.fast_events",
    )
    full = args.full_path
    with ledger_for(args) as ledger:
        timed(ledger, bodies_for(1), full_path=full)  # warm-up
        plain = timed(ledger, bodies_for(batches), full_path=full)
        print(f"   unprofiled: {fmt(plain)} events/s")
        bodies = bodies_for(batches)
        if args.pyinstrument:
            try:
                from pyinstrument import Profiler
            except ImportError:
                print("   pyinstrument is not installed; using cProfile")
            else:
                with Profiler() as profiler:
                    rate = timed(ledger, bodies, full_path=full)
                print(profiler.output_text(unicode=False, color=False))
                print(f"   profiled: {fmt(rate)} events/s (pyinstrument)")
                return
        rate, stats = profile_cprofile(lambda: timed(ledger, bodies, full_path=full))
        print(f"   profiled: {fmt(rate)} events/s (cProfile overhead included)")
        stages = stage_times(stats)
        total = stages[0][1] or 1.0
        print(f"\n   {'stage (cumulative, nested)':<46} {'seconds':>8} {'share':>7}")
        for label, seconds in stages:
            print(f"   {label:<46} {seconds:>8.2f} {seconds / total:>7.1%}")


if __name__ == "__main__":
    main()
