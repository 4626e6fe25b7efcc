"""Profile streams in code: which member fields go to which destination field, and where.

    ProfileStream(
        "marketing", programs=["coffee"],
        destination=HttpDestination(url="https://lists.example/loyalty", secret_env="LIST_SECRET"),
        key="profile.alt_id",
        fields={"LOYALTY_TIER": "tier", "POINTS": "balances.points.available",
                "NEXT_TIER_IN": "tiers.main.to_next", "EMAIL_OPTIN": "profile.consent.email",
                "ALMOST_GOLD": "segments.almost-gold"},
    )

A source path names one value of a member's state (`SOURCES` lists them):

- ``member_id``, ``enrolled_at``;
- ``tier``: the tier in the program's first tier scheme;
- ``tiers.<scheme>`` (the tier), ``tiers.<scheme>.tier|qualifying|to_next|next_tier``;
- ``balances.<currency>.available|earned|debt|lifetime_earned``;
- ``profile.<field>[.<field>…]``: a value inside the profile (null when absent);
- ``segments.<segment>``: true while the member is in the segment.

The key is ``member_id`` or a ``profile.<field>`` path (an alt id such as Selligent's
``profileAltId``); a member without a value there is not sent. Wrong values of a field raise
`ConfigurationError` where the stream is written; what depends on the programs (an unknown
currency, scheme or segment) is refused by `check_streams` when the app is created, one
line per problem naming the stream and the field. A definition, no SQL and no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyalty.messages.providers import unreserved_headers
from loyalty.segments.spec import ProgramShape

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
FIELD_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
_PROFILE_PATH = re.compile(r"^profile(\.[A-Za-z0-9_-]+)+$")
# What a source path reads, by its first part: the tables whose changes mark the member.
_TABLES = {
    "member_id": ("members",),
    "enrolled_at": ("members",),
    "tier": ("members", "member_tiers"),
    "tiers": ("member_tiers", "qualifying_points", "members"),
    "balances": ("accounts", "member_currencies"),
    "profile": ("members",),
    "segments": ("segment_members",),
}
SOURCES = (
    "member_id",
    "enrolled_at",
    "tier",
    "tiers.<scheme>[.tier|.qualifying|.to_next|.next_tier]",
    "balances.<currency>.available|earned|debt|lifetime_earned",
    "profile.<field>[.<field>…]",
    "segments.<segment>",
)
TIER_PARTS = ("tier", "qualifying", "to_next", "next_tier")
BALANCE_PARTS = ("available", "earned", "debt", "lifetime_earned")


@dataclass(frozen=True)
class Source:
    """A parsed source path: ``kind`` (its first part) and the parts after it."""

    path: str
    kind: str
    parts: tuple[str, ...]

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables whose changes can change this value."""
        return _TABLES[self.kind]


