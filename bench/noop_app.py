"""The reference server of the HTTP benchmarks: endpoints that do no work besides HTTP and parsing.

- ``POST /v1/events``: FastAPI validates the body with runledger's own ``api.schemas.TypedEvent``
  model (one typed event) and the endpoint answers ``{}``. The ceiling of ``single_event``: the
  same uvicorn, the same FastAPI, the same pydantic body model, no ledger.
- ``POST /v1/traces``: reads the body and answers an empty ``ExportTraceServiceResponse``
  (zero bytes of protobuf) without decoding it. The ceiling of ``otlp``'s pre-encoded batches:
  the same bytes through the same HTTP stack.
- ``GET /healthz``: readiness.

Run like ``runledger serve`` runs its app (``uvicorn.run(app, host, port, log_level="info",
access_log=False)``: uvloop and httptools when installed, access log off unless
``--access-log``, as ``runledger serve``; ``--workers N`` as ``serve --workers N``, uvicorn's
worker processes importing the app)::

    python -m bench.noop_app --port 8001 [--workers 2]
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request, Response

from api.schemas import TypedEvent

# FastAPI's request telemetry off, as runledger's default (``RUNLEDGER_HTTP_TELEMETRY``).
app = FastAPI(
    title="runledger benchmark no-op reference",
    telemetry={"tracing": False, "metrics": False, "logs": False},
)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """``{"status": "ok"}``."""
    return {"status": "ok"}


@app.post("/v1/events")
async def post_event(event: Annotated[TypedEvent, Body()]) -> dict[str, Any]:
    """Validate one typed event (runledger's body model) and answer ``{}``."""
    return {}


@app.post("/v1/traces")
async def post_traces(request: Request) -> Response:
    """Read the body and answer an empty ``ExportTraceServiceResponse`` (no decoding)."""
    await request.body()
    return Response(b"", status_code=200, media_type="application/x-protobuf")


def main() -> None:
    """Serve on 127.0.0.1 with the settings ``runledger serve`` uses."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    args = parser.parse_args()
    uvicorn.run(
        app if args.workers == 1 else "bench.noop_app:app",
        host="127.0.0.1",
        port=args.port,
        log_level="info",
        access_log=args.access_log,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
