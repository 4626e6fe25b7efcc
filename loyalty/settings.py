"""Typed settings, read once from the environment in `main()` and passed down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loyalty.codec import parse_keys, read_keyring
from loyalty.events import DEFAULT_MAX_CLOCK_SKEW


class Settings(BaseSettings):
    """Every setting of the engine, with the environment variable that sets it.

    Without ``LOYALTY_DATABASE_URL`` the embedded PostgreSQL under ``LOYALTY_HOME`` is
    used; without ``TEMPORAL_ADDRESS`` `loyalty dev` starts the Temporal dev server and
    every other command uses ``localhost:7233``.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    home: Path = Field(Path(".loyalty"), validation_alias="LOYALTY_HOME")
    database_url: SecretStr | None = Field(None, validation_alias="LOYALTY_DATABASE_URL")
    database_pool_size: int = Field(10, ge=2, le=200, validation_alias="LOYALTY_DATABASE_POOL_SIZE")

    temporal_address: str | None = Field(None, validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", validation_alias="TEMPORAL_NAMESPACE")
    temporal_api_key: SecretStr | None = Field(None, validation_alias="TEMPORAL_API_KEY")
    temporal_tls: bool = Field(False, validation_alias="TEMPORAL_TLS")
    temporal_tls_client_cert_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_CLIENT_CERT_PATH"
    )
    temporal_tls_client_key_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_CLIENT_KEY_PATH"
    )
    temporal_tls_server_ca_cert_path: Path | None = Field(
        None, validation_alias="TEMPORAL_TLS_SERVER_CA_CERT_PATH"
    )
    temporal_tls_server_name: str | None = Field(None, validation_alias="TEMPORAL_TLS_SERVER_NAME")

    task_queue: str = Field("loyalty", min_length=1, validation_alias="LOYALTY_TASK_QUEUE")
    app: str | None = Field(None, validation_alias="LOYALTY_APP")

    router_partitions: int = Field(1, ge=1, le=256, validation_alias="LOYALTY_ROUTER_PARTITIONS")
    router_batch_size: int = Field(
        500, ge=1, le=10_000, validation_alias="LOYALTY_ROUTER_BATCH_SIZE"
    )
    # How long one router activity keeps claiming batches before it returns to its
    # workflow; keeps each activity short enough to be retried cheaply.
    router_session_seconds: float = Field(
        60.0, gt=0, le=3600, validation_alias="LOYALTY_ROUTER_SESSION_SECONDS"
    )
    # A safety net only: the router is woken by LISTEN/NOTIFY, this bounds the delay
    # after a lost notification (for example across a database failover).
    router_idle_poll_seconds: float = Field(
        30.0, gt=0, validation_alias="LOYALTY_ROUTER_IDLE_POLL_SECONDS"
    )
    # While events are flowing (a batch in the last second), after a wake-up or a batch
    # that was not full, how long the router lets more events arrive before it claims:
    # events that come one by one (single POSTs, `loyalty emit`) are then applied many at
    # a time, not one transaction each. An event after a quiet second is claimed at once.
    # 0 always claims at once.
    router_linger_seconds: float = Field(
        0.05, ge=0, le=1, validation_alias="LOYALTY_ROUTER_LINGER_SECONDS"
    )
    event_max_attempts: int = Field(5, ge=1, le=100, validation_alias="LOYALTY_EVENT_MAX_ATTEMPTS")
    # How far in the future an emitted event's occurred_at may be: an ISO 8601 duration
    # (P1D, PT6H) or seconds. Clocks drift; a time years ahead is a mistake.
    max_clock_skew: timedelta = Field(
        DEFAULT_MAX_CLOCK_SKEW,
        gt=timedelta(0),
        le=timedelta(days=366),
        validation_alias="LOYALTY_MAX_CLOCK_SKEW",
    )
    # Members per tier maintenance chunk (one transaction under the program's ledger lock),
    # and a pause after each chunk that gives the router room in between.
    maintenance_chunk: int = Field(
        10_000, ge=1, le=1_000_000, validation_alias="LOYALTY_MAINTENANCE_CHUNK"
    )
    maintenance_pause_seconds: float = Field(
        0.0, ge=0, le=60, validation_alias="LOYALTY_MAINTENANCE_PAUSE_SECONDS"
    )
    # Days that `loyalty housekeeping run` keeps journey starts and signals after they
    # were started or sent (`loyalty.flows.retention`).
    journey_retention_days: int = Field(
        7, ge=1, le=36_500, validation_alias="LOYALTY_JOURNEY_RETENTION"
    )
    # Recurring flows (issue 15): the journeys a recurring run starts per second at most,
    # and how long after a scheduled time missed while Temporal was unavailable its
    # Schedule still runs it (Temporal's catch-up window; at least 10 s).
    recurring_starts_per_second: float = Field(
        100.0, gt=0, le=10_000, validation_alias="LOYALTY_RECURRING_STARTS_PER_SECOND"
    )
    schedule_catchup_seconds: int = Field(
        86_400, ge=10, le=366 * 86_400, validation_alias="LOYALTY_SCHEDULE_CATCHUP_SECONDS"
    )

    # The HTTP API (`loyalty api`, also started by `loyalty dev`).
    api_host: str = Field("127.0.0.1", min_length=1, validation_alias="LOYALTY_API_HOST")
    api_port: int = Field(8000, ge=0, le=65_535, validation_alias="LOYALTY_API_PORT")
    # Requests per second each API key may make to one API process (a token bucket that
    # holds one second's worth); more are answered 429 with Retry-After.
    api_rate_limit: float = Field(200.0, gt=0, validation_alias="LOYALTY_API_RATE_LIMIT")
    # How long an API process trusts a key it checked before it reads the key again: a
    # revoked key is refused by every process within this time.
    api_key_cache_seconds: float = Field(
        5.0, ge=0, le=300, validation_alias="LOYALTY_API_KEY_CACHE_SECONDS"
    )

    # Payload encryption (`loyalty.codec`): keys as ``id:base64key,...`` or a JSON keyring
    # file; the first key encrypts, every key decrypts. Neither set: the keyring that
    # `loyalty dev` wrote under LOYALTY_HOME if there is one, else no encryption.
    codec_keys: SecretStr | None = Field(None, validation_alias="LOYALTY_CODEC_KEYS")
    codec_keyring: Path | None = Field(None, validation_alias="LOYALTY_CODEC_KEYRING")
    # Origins (comma-separated) whose browsers may call the API's codec endpoint: the
    # Temporal Web UI's. Default: the dev server's UI on LOYALTY_DEV_UI_PORT.
    codec_cors_origins: str | None = Field(None, validation_alias="LOYALTY_CODEC_CORS_ORIGINS")
    # Who may call /codec/encode and /codec/decode: a key with the admin scope, or (only
    # `loyalty dev` sets it, for its Web UI, which cannot send a key) anyone who reaches
    # the API's address.
    codec_auth: Literal["admin", "none"] = Field("admin", validation_alias="LOYALTY_CODEC_AUTH")
    # Prometheus metrics (`loyalty.metrics`): the worker's endpoint (also `loyalty dev`'s,
    # which serves the API's metrics there too), the API's own when it runs alone, and how
    # often the gauges read from PostgreSQL (backlog, liability, tiers, streams) are
    # refreshed. Port 0: a port the system chooses. LOYALTY_METRICS=false serves none.
    metrics: bool = Field(True, validation_alias="LOYALTY_METRICS")
    metrics_host: str = Field("127.0.0.1", min_length=1, validation_alias="LOYALTY_METRICS_HOST")
    metrics_port: int = Field(9464, ge=0, le=65_535, validation_alias="LOYALTY_METRICS_PORT")
    api_metrics_port: int = Field(
        9465, ge=0, le=65_535, validation_alias="LOYALTY_API_METRICS_PORT"
    )
    metrics_refresh_seconds: float = Field(
        15.0, gt=0, le=3600, validation_alias="LOYALTY_METRICS_REFRESH_SECONDS"
    )

    # OpenTelemetry tracing (`loyalty.metrics.tracing`): the standard variables.
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str | None = Field(None, validation_alias="OTEL_TRACES_EXPORTER")
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    otel_service_name: str = Field("loyalty-flows", validation_alias="OTEL_SERVICE_NAME")

    dev_temporal_port: int = Field(7233, validation_alias="LOYALTY_DEV_TEMPORAL_PORT")
    dev_ui_port: int = Field(8233, validation_alias="LOYALTY_DEV_UI_PORT")

    @model_validator(mode="after")
    def _check_codec_keys(self) -> Settings:
        # A ConfigurationError, not a ValueError: pydantic would print the key it holds.
        if self.codec_keys is not None:
            parse_keys(self.codec_keys.get_secret_value())
        if self.codec_keyring is not None:
            read_keyring(self.codec_keyring)
        return self

    @property
    def codec_origins(self) -> list[str]:
        """The origins allowed to call the codec endpoint from a browser."""
        if self.codec_cors_origins is not None:
            return [o.strip() for o in self.codec_cors_origins.split(",") if o.strip()]
        port = self.dev_ui_port
        return [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]

    @property
    def journey_retention(self) -> timedelta:
        """How long started journeys and sent signals stay in their outboxes."""
        return timedelta(days=self.journey_retention_days)

    @property
    def effective_temporal_address(self) -> str:
        """The Temporal frontend to connect to."""
        return self.temporal_address or f"localhost:{self.dev_temporal_port}"
