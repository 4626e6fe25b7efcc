"""Delivering a stream: build a batch from the marks, send it signed, record the answer.

One batch is in flight per stream at a time (``stream_batches``): `pending` returns it
until `acknowledge` records its answer, so a retry (after a 5xx, a timeout, a lost
connection or a killed worker) sends the same records under the same idempotency key,
and a member's records reach the destination in the order they were built.

The request (``POST`` to the destination's URL) is JSON::

    {"stream": "marketing", "batch": 42, "idempotency_key": "stream:marketing:42",
     "sent_at": 1790000000,
     "upserts": [{"key": "alt-1", "program": "coffee", "fields": {"POINTS": 120}}],
     "deletes": [{"key": "alt-2", "program": "coffee"}]}

signed like a webhook message (`loyalty.messages.providers`): ``X-Loyalty-Signature:
sha256=<HMAC-SHA256 of the raw body>``, ``X-Loyalty-Timestamp`` and ``Idempotency-Key``.
An upsert carries the fields that changed since the destination's last record of that
key (every field for a new key or a resync); the receiver merges them. Deletes are
applied before upserts (a changed alt id sends both).

The answer: any 2xx delivers the batch; its body may name refused records,
``{"rejected": [{"key": "alt-1", "reason": "invalid email"}]}`` (a 207, say), which are
recorded in ``stream_rejections`` while the others count as delivered. A 4xx other than
408 and 429 refuses the whole batch: every record in it is recorded as rejected with the
reason the body gives for it, or ``HTTP <status>``. Rejected records are sent again on
the member's next change or a ``resync``. 5xx, 408, 429, timeouts and connection errors
are failures: the batch is retried unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import TypeAdapter

from loyalty.errors import ConfigurationError
from loyalty.messages.providers import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Secrets,
    sign,
)
from loyalty.store.db import Conn
from loyalty.streams.records import Delivered, Item, Mark, plan, read_records
from loyalty.streams.spec import ProfileStream
from loyalty.tiers.schemes import TierScheme

RETRYABLE_STATUSES = frozenset({408, 429})
ITEMS = TypeAdapter(list[Item])


@dataclass(frozen=True)
class Batch:
    """The batch in flight of a stream."""

    stream: str
    batch: int
    idempotency_key: str
    items: list[Item]
    attempts: int

    def body(self, sent_at: int) -> bytes:
        """The raw JSON body, exactly as signed and sent."""
        payload = {
            "stream": self.stream,
            "batch": self.batch,
            "idempotency_key": self.idempotency_key,
            "sent_at": sent_at,
            "upserts": [
                {"key": i.key, "program": i.program, "fields": i.send}
                for i in self.items
                if i.op == "upsert"
            ],
            "deletes": [
                {"key": i.key, "program": i.program} for i in self.items if i.op == "delete"
            ],
        }
        return json.dumps(payload, separators=(",", ":"), default=str).encode()

    def headers(self, body: bytes, sent_at: int, secret: bytes) -> dict[str, str]:
        """The signature headers of ``body``."""
        return {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: self.idempotency_key,
            TIMESTAMP_HEADER: str(sent_at),
            SIGNATURE_HEADER: sign(body, secret),
        }


def idempotency_key(stream: str, batch: int) -> str:
    """The key of a stream's nth batch: the same for every retry of it."""
    return f"stream:{stream}:{batch}"


async def pending(conn: Conn, stream: str) -> Batch | None:
    """The stream's batch in flight, if any."""
    row = await conn.fetchrow(
        "SELECT batch, idempotency_key, items, attempts FROM stream_batches WHERE stream = $1",
        stream,
    )
    if row is None:
        return None
    return Batch(
        stream=stream,
        batch=row["batch"],
        idempotency_key=row["idempotency_key"],
        items=ITEMS.validate_python(row["items"]),
        attempts=row["attempts"],
    )


@dataclass(frozen=True)
class Built:
    """What `build` found: the batch to send (None if nothing differed) and how many
    marked members it read and settled without sending anything."""

    batch: Batch | None
    read: int
    unchanged: int


@dataclass(frozen=True)
class Prepared:
    """The next batch's items, read and diffed but not stored yet, and the marks of the
    members read that have nothing to send (settled when it is stored)."""

    items: list[Item]
    quiet: list[tuple[str, str, int, tuple[int, int]]]
    read: int


