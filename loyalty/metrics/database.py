"""The gauges read from PostgreSQL: refreshed by the endpoint every few seconds, served
from the last reading at each scrape (a collector is called synchronously, from the
HTTP server's thread, so it never queries).

Each reading is a handful of aggregate queries, each on an index or a small table,
except liability and tiers, which read the accounts and member tiers of every member
(a sequential scan: `LOYALTY_METRICS_REFRESH_SECONDS` bounds how often).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loyalty.ingest.inbox import backlog
from loyalty.store.db import Conn

Labels = tuple[str, ...]

_LIABILITY = """
SELECT program, currency, sum(balance)::bigint AS points
FROM accounts WHERE kind IN ('available', 'earned') GROUP BY 1, 2
"""
_TIERS = "SELECT program, scheme, tier, count(*) AS n FROM member_tiers GROUP BY 1, 2, 3"
_SEGMENTS = """
SELECT s.program, s.name, count(m.member_id) AS n
FROM segments AS s
LEFT JOIN segment_members AS m
  ON m.program = s.program AND m.segment = s.name AND m.in_segment
GROUP BY 1, 2
"""
_STREAMS = """
SELECT s.name, s.enabled, s.batches, s.upserts, s.deletes, s.rejected, s.failures,
       (SELECT count(*) FROM stream_marks AS k WHERE k.stream = s.name) AS pending,
       coalesce(extract(epoch FROM now() - (SELECT min(marked_at) FROM stream_marks AS k
                                            WHERE k.stream = s.name)), 0)::float8 AS lag
FROM streams AS s
"""
_MAINTENANCE = """
SELECT DISTINCT ON (program, scheme) program, scheme,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds,
       extract(epoch FROM finished_at)::float8 AS at
FROM maintenance_runs WHERE finished_at IS NOT NULL
ORDER BY program, scheme, finished_at DESC
"""
_HOUSEKEEPING = """
SELECT DISTINCT ON (program) program,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds,
       extract(epoch FROM finished_at)::float8 AS at
