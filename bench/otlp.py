"""Benchmark 3, ``otlp``: OTLP/HTTP protobuf spans committed per second, two ways.

Measured against ``runledger serve`` (PostgreSQL, fresh schema, the projector where
``BENCH_PROJECTOR`` puts it: by default ``serve``'s child process), spans/s committed, the log
(``count(*)`` of the events table) having grown by exactly the spans sent:

(a) ``sdk``: the OpenTelemetry SDK's own ``OTLPSpanExporter`` (``http/protobuf``) behind a
    ``BatchSpanProcessor`` (``max_export_batch_size`` 1,024, queue large enough to drop nothing)
    on a ``TracerProvider`` creating nested spans (per trace: ``agent.run`` > 10 x
    (``llm.call`` > ``tool.*``), 21 spans with gen_ai attributes). Timed from the first span
    created to ``force_flush()`` returning (span creation and encoding included: they run in
    this process, on the same 2 cores). The SDK exports one batch at a time.
(b) ``pre-encoded``: ``ExportTraceServiceRequest`` bodies encoded before timing, 1,000 spans
    over 50 traces each (20 nested spans per trace, same attributes), posted by httpx over 4
    concurrent connections; every answer must be 200 with no rejected span.

Reference: the no-op endpoint (``bench.noop_app``'s ``POST /v1/traces``: reads the body, answers
an empty ``ExportTraceServiceResponse``, same uvicorn settings and worker processes) fed the
same way in the same rounds: (a) the same SDK pipeline exporting to it, (b) the same pre-encoded
bodies. The ratio is the share of the transport's ceiling that runledger keeps.

Also printed: the CPU µs per span of the API, the projector, PostgreSQL and this process (the
SDK and its exporter run here) for each way into runledger (until the projector has caught up)
and for the SDK into the no-op endpoint (``bench.common.CpuMeter``; medians in the notes).

Target: >= 15,000 spans/s committed (both ways).

Run: ``python -m bench.otlp [--quick] [--rounds N] [--spans N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from bench.common import (
    CpuMeter,
    Measurement,
    ServerProcess,
    banner,
    cpu_text,
    fmt,
    fresh_schema,
    log_event_count,
    median,
    median_cpu,
    noop_server,
    parse_args,
    post_all,
    report,
    runledger_server,
    running,
    unwind_on_sigterm,
    wait_projected,
)

TARGET_SPANS_S = 15_000
SPANS_PER_BATCH = 1000
TRACES_PER_BATCH = 50
SDK_SPANS_PER_TRACE = 21
SDK_EXPORT_BATCH = 1024
CONCURRENCY = 4
_TOOLS = ("Bash", "Read", "Edit", "Grep")
_MODELS = ("claude-sonnet-4-5", "claude-opus-4-1")


# -- (a) the SDK's own exporter ------------------------------------------------------------------


def sdk_round(url: str, traces: int, label: str) -> tuple[float, int]:
    """Create ``traces`` x 21 nested spans and export them with the SDK; time to ``force_flush``.

    Returns:
        ``(seconds, spans created)``.

    Raises:
        RuntimeError: ``force_flush`` timed out.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    spans = traces * SDK_SPANS_PER_TRACE
    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench-agent", "session.id": f"{label}-s"})
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=60),
            max_queue_size=spans + SDK_EXPORT_BATCH,
            max_export_batch_size=SDK_EXPORT_BATCH,
            schedule_delay_millis=200,
        )
    )
    tracer = provider.get_tracer("bench.otlp", "1.0")
    rng = random.Random(7)
    try:
        started = time.perf_counter()
        for _ in range(traces):
            with tracer.start_as_current_span(
                "agent.run", attributes={"gen_ai.agent.name": "claude-code"}
            ):
                for turn in range(10):
                    with tracer.start_as_current_span(
                        "llm.call",
                        attributes={
                            "gen_ai.request.model": _MODELS[turn % 2],
                            "gen_ai.usage.input_tokens": rng.randint(200, 9000),
                            "gen_ai.usage.output_tokens": rng.randint(20, 900),
                            "gen_ai.usage.cost_usd": round(rng.uniform(0.0005, 0.05), 5),
                        },
                    ):
                        tool = _TOOLS[turn % len(_TOOLS)]
                        with tracer.start_as_current_span(
                            f"tool.{tool}",
                            attributes={"tool.name": tool, "tool.use_id": f"toolu_{turn:04d}"},
                        ):
                            pass
        if not provider.force_flush(timeout_millis=600_000):
            raise RuntimeError("force_flush timed out")
        seconds = time.perf_counter() - started
    finally:
        provider.shutdown()
    return seconds, spans


# -- (b) pre-encoded requests --------------------------------------------------------------------