async def prepare(
    conn: Conn,
    stream: ProfileStream,
    schemes: Mapping[str, tuple[TierScheme, ...]],
    limit: int,
    busy: Sequence[Item] = (),
) -> Prepared:
    """Read up to ``limit`` marked members (oldest first), except those of ``busy`` (the
    batch in flight), and map and diff them.

    Safe beside the batch in flight: its members are not read, and a mark that changes
    before `store` keeps its row (its version and ``ctid`` no longer match).
    """
    # The batch in flight holds the oldest marks: read past them and leave them out here
    # (an anti-join in SQL read the whole table on statistics of an emptier one).
    skip = {(i.program, i.member_id) for i in busy}
    found = await conn.fetch(
        """SELECT program, member_id, version, full_record, ctid FROM stream_marks
           WHERE stream = $1 ORDER BY marked_at, program, member_id LIMIT $2""",
        stream.name, limit + len(skip),
    )  # fmt: skip
    marks = [m for m in found if (m["program"], m["member_id"]) not in skip][:limit]
    by_program: dict[str, dict[str, Mark]] = {}
    for m in marks:
        by_program.setdefault(m["program"], {})[m["member_id"]] = (
            m["version"], m["full_record"], m["ctid"],
        )  # fmt: skip
    items: list[Item] = []
    for program, marked in sorted(by_program.items()):
        ids = sorted(marked)
        if program not in schemes:
            # A program the stream no longer covers: nothing to send for it.
            current = {}
        else:
            current = await read_records(conn, stream, program, schemes[program], ids)
        delivered = {
            r["member_id"]: Delivered(key=r["key"], fields=r["fields"])
            for r in await conn.fetch(
                """SELECT member_id, key, fields FROM stream_records
                   WHERE stream = $1 AND program = $2 AND member_id = ANY($3::text[])""",
                stream.name, program, ids,
            )
        }  # fmt: skip
        items += plan(stream, program, marked, current, delivered)
    sending = {(i.program, i.member_id) for i in items}
    quiet = [
        (m["program"], m["member_id"], m["version"], m["ctid"])
        for m in marks
        if (m["program"], m["member_id"]) not in sending
    ]
    return Prepared(items, quiet, len(marks))


async def store(conn: Conn, stream: str, prepared: Prepared) -> Built:
    """Settle the quiet marks and store the prepared items as the batch to send."""
    items = prepared.items
    async with conn.transaction():
        await _settle(conn, stream, prepared.quiet)
        if not items:
            return Built(None, prepared.read, len(prepared.quiet))
        number = await conn.fetchval(
            """UPDATE streams SET next_batch = next_batch + 1 WHERE name = $1
               RETURNING next_batch - 1""",
            stream,
        )
        key = idempotency_key(stream, number)
        await conn.execute(
            """INSERT INTO stream_batches (stream, batch, idempotency_key, items)
               VALUES ($1, $2, $3, $4)""",
            stream, number, key, ITEMS.dump_python(items, mode="json"),
        )  # fmt: skip
    return Built(Batch(stream, number, key, items, 0), prepared.read, len(prepared.quiet))


async def build(
    conn: Conn,
    stream: ProfileStream,
    schemes: Mapping[str, tuple[TierScheme, ...]],
    limit: int,
) -> Built:
    """`prepare` then `store`, in one transaction: the next batch when none is in flight."""
    async with conn.transaction():
        prepared = await prepare(conn, stream, schemes, limit)
        return await store(conn, stream.name, prepared)


async def _settle(
    conn: Conn, stream: str, marks: Sequence[tuple[str, str, int, tuple[int, int]]]
) -> None:
    """Delete the marks still at the version read; a newer change keeps its mark.

    The rows are found by their ``ctid`` (a TID scan): the marks table grows and shrinks
    faster than the planner's statistics follow, and a join planned for an empty table
    scanned it once per member.
    """
    if not marks:
        return
    await conn.execute(
        """DELETE FROM stream_marks AS k
           WHERE k.ctid = ANY($2::tid[]) AND k.stream = $1
             AND (k.program, k.member_id, k.version) IN (
                 SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[]))""",
        stream,
        [tuple(m[3]) for m in marks],
        [m[0] for m in marks],
        [m[1] for m in marks],
        [m[2] for m in marks],
    )


@dataclass(frozen=True)
class Answer:
    """What the destination said: delivered (2xx), refused (4xx) or a failure to retry;
    ``rejected`` maps a key to its reason."""

    outcome: str  # delivered | refused | failed
    status: int | None
    rejected: dict[str, str]
    detail: str


def read_answer(status: int, body: bytes) -> Answer:
    """Classify a destination's HTTP answer (see the module for the shape)."""
    rejected: dict[str, str] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("rejected"), list):
        for entry in parsed["rejected"]:
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                reason = entry.get("reason")
                rejected[entry["key"]] = str(reason)[:500] if reason else f"HTTP {status}"
    detail = f"HTTP {status}"
    if 200 <= status < 300:
        return Answer("delivered", status, rejected, detail)
    if 400 <= status < 500 and status not in RETRYABLE_STATUSES:
        return Answer("refused", status, rejected, detail)
    return Answer("failed", status, {}, detail)


@dataclass(frozen=True)
class Acknowledged:
    """Counts of an answered batch."""

    upserts: int
    deletes: int
    rejected: int


