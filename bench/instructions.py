"""Profile helper: the batched-ingest path in-process, for counting instructions with callgrind.

Wall-clock A/B runs on this shared machine move by +-10 % from one run to the next; valgrind's
``callgrind`` counts the instructions a process executes, which repeat to ~0.1 % for the same
code and inputs (``PYTHONHASHSEED=0``). This script runs what ``POST /v1/events`` does for
``--batches`` batches of 1,000 mixed typed events (``bench.workload``, deterministic): validation
of the body bytes, ``to_commands``, ``Ledger.handle`` on PostgreSQL (a fresh schema; ``--sqlite``
a temporary file) and the answer (``bench.profile_ingest``'s ``ingest`` and ``ledger_for``),
after one warm-up batch, with the API's garbage collector settings (``gc.freeze()``,
``tune_gc`` of ``RUNLEDGER_GC_YOUNG_THRESHOLD``). ``--setup-only`` does everything but the
timed batches; the difference of the two counts, divided by the events, is the path's
instructions per event::

    for w in --setup-only ""; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg$w.out .venv/bin/python -m bench.instructions $w; done
    # (Collected of the second - Collected of the first) / (batches x 1,000)

Not a benchmark (nothing is appended to ``bench/RESULTS.md``); the counts leave out what the
kernel and PostgreSQL do. sha256 is overcounted: under valgrind OpenSSL cannot use the CPU's SHA
instructions.

Run: ``python -m bench.instructions [--batches N] [--setup-only] [--full-path] [--sqlite]
[--database-url URL]``.
"""

from __future__ import annotations

import argparse
import gc

from bench.common import DEFAULT_DATABASE_URL
from bench.profile_ingest import ingest, ledger_for
from bench.workload import mixed_batches
from infra.runtime import tune_gc
from infra.settings import Settings


def main() -> None:
    """Run the path (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="batches of 1,000 events (6)")
    parser.add_argument("--setup-only", action="store_true", help="all but the batches")
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file instead")
    parser.add_argument(
        "--full-path",
        action="store_true",
        help="orjson and pydantic for every batch, not api.fast_events (what the route did before)",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="PostgreSQL")
    args = parser.parse_args()
    bodies = [b.body() for b in mixed_batches(args.batches + 1, batch_size=1000, prefix="cg-")]
    with ledger_for(args) as ledger:
        ingest(ledger, bodies[0], full_path=args.full_path)  # warm-up
        gc.collect()
        gc.freeze()
        tune_gc(Settings().gc_young_threshold)
        if not args.setup_only:
            for body in bodies[1:]:
                ingest(ledger, body, full_path=args.full_path)


if __name__ == "__main__":
    main()
