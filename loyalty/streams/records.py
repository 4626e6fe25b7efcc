"""A stream's records: each marked member's mapped fields now, and what to send of them.

`read_records` reads the members of one program set-based (one query per part of the
state the stream maps) and maps them: ``key`` is None for a member without a key value
and ``fields`` is None for an erased one. `plan` compares them with what the destination
last received (`Delivered`) and returns the items of a batch:

- a member never sent: an upsert of every field;
- a changed key (a new alt id): a delete of the old key, then an upsert of every field
  under the new one;
- otherwise an upsert of only the fields whose value differs (all of them for a resync),
  or nothing at all when none does;
- an erased member, or one whose key value is gone: a delete of the key last sent (when
  the stream sends deletes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict

from loyalty.store.db import Conn
from loyalty.streams.spec import ProfileStream, Source, parse_source
from loyalty.tiers.promotion import WINDOW_START
from loyalty.tiers.schemes import TierScheme

_MISSING = object()


@dataclass(frozen=True)
class Current:
    """A member's record now: ``key`` None without a key value, ``fields`` None if erased."""

    key: str | None
    fields: dict[str, Any] | None


# A member's mark as read: (version, send every field, its row's ctid).
Mark = tuple[int, bool, tuple[int, int]]


@dataclass(frozen=True)
class Delivered:
    """What the destination last received for a member."""

    key: str
    fields: dict[str, Any]


class Item(BaseModel):
    """One record of a batch, as stored in ``stream_batches`` until it is answered.

    ``send`` is what goes out (the fields of an upsert), ``record`` what the destination
    holds once it is delivered (None after a delete), ``version`` and ``mark`` the
    version and the row (``ctid``) of the member's mark as read: a change since then
    rewrites the row, so the mark is deleted only if both still hold.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    member_id: str
    version: int
    mark: tuple[int, int]
    op: str  # upsert | delete
    key: str
    send: dict[str, Any] | None = None
    record: dict[str, Any] | None = None


def _profile_value(profile: Mapping[str, Any] | None, parts: Iterable[str]) -> Any:
    value: Any = profile or {}
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


async def read_records(
    conn: Conn,
    stream: ProfileStream,
    program: str,
    schemes: tuple[TierScheme, ...],
    ids: list[str],
) -> dict[str, Current]:
    """The current record of each member of ``ids`` in ``program`` (members the program
    does not know at all are left out)."""
    sources = stream.sources()
    kinds = {s.kind for s in sources.values()}
    members = {
        r["member_id"]: r
        for r in await conn.fetch(
            """SELECT member_id, profile, created_at, erased_at FROM members
               WHERE program = $1 AND member_id = ANY($2::text[])""",
            program, ids,
        )
    }  # fmt: skip
    balances: dict[str, dict[tuple[str, str], int]] = {}
    if "balances" in kinds:
        for r in await conn.fetch(
            """SELECT member_id, currency, kind, balance FROM accounts
               WHERE program = $1 AND member_id = ANY($2::text[])""",
            program, ids,
        ):  # fmt: skip
            balances.setdefault(r["member_id"], {})[(r["currency"], r["kind"])] = r["balance"]
        for r in await conn.fetch(
            """SELECT member_id, currency, lifetime_earned FROM member_currencies
               WHERE program = $1 AND member_id = ANY($2::text[])""",
            program, ids,
        ):  # fmt: skip
            pair = (r["currency"], "lifetime_earned")
            balances.setdefault(r["member_id"], {})[pair] = r["lifetime_earned"]
    tiers = await _tiers(conn, program, schemes, ids, sources.values())
    segments: dict[str, set[str]] = {}
    if "segments" in kinds:
        names = sorted({s.parts[0] for s in sources.values() if s.kind == "segments"})
        for r in await conn.fetch(
            """SELECT member_id, segment FROM segment_members
               WHERE program = $1 AND segment = ANY($3::text[]) AND member_id = ANY($2::text[])
                 AND in_segment""",
            program, ids, names,
        ):  # fmt: skip
            segments.setdefault(r["member_id"], set()).add(r["segment"])
    key_source = parse_source(stream.key)
    result: dict[str, Current] = {}
    for member_id in ids:
        row = members.get(member_id)
        if row is None and member_id not in balances and member_id not in tiers:
            continue
        profile = row["profile"] if row is not None else {}
        if row is not None and row["erased_at"] is not None:
            result[member_id] = Current(key=None, fields=None)
            continue
        if key_source.kind == "member_id":
            key: str | None = member_id
        else:
            found = _profile_value(profile, key_source.parts)
            key = None if found is None or found == "" else str(found)
        fields: dict[str, Any] = {}
        for target, source in sources.items():
            fields[target] = _value(
                source, member_id, row, profile, balances.get(member_id, {}),
                tiers.get(member_id, {}), segments.get(member_id, set()),
            )  # fmt: skip
        result[member_id] = Current(key=key, fields=fields)
    return result


async def _tiers(
    conn: Conn,
    program: str,
    schemes: tuple[TierScheme, ...],
    ids: list[str],
    sources: Iterable[Source],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per member and scheme: tier, qualifying, next_tier, to_next (only what is mapped)."""
    wanted: dict[str, set[str]] = {}
    for source in sources:
        if source.kind == "tier" and schemes:
            wanted.setdefault(schemes[0].name, set()).add("tier")
        elif source.kind == "tiers":
            part = source.parts[1] if len(source.parts) > 1 else "tier"
            wanted.setdefault(source.parts[0], set()).add(part)
    if not wanted:
        return {}
    ranks: dict[tuple[str, str], int] = {
        (r["member_id"], r["scheme"]): r["rank"]
        for r in await conn.fetch(
            """SELECT member_id, scheme, rank FROM member_tiers
               WHERE program = $1 AND member_id = ANY($2::text[]) AND scheme = ANY($3::text[])""",
            program, ids, list(wanted),
        )
    }  # fmt: skip
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for scheme in schemes:
        parts = wanted.get(scheme.name)
        if parts is None:
            continue
        measures: dict[str, int] = {}
        if parts & {"qualifying", "to_next"}:
            kind, length = scheme.window_sql_args()
            # One aggregate over the members' rows, not a subquery per member: planned on
            # statistics older than a fast-growing table, the latter scanned it per member.
            start = WINDOW_START.format(at="now()", kind="$4", length="$5")
            measures = {
                r["member_id"]: r["measure"]
                for r in await conn.fetch(
                    f"""SELECT q.member_id, sum(q.points)::bigint AS measure
                        FROM qualifying_points AS q
                        WHERE q.program = $1 AND q.member_id = ANY($2::text[])
                          AND q.currency = $3 AND q.earned_at <= now() AND q.earned_at > {start}
                        GROUP BY q.member_id""",
                    program, ids, scheme.currency or "points", kind, length,
                )
            }  # fmt: skip
        for member_id in ids:
            rank = min(ranks.get((member_id, scheme.name), 0) or 0, len(scheme.tiers) - 1)
            upper = scheme.tiers[rank + 1] if rank + 1 < len(scheme.tiers) else None
            qualifying = int(measures.get(member_id, 0) or 0)
            result.setdefault(member_id, {})[scheme.name] = {
                "tier": scheme.tiers[rank].name,
                "qualifying": qualifying,
                "next_tier": upper.name if upper else None,
                "to_next": max(0, upper.threshold - qualifying) if upper else None,
            }
    return result