def parse_source(path: str) -> Source:
    """A source path's parts, or `ValueError` saying what is wrong with its shape."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{path!r} is not a source path")
    parts = tuple(path.split("."))
    kind, rest = parts[0], parts[1:]
    if kind in ("member_id", "enrolled_at", "tier") and not rest:
        return Source(path, kind, rest)
    if kind == "tiers" and len(rest) in (1, 2) and (len(rest) == 1 or rest[1] in TIER_PARTS):
        return Source(path, kind, rest)
    if kind == "balances" and len(rest) == 2 and rest[1] in BALANCE_PARTS:
        return Source(path, kind, rest)
    if kind == "profile" and _PROFILE_PATH.match(path):
        return Source(path, kind, rest)
    if kind == "segments" and len(rest) == 1 and rest[0]:
        return Source(path, kind, rest)
    raise ValueError(f"{path!r} is not a source path; sources: {'; '.join(SOURCES)}")


class HttpDestination(BaseModel):
    """Where a stream sends its batches: signed JSON POSTs (see `loyalty.streams`).

    Attributes:
        url: the list's endpoint (http or https).
        secret_env: the environment variable holding the HMAC secret; read when the
            worker starts, which refuses to start without it.
        batch_size: records per request, at most 1,000.
        timeout_seconds: for each attempt (connect, write, read); at most 60.
        headers: extra headers for every request (not the signature headers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(pattern=r"^https?://\S+$")
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batch_size: int = Field(500, ge=1, le=1000)
    timeout_seconds: float = Field(10.0, gt=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, headers: dict[str, str]) -> dict[str, str]:
        return unreserved_headers(headers)


class ProfileStream(BaseModel):
    """A stream of member fields to a marketing list, kept current on every change.

    Attributes:
        name: the stream's name (its workflow id and CLI name).
        programs: the programs whose members it sends.
        destination: where to send (`HttpDestination`).
        key: ``member_id`` or ``profile.<field>``: what identifies the contact in the list.
        fields: the list's field name → a source path (see the module).
        deletes: send a delete for the key when the member is erased (``member_deleted``);
            False: send nothing more for the member.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    programs: tuple[str, ...] = Field(min_length=1)
    destination: HttpDestination
    key: str = "member_id"
    fields: dict[str, str] = Field(min_length=1)
    deletes: bool = True

    def __init__(self, name: str | None = None, /, **data: Any) -> None:
        if name is not None:
            data["name"] = name
        super().__init__(**data)

    @field_validator("programs")
    @classmethod
    def _distinct(cls, programs: tuple[str, ...]) -> tuple[str, ...]:
        doubled = sorted({p for p in programs if programs.count(p) > 1})
        if doubled:
            raise ValueError(f"programs named twice: {', '.join(doubled)}")
        return programs

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        if key != "member_id" and not _PROFILE_PATH.match(key):
            raise ValueError(f"{key!r}: the key is member_id or a profile.<field> path")
        return key

    @model_validator(mode="after")
    def _paths(self) -> ProfileStream:
        problems = []
        for target, path in self.fields.items():
            if not re.match(FIELD_PATTERN, target):
                problems.append(
                    f"field {target!r}: a destination field is a letter then letters, "
                    "digits, '_', '.' or '-', at most 64"
                )
            try:
                parse_source(path)
            except ValueError as exc:
                problems.append(f"field {target!r}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def sources(self) -> dict[str, Source]:
        """The parsed source of each destination field."""
        return {target: parse_source(path) for target, path in self.fields.items()}

    def tables(self) -> list[str]:
        """The tables whose changes mark a member for this stream (sorted)."""
        found = {t for s in self.sources().values() for t in s.tables}
        found.add("members")  # erasure and the profile key
        return sorted(found)

    def definition(self) -> dict[str, Any]:
        """The stored definition (JSON): everything but the secret's value, never known."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A hash of the definition: a changed one re-sends what it changes."""
        text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_streams(
    streams: Sequence[Any],
    programs: Mapping[str, ProgramShape],
    segments: Mapping[str, Mapping[str, object]],
) -> list[str]:
    """Problems of an app's streams, one line each naming the stream and the field."""
    problems: list[str] = []
    names = [s.name for s in streams if isinstance(s, ProfileStream)]
    problems += [
        f"stream {n!r}: defined twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    for stream in streams:
        if not isinstance(stream, ProfileStream):
            problems.append(f"streams: {stream!r} is not a ProfileStream")
            continue
        for name in stream.programs:
            program = programs.get(name)
            if program is None:
                problems.append(
                    f"stream {stream.name!r}: program {name!r} is not defined by the app; "
                    f"programs: {', '.join(programs)}"
                )
                continue
            for target, source in stream.sources().items():
                problem = _source_problem(source, program, segments.get(name, {}))
                if problem:
                    problems.append(f"stream {stream.name!r}: field {target!r}: {problem}")
    return problems


def _source_problem(
    source: Source, program: ProgramShape, segments: Mapping[str, object]
) -> str | None:
    schemes = [s.name for s in program.tier_schemes]
    where = f"in program {program.name!r}"
    if source.kind == "tier" and not schemes:
        return f"{source.path!r}: program {program.name!r} has no tier scheme"
    if source.kind == "tiers" and source.parts[0] not in schemes:
        return f"{source.path!r}: no tier scheme {source.parts[0]!r} {where}; schemes: " + (
            ", ".join(schemes) or "none"
        )
    if source.kind == "balances" and source.parts[0] not in program.currencies:
        return (
            f"{source.path!r}: no currency {source.parts[0]!r} {where}; currencies: "
            f"{', '.join(program.currencies)}"
        )
    if source.kind == "segments" and source.parts[0] not in segments:
        return f"{source.path!r}: no segment {source.parts[0]!r} {where}; segments: " + (
            ", ".join(segments) or "none"
        )
    return None