FROM housekeeping_runs WHERE finished_at IS NOT NULL
ORDER BY program, finished_at DESC
"""


@dataclass(frozen=True)
class Reading:
    """One reading of every database gauge, by labels."""

    backlog: dict[Labels, float] = field(default_factory=dict)
    oldest: dict[Labels, float] = field(default_factory=dict)
    liability: dict[Labels, float] = field(default_factory=dict)
    tiers: dict[Labels, float] = field(default_factory=dict)
    segments: dict[Labels, float] = field(default_factory=dict)
    stream_pending: dict[Labels, float] = field(default_factory=dict)
    stream_lag: dict[Labels, float] = field(default_factory=dict)
    stream_enabled: dict[Labels, float] = field(default_factory=dict)
    stream_batches: dict[Labels, float] = field(default_factory=dict)
    stream_records: dict[Labels, float] = field(default_factory=dict)
    stream_failures: dict[Labels, float] = field(default_factory=dict)
    maintenance_seconds: dict[Labels, float] = field(default_factory=dict)
    maintenance_at: dict[Labels, float] = field(default_factory=dict)
    housekeeping_seconds: dict[Labels, float] = field(default_factory=dict)
    housekeeping_at: dict[Labels, float] = field(default_factory=dict)


async def read(conn: Conn, partitions: int, programs: list[str]) -> Reading:
    """Read every gauge; ``programs`` × ``partitions`` get a backlog of 0 when empty."""
    reading = Reading()
    for program in programs:
        for partition in range(partitions):
            reading.backlog[program, str(partition)] = 0
            reading.oldest[program, str(partition)] = 0
    for part in await backlog(conn, partitions):
        labels = (part["program"], str(part["partition"]))
        reading.backlog[labels], reading.oldest[labels] = part["pending"], part["lag_seconds"]
    for r in await conn.fetch(_LIABILITY):
        reading.liability[r["program"], r["currency"]] = r["points"]
    for r in await conn.fetch(_TIERS):
        reading.tiers[r["program"], r["scheme"], r["tier"]] = r["n"]
    for r in await conn.fetch(_SEGMENTS):
        reading.segments[r["program"], r["name"]] = r["n"]
    for r in await conn.fetch(_STREAMS):
        name = (r["name"],)
        reading.stream_pending[name], reading.stream_lag[name] = r["pending"], r["lag"]
        reading.stream_enabled[name] = 1 if r["enabled"] else 0
        reading.stream_batches[name], reading.stream_failures[name] = r["batches"], r["failures"]
        for kind in ("upserts", "deletes", "rejected"):
            reading.stream_records[r["name"], kind.removesuffix("s")] = r[kind]
    for r in await conn.fetch(_MAINTENANCE):
        labels = (r["program"], r["scheme"])
        reading.maintenance_seconds[labels], reading.maintenance_at[labels] = r["seconds"], r["at"]
    for r in await conn.fetch(_HOUSEKEEPING):
        reading.housekeeping_seconds[r["program"],] = r["seconds"]
        reading.housekeeping_at[r["program"],] = r["at"]
    return reading


# (attribute of Reading, metric name, kind, help, label names)
FAMILIES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("backlog", "loyalty_router_backlog", "gauge",
     "Events pending in the inbox, by program and router partition.", ("program", "partition")),
    ("oldest", "loyalty_router_oldest_pending_seconds", "gauge",
     "Age of the oldest pending event of the partition (0 when none).",
     ("program", "partition")),
    ("liability", "loyalty_liability_points", "gauge",
     "Outstanding points (available and earned balances) by program and currency.",
     ("program", "currency")),
    ("tiers", "loyalty_members_by_tier", "gauge",
     "Members in each tier of each tier scheme.", ("program", "scheme", "tier")),
    ("segments", "loyalty_segment_members", "gauge",
     "Members in each segment.", ("program", "segment")),
    ("stream_pending", "loyalty_stream_pending_members", "gauge",
     "Members with changes the profile stream has not delivered yet.", ("stream",)),
    ("stream_lag", "loyalty_stream_lag_seconds", "gauge",
     "Age of the oldest change the profile stream has not delivered (0 when none).",
     ("stream",)),
    ("stream_enabled", "loyalty_stream_enabled", "gauge",
     "1 when the profile stream is enabled, 0 when disabled.", ("stream",)),
    ("stream_batches", "loyalty_stream_batches", "counter",
     "Batches the profile stream delivered.", ("stream",)),
    ("stream_records", "loyalty_stream_records", "counter",
     "Records the profile stream delivered, by kind: upsert, delete, rejected.",
     ("stream", "kind")),
    ("stream_failures", "loyalty_stream_failures", "counter",
     "Failed delivery attempts of the profile stream.", ("stream",)),
    ("maintenance_seconds", "loyalty_maintenance_last_run_duration_seconds", "gauge",
     "Duration of the last finished tier maintenance run.", ("program", "scheme")),
    ("maintenance_at", "loyalty_maintenance_last_run_timestamp_seconds", "gauge",
     "When the last tier maintenance run finished (Unix time).", ("program", "scheme")),
    ("housekeeping_seconds", "loyalty_housekeeping_last_run_duration_seconds", "gauge",
     "Duration of the last finished housekeeping run.", ("program",)),
    ("housekeeping_at", "loyalty_housekeeping_last_run_timestamp_seconds", "gauge",
     "When the last housekeeping run finished (Unix time).", ("program",)),
)  # fmt: skip


class DatabaseGauges(Collector):
    """Serves the last `Reading`; `loyalty_database_up` says whether it is current."""

    def __init__(self) -> None:
        self.reading: Reading | None = None
        self.up = False
        self.read_at = 0.0

    def update(self, reading: Reading) -> None:
        """Keep a new reading (one reference swap: the scraping thread sees one or the
        other, never half of each)."""
        self.reading, self.up, self.read_at = reading, True, time.time()

    def failed(self) -> None:
        """The last reading failed: the previous values stay, marked stale."""
        self.up = False

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The metric families of the last reading."""
        up = GaugeMetricFamily(
            "loyalty_database_up", "1 when the last reading of the database gauges succeeded."
        )
        up.add_metric([], 1 if self.up else 0)
        yield up
        at = GaugeMetricFamily(
            "loyalty_database_read_timestamp_seconds",
            "When the database gauges were last read (Unix time).",
        )
        at.add_metric([], self.read_at)
        yield at
        reading = self.reading or Reading()
        for attribute, name, kind, doc, labels in FAMILIES:
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=labels)
            else:
                family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in getattr(reading, attribute).items():
                family.add_metric(list(values), value)
            yield family