def _kv(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


def encoded_batches(count: int, rng: random.Random, label: str) -> list[bytes]:
    """``count`` serialized ``ExportTraceServiceRequest``: 1,000 spans over 50 traces each.

    Per trace: a root ``agent.run``, then alternating ``llm.call`` (child of the root) and
    ``tool.*`` (child of the previous ``llm.call``) spans; random 16/8-byte ids.
    """
    per_trace = SPANS_PER_BATCH // TRACES_PER_BATCH
    start_ns = 1_771_059_600_000_000_000 + rng.randrange(10**12)
    bodies = []
    for _ in range(count):
        spans = []
        for _ in range(TRACES_PER_BATCH):
            trace_id = rng.randbytes(16)
            root_id = rng.randbytes(8)
            t0 = start_ns + rng.randrange(10**12)
            spans.append(
                Span(
                    trace_id=trace_id, span_id=root_id, name="agent.run",
                    kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=t0,
                    end_time_unix_nano=t0 + 60_000_000_000,
                    attributes=[_kv("gen_ai.agent.name", "claude-code")],
                    status=Status(code=Status.STATUS_CODE_OK),
                )
            )  # fmt: skip
            parent = root_id
            for index in range(1, per_trace):
                span_id = rng.randbytes(8)
                t = t0 + index * 2_000_000_000
                if index % 2:
                    name, parent_id = "llm.call", root_id
                    attributes = [
                        _kv("gen_ai.request.model", _MODELS[index % 2]),
                        _kv("gen_ai.usage.input_tokens", rng.randint(200, 9000)),
                        _kv("gen_ai.usage.output_tokens", rng.randint(20, 900)),
                        _kv("gen_ai.usage.cost_usd", round(rng.uniform(0.0005, 0.05), 5)),
                    ]
                    parent = span_id
                else:
                    tool = _TOOLS[index % len(_TOOLS)]
                    name, parent_id = f"tool.{tool}", parent
                    attributes = [_kv("tool.name", tool), _kv("tool.use_id", f"toolu_{index:04d}")]
                spans.append(
                    Span(
                        trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, name=name,
                        kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=t,
                        end_time_unix_nano=t + rng.randint(10**6, 2 * 10**9),
                        attributes=attributes, status=Status(code=Status.STATUS_CODE_OK),
                    )
                )  # fmt: skip
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=ProtoResource(
                        attributes=[
                            _kv("service.name", "bench-agent"),
                            _kv("session.id", f"{label}-s{rng.randrange(100)}"),
                        ]
                    ),
                    scope_spans=[
                        ScopeSpans(
                            scope=InstrumentationScope(name="bench.otlp", version="1.0"),
                            spans=spans,
                        )
                    ],
                )
            ]
        )
        bodies.append(request.SerializeToString())
    return bodies


def check_export_response(response: httpx.Response) -> int:
    """200 with no rejected span. Returns the spans of one batch.

    Raises:
        RuntimeError: any other answer.
    """
    if response.status_code != 200:
        raise RuntimeError(f"export answered {response.status_code}: {response.text[:800]}")
    answer = ExportTraceServiceResponse.FromString(response.content)
    if answer.partial_success.rejected_spans:
        raise RuntimeError(f"rejected spans: {answer.partial_success}")
    return SPANS_PER_BATCH


def post_encoded(server: ServerProcess, bodies: list[bytes]) -> float:
    """POST the bodies over ``CONCURRENCY`` connections. Returns spans/s."""
    seconds, spans = post_all(
        f"{server.url}/v1/traces",
        bodies,
        content_type="application/x-protobuf",
        concurrency=CONCURRENCY,
        check=check_export_response,
    )
    return spans / seconds


# -- the benchmark -------------------------------------------------------------------------------


