"""API keys: created once and shown once, stored as a hash, checked in constant time.

A key reads ``lfk_<id>_<secret>``: the 12 hex digits of its id find its row, and the
SHA-256 of its 43-character secret (256 random bits) must equal the stored hash. A
secret that random needs no slow password hash: nobody can guess it, and a stolen table
does not give it away. The comparison is `hmac.compare_digest`, and an unknown id is
compared against a hash too, so a wrong key takes as long as a right one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel

from loyalty.errors import InvalidInput
from loyalty.store.db import Conn

Scope = Literal["events:write", "members:read", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
PREFIX = "lfk_"
_SHAPE = re.compile(r"^lfk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# Compared with when the id is unknown, so that the answer takes the same time.
_NOBODY = hashlib.sha256(b"no such key").digest()


class ApiKey(BaseModel):
    """A key as listed: never its secret."""

    id: str
    name: str
    program: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        """Whether the key has ``scope``; ``admin`` has every scope of its program."""
        return scope in self.scopes or "admin" in self.scopes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(
    conn: Conn, program: str, scopes: list[str], name: str | None
) -> tuple[ApiKey, str]:
    """Create a key; returns it and its whole text, which nothing can show again.

    Raises:
        InvalidInput: an unknown scope or program, or an empty scope list.
    """
    problems = [f"scope: unknown scope {s!r}; expected one of: {', '.join(SCOPES)}"
                for s in scopes if s not in SCOPES]  # fmt: skip
    if not scopes:
        problems.append(f"scope: give at least one of: {', '.join(SCOPES)}")
    if name is not None and not 1 <= len(name) <= 128:
        problems.append("name: must be 1 to 128 characters")
    if not await conn.fetchval("SELECT 1 FROM programs WHERE name = $1", program):
        problems.append(f"program: unknown program {program!r}")
    if problems:
        raise InvalidInput(problems)
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        """INSERT INTO api_keys (id, name, program, scopes, secret_sha256)
           VALUES ($1, $2, $3, $4, $5) RETURNING *""",
        key_id, name or f"key {key_id}", program, sorted(set(scopes)), _digest(secret),
    )  # fmt: skip
    assert row is not None
    return _key(row), f"{PREFIX}{key_id}_{secret}"


async def check_key(conn: Conn, text: str) -> ApiKey | None:
    """The live key that ``text`` is, or None (malformed, unknown, wrong or revoked)."""
    shape = _SHAPE.match(text)
    key_id, secret = shape.groups() if shape else ("", text)
    row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id) if shape else None
    expected = bytes(row["secret_sha256"]) if row is not None else _NOBODY
    matches = hmac.compare_digest(expected, _digest(secret))
    if row is None or not matches or row["revoked_at"] is not None:
        return None
    await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)
    return _key(row)


async def list_keys(conn: Conn, program: str | None = None) -> list[ApiKey]:
    """Every key (of ``program``), oldest first; revoked ones too, marked."""
    rows = await conn.fetch(
        "SELECT * FROM api_keys WHERE $1::text IS NULL OR program = $1 ORDER BY created_at, id",
        program,
    )
    return [_key(r) for r in rows]


async def revoke_key(conn: Conn, key_id: str) -> ApiKey | None:
    """Revoke a key by id (or whole text); None if there is no such key."""
    shape = _SHAPE.match(key_id)
    row = await conn.fetchrow(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE id = $1 RETURNING *""",
        shape.group(1) if shape else key_id,
    )
    return _key(row) if row is not None else None


def _key(row: object) -> ApiKey:
    return ApiKey.model_validate(dict(row))  # type: ignore[call-overload]