def _value(
    source: Source,
    member_id: str,
    row: Any,
    profile: Mapping[str, Any] | None,
    balances: Mapping[tuple[str, str], int],
    tiers: Mapping[str, dict[str, Any]],
    segments: set[str],
) -> Any:
    if source.kind == "member_id":
        return member_id
    if source.kind == "enrolled_at":
        return row["created_at"].isoformat() if row is not None else None
    if source.kind == "tier":
        first = next(iter(tiers.values()), None)
        return first["tier"] if first else None
    if source.kind == "tiers":
        part = source.parts[1] if len(source.parts) > 1 else "tier"
        return tiers.get(source.parts[0], {}).get(part)
    if source.kind == "balances":
        currency, part = source.parts
        if part == "debt":
            # The debt account holds what the member owes as a negative balance.
            return -balances.get((currency, "debt"), 0)
        return balances.get((currency, part), 0)
    if source.kind == "profile":
        return _profile_value(profile, source.parts)
    if source.kind == "segments":
        return source.parts[0] in segments
    raise AssertionError(f"unknown source {source.path}")


def _item(
    program: str,
    member_id: str,
    version: int,
    mark: tuple[int, int],
    op: str,
    key: str,
    send: dict[str, Any] | None,
    record: dict[str, Any] | None,
) -> Item:
    # Built from values read here, so not validated again (a batch has 1,000 of them).
    return Item.model_construct(
        program=program, member_id=member_id, version=version, mark=mark, op=op, key=key,
        send=send, record=record,
    )  # fmt: skip


def plan(
    stream: ProfileStream,
    program: str,
    marks: Mapping[str, Mark],
    current: Mapping[str, Current],
    delivered: Mapping[str, Delivered],
) -> list[Item]:
    """The items to send for the marked members."""
    items: list[Item] = []
    for member_id, (version, full, mark) in marks.items():
        now = current.get(member_id)
        last = delivered.get(member_id)

        item = partial(_item, program, member_id, version, mark)
        if now is None or now.fields is None or now.key is None:
            if last is not None and stream.deletes:
                items.append(item("delete", last.key, None, None))
            continue
        if last is not None and last.key != now.key:
            if stream.deletes:
                items.append(item("delete", last.key, None, None))
            last = None
        if last is None or full:
            send = dict(now.fields)
        else:
            send = {
                name: value
                for name, value in now.fields.items()
                if last.fields.get(name, _MISSING) != value
            }
        if send:
            items.append(item("upsert", now.key, send, now.fields))
    return items