class _LogCheck:
    """Asserts that the log grew by exactly the expected spans over a block."""

    def __init__(self, database_url: str, schema: str, expected: int) -> None:
        self.database_url, self.schema, self.expected = database_url, schema, expected

    def __enter__(self) -> None:
        self.before = log_event_count(self.database_url, self.schema)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            return
        gained = log_event_count(self.database_url, self.schema) - self.before
        if gained != self.expected:
            raise RuntimeError(f"log gained {gained} events, expected {self.expected} spans")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spans", type=int, default=None, help="spans per round and way (50,000; quick 5,000)"
    )


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(__doc__.splitlines()[0], rounds=5, quick_rounds=2, add=_options)
    unwind_on_sigterm()
    # The SDK exporter uses requests, which honours proxy variables: keep 127.0.0.1 direct.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    spans = args.spans or (5_000 if args.quick else 50_000)
    batches = max(1, spans // SPANS_PER_BATCH)
    traces = max(1, spans // SDK_SPANS_PER_TRACE)
    banner(
        "otlp: POST /v1/traces (OTLP/HTTP protobuf), PostgreSQL",
        rounds=args.rounds,
        sdk=f"{traces * SDK_SPANS_PER_TRACE:,} spans per round, BatchSpanProcessor({SDK_EXPORT_BATCH})",
        pre_encoded=f"{batches} x {SPANS_PER_BATCH:,} spans over {TRACES_PER_BATCH} traces, "
        f"{CONCURRENCY} connections",
        reference="the no-op /v1/traces endpoint (bench.noop_app) fed the same way",
    )
    rng = random.Random(11)
    sdk, sdk_ref, enc, enc_ref = [], [], [], []
    #: CPU by role per way, each round's meter with the spans it measured (from the first span
    #: or request until the projector had caught up; the no-op way until the last answer).
    cpu: dict[str, list[tuple[CpuMeter, int]]] = {
        "pre-encoded": [],
        "SDK": [],
        "SDK to no-op": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
        workdir = Path(tmp)
        with (
            fresh_schema(args.database_url, "otlp") as schema,
            running(runledger_server(args.database_url, schema, workdir), noop_server(workdir)) as (
                ledger,
                noop,
            ),
        ):
            warm = encoded_batches(2, rng, "warm")
            post_encoded(ledger, warm)
            post_encoded(noop, warm)
            sdk_round(noop.url, 20, "warm")
            for number in range(args.rounds):
                label = f"r{number}{uuid.uuid4().hex[:6]}"
                bodies = encoded_batches(batches, rng, label)
                wait_projected(ledger.url)
                enc_ref.append(post_encoded(noop, bodies))
                wait_projected(ledger.url)
                with (
                    _LogCheck(args.database_url, schema, batches * SPANS_PER_BATCH),
                    CpuMeter(ledger) as enc_meter,
                ):
                    enc.append(post_encoded(ledger, bodies))
                    wait_projected(ledger.url)
                with CpuMeter(noop) as sdk_ref_meter:
                    seconds, created = sdk_round(noop.url, traces, label + "n")
                sdk_ref.append(created / seconds)
                wait_projected(ledger.url)
                with (
                    _LogCheck(args.database_url, schema, traces * SDK_SPANS_PER_TRACE),
                    CpuMeter(ledger) as sdk_meter,
                ):
                    seconds, created = sdk_round(ledger.url, traces, label)
                    wait_projected(ledger.url)
                sdk.append(created / seconds)
                cpu["pre-encoded"].append((enc_meter, batches * SPANS_PER_BATCH))
                cpu["SDK"].append((sdk_meter, created))
                cpu["SDK to no-op"].append((sdk_ref_meter, created))
                print(
                    f"   round {number + 1}: pre-encoded {fmt(enc[-1])} spans/s "
                    f"(no-op {fmt(enc_ref[-1])}); SDK exporter {fmt(sdk[-1])} spans/s "
                    f"(no-op {fmt(sdk_ref[-1])})"
                )
                for way, measured in cpu.items():
                    meter, units = measured[-1]
                    print(f"     {way}: {meter.describe(units, 'span')}")
            wait_projected(ledger.url)

    notes = f"{args.rounds} rounds; reference = no-op /v1/traces endpoint fed the same way"
    cpu_notes = {}
    for way, measured in cpu.items():
        cpu_notes[way] = cpu_text(median_cpu([m for m, _ in measured], [n for _, n in measured]))
        print(f"   CPU µs per span, {way} (median of rounds): {cpu_notes[way]}")
    report(
        [
            Measurement(
                "otlp",
                "spans/s committed, pre-encoded (4 conns)",
                median(enc),
                median(enc_ref),
                "no-op spans/s",
                ">= 15,000",
                median(enc) >= TARGET_SPANS_S,
                enc,
                f"{batches}x{SPANS_PER_BATCH} spans/{TRACES_PER_BATCH} traces per round; {notes}; "
                f"CPU µs per span: {cpu_notes['pre-encoded']}",
            ),
            Measurement(
                "otlp",
                "spans/s committed, SDK OTLPSpanExporter",
                median(sdk),
                median(sdk_ref),
                "no-op spans/s",
                ">= 15,000",
                median(sdk) >= TARGET_SPANS_S,
                sdk,
                f"{traces * SDK_SPANS_PER_TRACE} spans per round, "
                f"BatchSpanProcessor max_export_batch_size={SDK_EXPORT_BATCH}; {notes}; "
                f"CPU µs per span: {cpu_notes['SDK']} (to the no-op: {cpu_notes['SDK to no-op']})",
            ),
        ],
        quick=args.quick,
        record=not args.no_record,
    )


if __name__ == "__main__":
    main()
