"""Bulk adjustments: a CSV file of point corrections, validated line by line, then applied.

The header row names the columns: ``member_id``, ``points``, ``kind``, ``reason``, and
optionally ``currency`` (default: the program's first), ``program`` (default:
``--program``, else ``default``) and ``id``. Positive ``points`` give a lot of that
``kind`` (``available`` now, ``earned`` after the program's waiting period; expiring by
the program's policy); negative points take them from the member's ``kind`` account
(counted as ``redeemed``, like a withdrawal through the API). Blank lines are skipped,
values stripped, an empty optional value means its default. Line numbers are the file's,
the header being line 1; a quoted value may span lines, its record has its first line.

Every line is validated first; an invalid line is rejected (one problem per column at
fault) and the others are still applied, each in its own transaction, so that a line
the ledger refuses (``insufficient_points``, ``unknown_member``) undoes nothing else.
Points for a member the program has never seen are refused as ``unknown_member`` unless
the run creates members (``--create-members``).

Idempotency, per line: the ledger key of a line is ``adjust:<id>`` when the ``id``
column gives one, else ``adjust:<first 16 hex digits of the SHA-256 of the whole
file>:<line number>``. Running the same file again (after success or an interruption)
applies nothing twice; those lines are reported as already applied. Editing the file
changes its hash, hence every key: each line, even one already applied, would be applied
again. Files that are edited and run again must therefore carry an ``id`` column; an id
names its adjustment for good (changing its line later does not apply it again).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

from loyalty.app import LoyaltyApp
from loyalty.errors import AdjustmentFileError, LedgerRefusal
from loyalty.events import MAX_POINTS, PointKind
from loyalty.ledger import postings
from loyalty.ledger.watching import watching
from loyalty.models import Model
from loyalty.store.db import Conn

REQUIRED_COLUMNS = ("member_id", "points", "kind", "reason")
OPTIONAL_COLUMNS = ("currency", "program", "id")
KINDS: tuple[PointKind, ...] = ("available", "earned")
MAX_MEMBER_ID = 128
MAX_REASON = 200
MAX_ID = 128
KEY_PREFIX = "adjust:"

_INTEGER = re.compile(r"[+-]?[0-9]+")
_ENROL = "INSERT INTO members (program, member_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
_ENROLLED = "SELECT EXISTS (SELECT FROM members WHERE program = $1 AND member_id = $2)"


class Adjustment(Model):
    """One valid line, ready to apply."""

    line: int
    key: str
    source: str
    program: str
    member_id: str
    currency: str
    kind: PointKind
    points: int
    reason: str


class LineResult(Model):
    """What became of one line.

    A rejected line has a ``code`` (``invalid``, or the ledger's, e.g.
    ``insufficient_points``) and a ``detail``; an invalid line also lists its
    ``problems``, one per column at fault, each starting with the column's name.
    """

    line: int
    member_id: str
    program: str
    status: Literal["applied", "already_applied", "rejected"]
    code: str | None = None
    detail: str | None = None
    problems: tuple[str, ...] = ()


class ParsedFile(Model):
    """A file split into the adjustments to apply and the lines rejected as invalid."""

    digest: str
    adjustments: tuple[Adjustment, ...]
    invalid: tuple[LineResult, ...]


class Summary(Model):
    """Counts of a run and every rejected line, in file order."""

    applied: int
    already_applied: int
    rejected: tuple[LineResult, ...]


def read_file(path: Path) -> bytes:
    """The file's bytes.

    Raises:
        AdjustmentFileError: the file cannot be read.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AdjustmentFileError([f"file: cannot read {str(path)!r}: {exc.strerror}"]) from None