async def acknowledge(conn: Conn, batch: Batch, answer: Answer) -> Acknowledged:
    """Record a delivered or refused batch: what the destination now holds, the records it
    refused, the members' marks (settled unless changed since), the stream's counts."""
    refused_all = answer.outcome == "refused"
    done: list[Item] = []
    refused: list[tuple[Item, str]] = []
    for item in batch.items:
        reason = answer.rejected.get(item.key)
        if reason is None and refused_all:
            reason = answer.detail
        if reason is None:
            done.append(item)
        else:
            refused.append((item, reason))
    async with conn.transaction():
        upserts = [i for i in done if i.op == "upsert"]
        deletes = [i for i in done if i.op == "delete"]
        # A member whose old key was deleted and new key upserted keeps the upsert's row.
        kept = {(u.program, u.member_id) for u in upserts}
        gone = [i for i in deletes if (i.program, i.member_id) not in kept]
        await _delete_members(conn, "stream_records", batch.stream, gone)
        if upserts:
            await conn.execute(
                """INSERT INTO stream_records
                       (stream, program, member_id, key, fields, delivered_at, batch)
                   SELECT $1, d.program, d.member_id, d.key, d.fields, now(), $6
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[])
                        AS d(program, member_id, key, fields)
                   ON CONFLICT (stream, program, member_id) DO UPDATE
                   SET key = EXCLUDED.key, fields = EXCLUDED.fields,
                       delivered_at = EXCLUDED.delivered_at, batch = EXCLUDED.batch""",
                batch.stream,
                [i.program for i in upserts],
                [i.member_id for i in upserts],
                [i.key for i in upserts],
                [i.record for i in upserts],
                batch.batch,
            )
        await _delete_members(conn, "stream_rejections", batch.stream, done)
        if refused:
            await conn.execute(
                """INSERT INTO stream_rejections (stream, program, member_id, key, reason, batch)
                   SELECT DISTINCT ON (d.program, d.member_id) $1, d.program, d.member_id,
                          d.key, d.reason, $6
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
                        AS d(program, member_id, key, reason)
                   ORDER BY d.program, d.member_id
                   ON CONFLICT (stream, program, member_id) DO UPDATE
                   SET key = EXCLUDED.key, reason = EXCLUDED.reason, batch = EXCLUDED.batch,
                       rejected_at = now()""",
                batch.stream,
                [i.program for i, _ in refused],
                [i.member_id for i, _ in refused],
                [i.key for i, _ in refused],
                [r for _, r in refused],
                batch.batch,
            )
        members = {(i.program, i.member_id): (i.version, i.mark) for i in batch.items}
        await _settle(
            conn, batch.stream, [(p, m, v, t) for (p, m), (v, t) in sorted(members.items())]
        )
        await conn.execute("DELETE FROM stream_batches WHERE stream = $1", batch.stream)
        await conn.execute(
            """UPDATE streams
               SET batches = batches + 1, requests = requests + 1, upserts = upserts + $2,
                   deletes = deletes + $3, rejected = rejected + $4,
                   last_delivered_at = now()
               WHERE name = $1""",
            batch.stream, len(upserts), len(deletes), len(refused),
        )  # fmt: skip
    return Acknowledged(len(upserts), len(deletes), len(refused))


async def _delete_members(conn: Conn, table: str, stream: str, items: Sequence[Item]) -> None:
    """Delete the stream's rows of ``table`` (records or rejections) for the items' members."""
    if not items:
        return
    await conn.execute(
        f"""DELETE FROM {table} AS r
            USING unnest($2::text[], $3::text[]) AS d(program, member_id)
            WHERE r.stream = $1 AND r.program = d.program AND r.member_id = d.member_id""",
        stream, [i.program for i in items], [i.member_id for i in items],
    )  # fmt: skip


async def record_failure(conn: Conn, batch: Batch, detail: str) -> None:
    """Count a failed attempt of the batch and keep its reason for `loyalty streams status`."""
    await conn.execute(
        """UPDATE streams SET requests = requests + 1, failures = failures + 1,
                              last_error = $2, last_error_at = now()
           WHERE name = $1""",
        batch.stream, detail[:500],
    )  # fmt: skip
    await conn.execute(
        "UPDATE stream_batches SET attempts = attempts + 1 WHERE stream = $1", batch.stream
    )


def stream_secrets(
    streams: Sequence[ProfileStream], environ: Mapping[str, str] | None = None
) -> Secrets:
    """Every stream's secret from the environment, read once when the worker starts.

    Raises:
        ConfigurationError: one line naming every missing variable and its streams.
    """
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for stream in streams:
        name = stream.destination.secret_env
        value = env.get(name)
        if value:
            values[name] = value
        else:
            missing.setdefault(name, []).append(stream.name)
    if missing:
        listed = "; ".join(f"{var} (stream {', '.join(sorted(n))})" for var, n in missing.items())
        raise ConfigurationError(
            f"profile streams need their secret in the environment, missing: {listed}"
        )
    return Secrets(values)
