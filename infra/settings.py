"""Configuration: one pydantic-settings class, environment prefix ``RUNLEDGER_``.

Nothing set: an SQLite file under ``./var/``, a local blob directory, the projector in a child
process that ``runledger serve`` starts and supervises (``projector="process"``), bind
127.0.0.1:8000. ``RUNLEDGER_DATABASE_URL=postgresql://...`` selects PostgreSQL;
``RUNLEDGER_S3_BUCKET`` (with ``RUNLEDGER_S3_*``: endpoint URL, region, path-style, credentials)
selects S3 for blobs. No other module of runledger reads ``os.environ`` (boto3 reads its own
``AWS_*`` variables when no S3 credentials are set here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.base import DEFAULT_PROJECT, PROJECT_NAME


class Settings(BaseSettings):
    """Every setting, its default and its unit. Environment: ``RUNLEDGER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="RUNLEDGER_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db selects PostgreSQL; unset: SQLite under data_dir.",
    )
    database_schema: str | None = Field(
        default=None,
        description="PostgreSQL schema for the log and the read models (default: public).",
    )
    data_dir: Path = Field(
        default=Path("var"), description="Where the SQLite file and local blobs live."
    )
    host: str = Field(default="127.0.0.1", description="Bind address of `runledger serve`.")
    port: int = Field(default=8000, ge=0, le=65535, description="Bind port of `runledger serve`.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API worker processes of `runledger serve` (each has its own group-commit writer; "
        "one projector works at a time, under an advisory lock on PostgreSQL).",
    )
    projector: Literal["process", "inprocess", "off"] = Field(
        default="process",
        description="Where `runledger serve` runs the projector: `process`, a child process it "
        "starts, restarts and stops (an interpreter of its own); `inprocess`, a thread of the "
        "API process; `off`, nowhere (then run `runledger project`).",
    )
    projector_poll_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="Projector idle poll interval, seconds (a commit wakes it sooner: "
        "LISTEN/NOTIFY on PostgreSQL, a datagram from the host's writers on SQLite).",
    )
    tail_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Longest time between two reads of the log's head while live tails "
        "(GET /v1/log/tail) wait, seconds; a commit wakes them sooner: LISTEN/NOTIFY on "
        "PostgreSQL, this process's writer on SQLite (so on SQLite this bounds how late a "
        "tail sees another process's commits).",
    )
    projector_min_interval_s: float = Field(
        default=0.05,
        ge=0,
        le=10,
        description="Under load, the projector starts a run at most this often, seconds: each run "
        "then folds what several commits appended (fewer, larger read-model transactions; the "
        "read models trail by up to this much more). An event after an idle spell is folded at "
        "once. 0: a run per commit.",
    )
    projector_bulk_rate: int = Field(
        default=10_000,
        ge=0,
        description="Events per second above which the projector takes the log to be under a "
        "bulk load (a batch import, an OTLP flood): it then folds once the load pauses (no "
        "commit for 0.25 s) or every `projector_bulk_max_delay_s`, in full pages, instead of "
        "alongside it, so the write path keeps the CPU and the database meanwhile. 0: never.",
    )
    projector_bulk_max_delay_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="During a bulk load, the longest the projector waits before it folds, "
        "seconds: how far (in time) the read models may fall behind the log, plus the fold.",
    )
    projector_page_size: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Notifications per read of the log (and per transaction near the head; "
        "catching up, the projector writes up to 20,000 events per transaction).",
    )
    projector_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of a `runledger project` process (serve's child included): under "
        "CPU contention the API and PostgreSQL run first, so a burst of writes is acknowledged "
        "sooner and the read models catch up after it; idle CPU still goes to the projector. "
        "0: the same priority as the API.",
    )
    projector_keep_rows: int = Field(
        default=50_000,
        ge=0,
        le=10_000_000,
        description="Read-model rows the projector keeps in memory from one run to the next "
        "(~700 bytes each for session rows), so that the rows a steady load keeps touching are "
        "not read back from the database every run; used only while no other projector wrote "
        "in between. 0: none.",
    )
    gc_young_threshold: int = Field(
        default=100_000,
        ge=0,
        description="Python's cyclic garbage collector: allocations between young collections "
        "(`gc.set_threshold(N, 20, 100)`; Python's defaults are 700, 10, 10) in the API, the "
        "projector and `rebuild`. A young collection walks every object allocated since the "
        "last one that is still alive, such as a whole batch being ingested, and survivors are "
        "walked again in the older generations: 10,000 -> 100,000 cut the in-process ingest "
        "path's CPU by 4-5 % (two interleaved A/B runs). Full collections, which walk every "
        "live object (the projector's row cache, the writer's stream cache), are considered "
        "every 200 million allocations (Python's: 70,000; a million-event rebuild made ~50 "
        "of them). 0 leaves Python's thresholds alone.",
    )
    http_telemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry instrumentation of requests (spans, metrics "
        "and logs through a configured OpenTelemetry SDK provider). Off: requests skip its "
        "per-request provider checks.",
    )
    create_tables: bool = Field(
        default=True,
        description="Create tables at start-up (under a lock); off once `runledger migrate` ran.",
    )
    snapshot_interval: int = Field(
        default=100,
        ge=0,
        description="Snapshot a stream every N events, which bounds what a reader or a writer "
        "replays (0: never; writers then replay whole streams).",
    )
    blob_threshold_bytes: int = Field(
        default=16 * 1024,
        ge=0,
        description="Values larger than this go to the blob store, referenced by sha256.",
    )
    blob_dir: Path | None = Field(
        default=None, description="Local blob directory (default: data_dir/blobs)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_batch_events: int = Field(
        default=5000, ge=1, description="Most events in one POST /v1/events batch."
    )
    max_group_commit_commands: int = Field(
        default=5000, ge=1, description="Most commands the writer merges into one transaction."
    )
    max_pending_events: int = Field(
        default=20_000,
        ge=0,
        description="Ingest requests are let in while fewer events (commands) than this wait for "
        "this process's writer, the transaction being saved included, whatever their size; "
        "otherwise they are refused with 503 (problem type `overloaded`, `Retry-After`) and "
        "append nothing (0: no limit). Each waiting event holds ~1.3 KB of memory. Keep it above "
        "the events a process commits in a second (the `Retry-After`), so that the writer "
        "stays busy while refused clients wait.",
    )
    write_cache_streams: int = Field(
        default=10_000,
        ge=0,
        description="Streams the writer keeps in memory between transactions, from their second "
        "written batch on (0: none); a write to a stream it does not hold replays the whole stream "
        "first.",
    )
    write_cache_events: int = Field(
        default=250_000,
        ge=0,
        description="Most events the writer's cached streams hold together (each costs ~150-600 "
        "bytes of memory); the least recently written streams go first, and a longer stream is "
        "not kept.",
    )
    writer_replay_events: int = Field(
        default=1_000,
        ge=0,
        description="A writer replays a stream whole (and then holds all its event ids and tool "
        "calls in memory) while its newest snapshot is at most this version; a longer stream is "
        "restored from that snapshot and the events after it, and a batch asks the key index "
        "about the older event ids and tool calls it names (one query).",
    )
    default_project: str = Field(
        default=DEFAULT_PROJECT,
        pattern=f"^{PROJECT_NAME}$",
        description="Project (tenant) of requests that name none, and of the command line's "
        "`replay` and `demo` without `--project`.",
    )
    s3_bucket: str | None = Field(
        default=None,
        description="S3 bucket of the blobs (boto3; AWS S3 or an S3-compatible server such as "
        "MinIO); unset: the local blob directory.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint, e.g. http://minio:9000; unset: AWS's."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_path_style: bool = Field(
        default=False,
        description="Path-style addressing (http://host/bucket/key), as MinIO and most "
        "S3-compatible servers want; off: boto3 chooses.",
    )
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key; unset: boto3's own credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key (never logged)."
    )
    s3_prefix: str = Field(default="blobs/", description="Key prefix of the blob objects.")
    api_token: str | None = Field(
        default=None,
        description="When set, every /v1 request needs `Authorization: Bearer <token>`.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "database_url must be a postgresql:// URL (unset for the SQLite default)"
            )
        return value or None

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file used when no database URL is set."""
        return self.data_dir / "runledger.sqlite"

    @property
    def blob_path(self) -> Path:
        """The local blob directory."""
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def uses_postgres(self) -> bool:
        """True when the log lives in PostgreSQL."""
        return self.database_url is not None