def file_digest(data: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of the file: part of every line's key."""
    return hashlib.sha256(data).hexdigest()[:16]


def _records(data: bytes) -> list[tuple[int, list[str]]]:
    """The file's CSV records, each with the line it starts on; blank lines left out."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdjustmentFileError([f"file: not UTF-8 text (byte {exc.start})"]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                records.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise AdjustmentFileError([f"line {reader.line_num}: not valid CSV: {exc}"]) from None
    return records


def _header(records: list[tuple[int, list[str]]]) -> list[str]:
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    names = [cell.strip().lower() for cell in records[0][1]] if records else []
    # A first line that names no column at all is data, not a header with typos.
    if not records or records[0][0] != 1 or not set(names) & set(known):
        expected = ",".join(REQUIRED_COLUMNS)
        raise AdjustmentFileError([f"line 1: no header row; expected at least {expected}"])
    problems = [f"column {name!r}: unknown column; known: {', '.join(known)}"
                for name in names if name not in known]  # fmt: skip
    problems += [f"column {name}: appears {names.count(name)} times"
                 for name in known if names.count(name) > 1]  # fmt: skip
    problems += [f"column {name}: missing from the header (line 1)"
                 for name in REQUIRED_COLUMNS if name not in names]  # fmt: skip
    if problems:
        raise AdjustmentFileError(problems)
    return names


def parse(data: bytes, app: LoyaltyApp, *, program: str = "default", name: str = "-") -> ParsedFile:
    """Validate every line of a file; the valid ones become adjustments.

    Args:
        data: the file's bytes (its hash is part of each line's key).
        app: the programs lines may name, with their currencies and policies.
        program: the program of lines without a ``program`` value.
        name: the file's name, recorded as the source of each ledger transaction.

    Raises:
        AdjustmentFileError: the file is not UTF-8 CSV or its header is not valid.
    """
    records = _records(data)
    header = _header(records)
    digest = file_digest(data)
    adjustments: list[Adjustment] = []
    invalid: list[LineResult] = []
    ids: dict[tuple[str, str], int] = {}
    for line, row in records[1:]:
        values = {column: cell.strip() for column, cell in zip(header, row, strict=False)}
        problems = [f"{column}: missing (the line has {len(row)} values, the header "
                    f"{len(header)})" for column in header[len(row):]]  # fmt: skip
        if len(row) > len(header):
            problems.append(
                f"unknown column: the line has {len(row)} values, the header names {len(header)}"
            )
        # PostgreSQL text cannot hold NUL; other values are checked column by column.
        problems += [f"{column}: contains a NUL character" for column in header
                     if "\0" in values.get(column, "")]  # fmt: skip
        problems += _check(values, app, program)
        member_id = values.get("member_id", "")
        program_name = values.get("program") or program
        explicit_id = values.get("id", "")
        if explicit_id and len(explicit_id) <= MAX_ID:
            first = ids.setdefault((program_name, explicit_id), line)
            if first != line:
                problems.append(f"id: {explicit_id!r} is already the id of line {first}")
        if problems:
            invalid.append(
                LineResult(line=line, member_id=member_id, program=program_name,
                           status="rejected", code="invalid", detail="; ".join(problems),
                           problems=tuple(problems))
            )  # fmt: skip
            continue
        currency = values.get("currency") or app.programs[program_name].currencies[0]
        kind: PointKind = "earned" if values["kind"] == "earned" else "available"
        key = f"{KEY_PREFIX}{explicit_id}" if explicit_id else f"{KEY_PREFIX}{digest}:{line}"
        adjustments.append(
            Adjustment(line=line, key=key, source=f"adjust:{name}:{line}", program=program_name,
                       member_id=member_id, currency=currency, kind=kind,
                       points=int(values["points"]), reason=values["reason"])
        )  # fmt: skip
    return ParsedFile(digest=digest, adjustments=tuple(adjustments), invalid=tuple(invalid))


def _check(values: dict[str, str], app: LoyaltyApp, default_program: str) -> list[str]:
    """The problems of one line's values, one per column; a missing column is not checked."""
    problems: list[str] = []
    if "member_id" in values:
        problems += _text("member_id", values["member_id"], MAX_MEMBER_ID)
    if "points" in values:
        points = values["points"]
        if not _INTEGER.fullmatch(points):
            problems.append(f"points: not an integer: {points!r}")
        elif int(points) == 0:
            problems.append("points: zero; give a positive or a negative number")
        elif abs(int(points)) > MAX_POINTS:
            problems.append(f"points: more than {MAX_POINTS} either way: {points}")
    if "kind" in values and values["kind"] not in KINDS:
        problems.append(f"kind: unknown kind {values['kind']!r}; expected {' or '.join(KINDS)}")
    if "reason" in values:
        problems += _text("reason", values["reason"], MAX_REASON)
    if values.get("id"):
        problems += _text("id", values["id"], MAX_ID)
    program_name = values.get("program") or default_program
    program = app.program(program_name)
    if program is None:
        problems.append(
            f"program: unknown program {program_name!r}; known: {', '.join(app.programs)}"
        )
    elif values.get("currency") and values["currency"] not in program.currencies:
        problems.append(
            f"currency: program {program_name!r} has no currency {values['currency']!r}; "
            f"it has {', '.join(program.currencies)}"
        )
    return problems


