"""Settings. Every setting has a ``CONVEYOR_*`` environment variable; the README's table
lists them all and a test keeps that table in step with this class."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Conveyor's configuration, read from ``CONVEYOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./conveyor.db",
        description="Where jobs live: sqlite:///PATH (embedded) or postgresql://... .",
    )
    imports: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules that define job kinds, imported by every command.",
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"],
        description="Queues a worker serves, comma-separated; NAME:N sets that queue's limit.",
    )
    concurrency: int = Field(
        default=100, ge=1, le=10_000, description="Jobs a worker runs at once per queue."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a claimed job stays owned without a heartbeat before the "
        "rescuer returns it to the queue.",
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="Seconds between lease renewals; below lease_seconds."
    )
    cancel_check_interval: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between checks for cancel requests from other processes while "
        "jobs run (in-process cancels are immediate).",
    )
    rescue_interval: float = Field(
        default=5.0, gt=0, description="Seconds between the rescuer's looks for expired leases."
    )
    shutdown_grace: float = Field(
        default=30.0,
        ge=0,
        description="Seconds running jobs may finish after SIGTERM before they are handed "
        "back to the queue without charging an attempt.",
    )
    max_memory_mb: float = Field(
        default=1600.0,
        ge=0,
        description="A worker stops fetching while its RSS is above this, and the API "
        "answers submissions with 503 while its own is (0 disables both).",
    )
    memory_check_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between RSS readings of the memory guard (the worker's, and "
        "the API's check of each submission).",
    )
    retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Finished jobs older than this are pruned (0 disables pruning).",
    )
    prune_interval: float = Field(default=60.0, gt=0, description="Seconds between pruning passes.")
    poll_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between safety claims when no notice arrives (covers a missed "
        "notice; idle workers are woken by notices, not by this poll).",
    )
    slow_job_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A completed job that ran at least this long is logged at INFO; quicker "
        "ones at DEBUG. Failed attempts are always logged.",
    )
    flush_interval: float = Field(
        default=0.002,
        ge=0,
        description="Seconds a worker holds finished jobs' results for its next claim to "
        "carry them, before it records them on their own.",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: an accepted job survives power loss. NORMAL: faster; a power "
        "loss may drop the last transactions (never corrupts).",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=10_000, ge=0, description="How long SQLite waits for another process's lock."
    )
    sqlite_poll_interval: float = Field(
        default=0.05,
        gt=0,
        description="Seconds between cheap checks (PRAGMA data_version) for commits by "
        "other processes on the same SQLite file.",
    )
    listen: bool = Field(
        default=True,
        description="PostgreSQL: wake workers with LISTEN/NOTIFY. Set false behind PgBouncer in "
        "transaction mode, where LISTEN does not work; workers then rely on the safety poll.",
    )
    handoff: bool = Field(
        default=True,
        description="PostgreSQL: an idle worker offers its free slots, and an enqueue of one "
        "due job hands the job to it (one commit to start instead of two). False: every job "
        "is claimed.",
    )
    pool_size: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="PostgreSQL: pooled connections per process at most; a process also "
        "keeps one of its own for calls that find it free, and one for LISTEN.",
    )
    database_role: str = Field(
        default="auto",
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$",
        description="PostgreSQL: the role the API's calls act as, each in a transaction that "
        "sets its tenant, under row security: auto (conveyor_api once migrated, when the "
        "login role may act as it), none (the login role), or a role's name "
        "(docs/operations.md).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port of the HTTP API.")
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate-limit counters shared by several API processes; unset: "
        "counters in memory.",
    )
    rate_limit_per_ip: str = Field(
        default="200/15minutes",
        description="Requests one client address may make (the seed's 200 per 15 minutes).",
    )
    rate_limit_per_caller: str = Field(
        default="60000/minute",
        description="Requests one authenticated caller (a user or an API key) may make, "
        "unless its tenant has a rate limit of its own; the default lets one backend's key "
        "submit at 1,000 req/s, the API's design rate.",
    )
    login_rate_per_account: str = Field(
        default="10/15minutes",
        description="Login attempts per account (email), failed or not; 429 above.",
    )
    metrics_token: str | None = Field(
        default=None,
        min_length=16,
        description="Unset: /metrics is open. Set: /metrics needs Authorization: Bearer "
        "<this token>.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request head (request line and headers) accepted (431 above).",
    )
    request_read_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's head, and the longest pause "
        "in its body (which must also average 500 bytes/s); 408 after.",
    )
    max_backlog: int = Field(
        default=100_000,
        ge=1,
        description="Due jobs a queue may hold before POSTs to it answer 503 (backpressure).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from a browser.",
    )
    jwt_issuer: str = Field(
        default="conveyor",
        min_length=1,
        description="The iss claim access tokens carry and verification requires.",
    )
    jwt_audience: str = Field(
        default="conveyor-api",
        min_length=1,
        description="The aud claim access tokens carry and verification requires.",
    )
    jwt_leeway_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Clock skew between processes allowed when checking exp and iat.",
    )
    access_token_seconds: int = Field(
        default=900,
        ge=30,
        le=86_400,
        description="Lifetime of an access token (a removed member or disabled user keeps "
        "access at most this long).",
    )
    refresh_token_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="Lifetime of a refresh token; each use rotates it.",
    )
    invitation_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long an invitation can be accepted."
    )
    password_time_cost: int = Field(
        default=3, ge=1, le=100, description="argon2id iterations of a password hash."
    )
    password_memory_kib: int = Field(
        default=65_536,
        ge=8,
        le=4_194_304,
        description="argon2id memory of a password hash, KiB; a login costs this much RAM.",
    )
    password_parallelism: int = Field(
        default=4, ge=1, le=64, description="argon2id lanes of a password hash."
    )
    events: bool = Field(
        default=True,
        description="Write the event log (streams, webhooks, email, Client.wait); off, "
        "jobs run without it and nobody is told.",
    )
    event_retention_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="How long events are kept for clients resuming a stream; the pruner "
        "removes older ones.",
    )
    event_poll_interval: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between reads of the event log when no notice came (notices "
        "lost, or other processes on one SQLite file hear each other by polling).",
    )
    stream_buffer: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Events held for one slow stream client; past it the client is "
        "disconnected with the id to resume from.",
    )
    stream_ping_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive pings on an idle stream."
    )
    stream_token_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long a stream token (for browsers, which cannot set headers on "
        "EventSource or WebSocket) can open a stream.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where users reach this API: links in emails and webhooks start with it "
        "(default: http://CONVEYOR_HOST:CONVEYOR_PORT).",
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a webhook delivery may take, in all."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=50, description="Attempts to deliver one webhook message."
    )
    webhook_disable_after: int = Field(
        default=20,
        ge=1,
        description="Consecutive failed deliveries after which an endpoint is disabled "
        "(and the tenant's owners emailed).",
    )
    webhook_endpoint_concurrency: int = Field(
        default=4, ge=1, le=100, description="Deliveries in flight at once to one endpoint."
    )
    webhook_response_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Bytes of a receiver's answer read at most (the rest is not read).",
    )
    webhook_secret_grace_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        description="How long the previous secret of a rotated endpoint still signs.",
    )
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts, addresses or CIDR networks webhooks (and downloads) may reach "
        "although private or loopback, comma-separated: 127.0.0.1,10.0.0.0/8,hooks.internal.",
    )
    smtp_host: str | None = Field(
        default=None,
        description="SMTP server for notification email; unset, mails are written to the "
        "log instead.",
    )
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP server port.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls (port 587), tls (implicit TLS, port 465) or none (local relays).",
    )
    smtp_username: str | None = Field(default=None, description="SMTP login, if it needs one.")
    smtp_password: str | None = Field(default=None, description="SMTP password.")
    smtp_timeout: float = Field(default=30.0, gt=0, description="Seconds an SMTP send may take.")
    email_from: str = Field(
        default="Conveyor <conveyor@localhost>", description="The From of notification email."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="json for production, console for people; auto picks console on a terminal.",
    )

    @field_validator("imports", "queues", "cors_origins", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _public_url_of_the_listener(self) -> Settings:
        # Unset, the links point where this process listens (a port set, the links follow).
        if "public_url" not in self.model_fields_set:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            # Through __dict__: the URL stays unset, so a copy with another port follows it.
            self.__dict__["public_url"] = f"http://{host}:{self.port}"
        return self

    @model_validator(mode="after")
    def _heartbeat_below_lease(self) -> Settings:
        if self.heartbeat_interval >= self.lease_seconds:
            raise ValueError(
                f"CONVEYOR_HEARTBEAT_INTERVAL ({self.heartbeat_interval}) must be below "
                f"CONVEYOR_LEASE_SECONDS ({self.lease_seconds}), or leases expire between "
                "heartbeats; lower the interval or raise the lease"
            )
        return self
