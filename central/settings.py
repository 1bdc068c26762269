"""Central's settings: read once from an optional TOML file and ``BACKROOM_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from protocol.config import load_settings_file_or_env

__all__ = ["CentralSettings", "load_settings"]


class CentralSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The bounds refuse, when the settings are read, values that failed only later: a
    # port above 65535 as a traceback from uvicorn, a batch, wait or pool of 0 as an
    # ingest or a database pool that never works.
    # SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...
    database_url: str = "sqlite+aiosqlite:///var/central/central.db"
    # Empty: start an embedded nats-server (data in data_dir/nats) on nats_server_port.
    nats_url: str = ""
    nats_server_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4222
    nats_creds: str = ""
    data_dir: str = "var/central"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    # Run an ingest worker inside the API process (embedded set-up); production runs
    # ``python -m central ingest`` processes beside the API instead.
    ingest_in_process: bool = True
    # Bigger batches amortise the per-statement cost of the summary upserts (2,000
    # ingest about a third faster than 500 on PostgreSQL); a batch takes ~1-2 s.
    ingest_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    ingest_fetch_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Redelivery of an unacked message (a crashed worker's batch) after this long.
    ingest_ack_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # JetStream keeps at most 5 replicas of a stream.
    up_stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    up_stream_max_age_days: Annotated[int, msgspec.Meta(ge=1)] = 30
    dedup_window_s: Annotated[int, msgspec.Meta(ge=1)] = 24 * 3600
    # A sequence gap that persists this long makes central ask the branch to resend.
    resend_gap_after_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # ... and ask again for the same gap only after this long.
    resend_retry_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # FAULT INJECTION, tests only: an ingest worker exits right after its first
    # committed batch, before acking it (BACKROOM_FAULT_CRASH_AFTER_COMMIT=1).
    fault_crash_after_commit: bool = False
    # FAULT INJECTION, tests only: an ingest worker waits this long before storing each
    # batch (a slow database; BACKROOM_FAULT_HOLD_BATCH_S), and fails its first this
    # many batches as if the database were away (BACKROOM_FAULT_FAIL_BATCHES).
    fault_hold_batch_s: float = 0.0
    fault_fail_batches: int = 0
    # PostgreSQL: how often an ingest process adds the summary backlog (per-product
    # report rows stored by ingestion) to the report tables; also whenever the up
    # stream is drained, and reports apply it before reading. Longer: bigger, cheaper
    # chunks while a backlog of events pours in.
    summary_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # FAULT INJECTION, tests only: exit with a backlog chunk applied but uncommitted
    # (BACKROOM_FAULT_CRASH_IN_SUMMARY_APPLY=1).
    fault_crash_in_summary_apply: bool = False
    # FAULT INJECTION, tests only: the master-data publisher exits right after it moved
    # its counter past the stream's mark before a pass, before publishing
    # (BACKROOM_FAULT_CRASH_AFTER_MASTERDATA_CATCH_UP=1).
    fault_crash_after_masterdata_catch_up: bool = False
    max_request_body: Annotated[int, msgspec.Meta(ge=1)] = 10 * 1024 * 1024
    # Longest period (days) a report may cover in one request.
    report_max_span_days: Annotated[int, msgspec.Meta(ge=1)] = 366
    # Most rows one report may have; a bigger one is a 422 problem asking for a shorter
    # period, one branch or a coarser grouping (the rows are built in this process).
    report_max_rows: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # PostgreSQL: longest a report's statement may run (waiting for locks included)
    # before the database cancels it and the API answers 503; 0: no limit.
    report_statement_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    db_pool_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    sql_echo: bool = False
    # --- security (README "Security") ---
    # Operator/account keys that sign NATS credentials; empty: <data_dir>/nats-issuer.
    nats_issuer_dir: str = ""
    # The NATS URL given to branches with their credentials; empty: nats_url.
    nats_public_url: str = ""
    # TLS to the NATS servers: CA bundle, and a client certificate if they verify clients.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # TLS of the embedded nats-server (when nats_url is empty).
    nats_server_tls_cert: str = ""
    nats_server_tls_key: str = ""
    nats_max_payload: Annotated[int, msgspec.Meta(ge=1)] = 1024 * 1024
    # HTTPS of the API (uvicorn); both or neither.
    http_tls_cert: str = ""
    http_tls_key: str = ""
    http_timeout_keep_alive_s: Annotated[int, msgspec.Meta(ge=1)] = 15
    # Expiry of API tokens issued without an explicit one (0: no expiry).
    api_token_ttl_days: Annotated[int, msgspec.Meta(ge=0)] = 365

    def __post_init__(self) -> None:
        _check_database_url(self.database_url)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _check_database_url(url: str) -> None:
    """Refuse a URL no command could use, at load, instead of a traceback from the
    first command that connects (a missing driver module, a blocking driver)."""
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ValueError(f"database_url: not a usable database URL ({exc})") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql") or not dialect.is_async:
        raise ValueError(
            f"database_url: {parsed.drivername!r} is not supported; use "
            "sqlite+aiosqlite:///path or postgresql+asyncpg://user:pw@host/db"
        )


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> CentralSettings:
    return load_settings_file_or_env(
        CentralSettings,
        config_file,
        env,
        config_env="BACKROOM_CENTRAL_CONFIG",
        env_prefix="BACKROOM_",
        section="central",
    )
