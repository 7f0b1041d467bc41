"""Run every benchmark in sequence: ``python -m bench.all [--quick] [--only a,b] [--skip a,b]``.

Each benchmark runs as its own process (``python -m bench.<name>``, the same options passed on),
so that one failing does not stop the others and every server it started is stopped by its own
``finally``. A benchmark that overruns its time limit gets SIGTERM (it unwinds: servers stopped,
schemas dropped), then SIGKILL a minute later. Prints a summary; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from bench.common import DEFAULT_DATABASE_URL, ROOT

BENCHMARKS = ("ingest_batch", "single_event", "otlp", "rebuild", "stream_state", "rss", "overload")
#: Time limit of one benchmark, seconds (full run; a quick run gets a quarter).
TIME_LIMIT_S = 3600


def run_one(name: str, options: list[str], limit_s: float) -> int:
    """Run ``python -m bench.<name> <options>``; SIGTERM at ``limit_s``. Returns the exit code."""
    process = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *options], cwd=ROOT)
    try:
        return process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        print(f"!! {name} overran {limit_s:.0f} s; stopping it", file=sys.stderr)
        return _terminate(process)
    except KeyboardInterrupt:
        _terminate(process)
        raise


def _terminate(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def main() -> None:
    """Run the selected benchmarks and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke runs")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument("--profile", action="store_true", help="also run bench.profile_ingest")
    args = parser.parse_args()
    chosen = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    skipped = {n for n in args.skip.split(",") if n}
    options = ["--database-url", args.database_url]
    options += ["--quick"] if args.quick else []
    options += ["--no-record"] if args.no_record else []
    limit = TIME_LIMIT_S / 4 if args.quick else TIME_LIMIT_S
    outcomes: list[tuple[str, int, float]] = []
    for name in [n for n in chosen if n not in skipped]:
        print(f"\n######## bench.{name}", flush=True)
        started = time.monotonic()
        code = run_one(name, options, limit)
        outcomes.append((name, code, time.monotonic() - started))
    if args.profile:
        print("\n######## bench.profile_ingest", flush=True)
        started = time.monotonic()
        extra = ["--quick"] if args.quick else []
        code = run_one("profile_ingest", ["--database-url", args.database_url, *extra], limit)
        outcomes.append(("profile_ingest", code, time.monotonic() - started))
    print("\n######## summary")
    for name, code, seconds in outcomes:
        print(f"   {name:<16} {'ok' if code == 0 else f'FAILED ({code})':<12} {seconds:>7.0f} s")
    sys.exit(1 if any(code != 0 for _, code, _ in outcomes) else 0)


if __name__ == "__main__":
    main()