def _text(column: str, value: str, limit: int) -> list[str]:
    if not value:
        return [f"{column}: empty"]
    if len(value) > limit:
        return [f"{column}: {len(value)} characters, at most {limit}"]
    return []


async def apply_one(
    conn: Conn, app: LoyaltyApp, a: Adjustment, now: datetime, *, create_members: bool = False
) -> LineResult:
    """Apply one adjustment in its own transaction; a ledger refusal rejects the line.

    ``now`` is when every adjustment of a run occurs: points given as ``earned`` become
    available after the program's waiting period from then, and lots expire by the
    program's expiry policy counted from then.

    Points for a member the program has never seen are refused (``unknown_member``): a
    typo in a member id must not create a member with points. With ``create_members``
    they enrol the member, in the same transaction, which also derives the
    ``points_above`` crossings of the line (`loyalty.ledger.watching`, id
    ``points_above:<line key>:<x>``).
    """
    program = app.programs[a.program]
    try:
        async with (
            conn.transaction(),
            watching(conn, app, a.program, a.member_id, key=a.key, occurred_at=now),
        ):
            if a.points > 0:
                if create_members:
                    await conn.execute(_ENROL, a.program, a.member_id)
                elif not await conn.fetchval(_ENROLLED, a.program, a.member_id):
                    raise LedgerRefusal(
                        "unknown_member",
                        f"member {a.member_id!r} is unknown in program {a.program!r}; "
                        "give --create-members to enrol new members",
                    )
                available_at = now + program.earned_waiting_period if a.kind == "earned" else now
                receipt = await postings.award(
                    conn, program=a.program, member_id=a.member_id, points=a.points,
                    kind=a.kind, currency=a.currency, reason=a.reason, source=a.source,
                    key=a.key, occurred_at=now, available_at=available_at,
                    expires_at=program.lot_expiry(a.currency, now),
                )  # fmt: skip
            else:
                receipt = await postings.spend(
                    conn, program=a.program, member_id=a.member_id, points=-a.points,
                    kind=a.kind, currency=a.currency, reason=a.reason, source=a.source,
                    key=a.key, occurred_at=now,
                )  # fmt: skip
    except LedgerRefusal as refusal:
        return LineResult(line=a.line, member_id=a.member_id, program=a.program,
                          status="rejected", code=refusal.code, detail=str(refusal))  # fmt: skip
    return LineResult(line=a.line, member_id=a.member_id, program=a.program,
                      status="already_applied" if receipt.duplicate else "applied")  # fmt: skip


def summarize(results: Sequence[LineResult]) -> Summary:
    """Count applied and already applied lines; list the rejected ones by line number."""
    return Summary(
        applied=sum(r.status == "applied" for r in results),
        already_applied=sum(r.status == "already_applied" for r in results),
        rejected=tuple(
            sorted((r for r in results if r.status == "rejected"), key=lambda r: r.line)
        ),
    )
