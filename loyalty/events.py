"""Event models: what other services send, and what the engine derives.

Every event is a frozen pydantic model that rejects unknown fields; the ``type`` field
selects the model (a discriminated union). The same models are used by the CLI, the
starter and the worker, through the one pydantic data converter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from loyalty.errors import InvalidEvent
from loyalty.inputs import (
    MAX_JSON_DEPTH,
    deep_member,
    differing_json,
    exact_money,
    json_problem,
    load_json,
    same_json,
    storable_text,
    stored,
    stored_size,
)

MAX_ATTRIBUTES_BYTES = 16 * 1024
# Points are stored as PostgreSQL bigint; one movement stays far below its limit so
# that sums of many movements cannot overflow either.
MAX_POINTS = 10**12
# The earliest occurred_at accepted: older times are mistakes, and the first years of
# the calendar are out of PostgreSQL's range once converted to UTC.
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
# How far in the future an emitted event's occurred_at may be (LOYALTY_MAX_CLOCK_SKEW):
# senders' clocks drift, but a time in year 9999 overflows the ledger's date arithmetic.
DEFAULT_MAX_CLOCK_SKEW = timedelta(days=1)

# Text PostgreSQL can store: no NUL character, no lone surrogate.
Identifier = Annotated[str, Field(min_length=1, max_length=128), BeforeValidator(storable_text)]
ProgramName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
CurrencyName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
Points = Annotated[StrictInt, Field(gt=0, le=MAX_POINTS)]
# Money is exact: a Decimal, a string or a JSON number read from its text; never a float.
# At most 4 decimal places and 18 digits in all (a bound, not max_digits=18, so that
# 169.99999999999999999 is refused for its decimal places, as a user reads it).
MAX_MONEY = Decimal("99999999999999.9999")
# Money's JSON Schema in standard keywords (pydantic writes the constraints of a type
# with a before-validator as keys that no JSON Schema validator reads: ``ge``,
# ``decimal_places``). The models' validation stays the reference.
_MONEY_TEXT = {
    "type": "string",
    "pattern": r"^[0-9]{1,14}(\.[0-9]{1,4})?$",
}
_MONEY_DESCRIPTION = (
    "An exact decimal with at most 4 decimal places: a JSON number, read from its digits "
    "(never through a float), or a string."
)
Money = Annotated[
    Decimal,
    BeforeValidator(exact_money),
    Field(ge=0, le=MAX_MONEY, decimal_places=4, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": float(MAX_MONEY)},
                _MONEY_TEXT,
            ],
            "description": _MONEY_DESCRIPTION,
        }
    ),
]
PositiveMoney = Annotated[
    Decimal,
    BeforeValidator(exact_money),
    Field(gt=0, le=MAX_MONEY, decimal_places=4, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": float(MAX_MONEY)},
                _MONEY_TEXT,
            ],
            "description": _MONEY_DESCRIPTION + " Greater than 0.",
        }
    ),
]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
PointKind = Literal["available", "earned"]


def _check_json(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    if stored(info):
        return value
    problem = json_problem(value)
    if problem:
        raise ValueError(problem)
    size = stored_size(value)
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(
            f"serialized size is {size} bytes, more than the limit of {MAX_ATTRIBUTES_BYTES}"
        )
    return value


# A free-form JSON object that PostgreSQL can store (`loyalty.inputs.json_problem`), at
# most MAX_ATTRIBUTES_BYTES once serialized as jsonb writes it (`stored_size`).
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]


def _now() -> datetime:
    return datetime.now(UTC)


def describe_duration(value: timedelta) -> str:
    """``1 day``, ``6 hours``, ``90 seconds``: a duration in its largest whole unit."""
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return str(value)


class BaseEvent(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: Identifier
    member_id: Identifier
    program: ProgramName = "default"
    occurred_at: AwareDatetime = Field(default_factory=_now)
    attributes: JsonObject = Field(default_factory=dict)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        """Not before 2000; with a ``max_clock_skew`` in the validation context (as
        `parse_event` gives), not further ahead of now than that."""
        if value < EARLIEST_OCCURRED_AT:
            raise ValueError("must be 2000-01-01T00:00:00Z or later")
        skew = (info.context or {}).get("max_clock_skew")
        if isinstance(skew, timedelta):
            problem = _future_problem(value, skew)
            if problem:
                raise ValueError(problem)
        return value


def _future_problem(value: datetime, skew: timedelta) -> str | None:
    if value > datetime.now(UTC) + skew:
        return f"must not be more than {describe_duration(skew)} in the future"
    return None


class Purchase(BaseEvent):
    """A completed purchase, possibly paid partly with points."""

    type: Literal["purchase"] = "purchase"
    order_id: Identifier
    amount: Money
    currency: CurrencyCode
    points_redeemed: Annotated[StrictInt, Field(ge=0, le=MAX_POINTS)] = 0
    discount: Money = Decimal(0)


class Return(BaseEvent):
    """Claw back the points earned by an order, proportionally to the amount returned."""

    type: Literal["return"] = "return"
    order_id: Identifier
    amount: PositiveMoney


class Activity(BaseEvent):
    """Any member action that earn rules or flows react to (``web_login``, ...)."""

    type: Literal["activity"] = "activity"
    name: Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(storable_text)]


class Referral(BaseEvent):
    """The member referred a friend."""

    type: Literal["referral"] = "referral"
    friend_id: Identifier


class ReferralApproved(BaseEvent):
    """The member (the friend) accepted a referral."""

    type: Literal["referral_approved"] = "referral_approved"
    referrer_id: Identifier


class PointsDeposit(BaseEvent):
    """Points given through the API."""

    type: Literal["points_deposit"] = "points_deposit"
    points: Points
    kind: PointKind
    account: CurrencyName = "points"
    reason: Annotated[str, Field(min_length=1, max_length=200), BeforeValidator(storable_text)]


class PointsWithdrawal(BaseEvent):
    """Points removed through the API."""

    type: Literal["points_withdrawal"] = "points_withdrawal"
    points: Points
    kind: PointKind
    account: CurrencyName = "points"
    reason: Annotated[str, Field(min_length=1, max_length=200), BeforeValidator(storable_text)]


class MemberUpdated(BaseEvent):
    """Enrol or update a member; ``profile`` holds email, name, locale, consent flags."""

    type: Literal["member_updated"] = "member_updated"
    profile: JsonObject


class MemberDeleted(BaseEvent):
    """Erase the member's profile data; the ledger keeps pseudonymous entries."""

    type: Literal["member_deleted"] = "member_deleted"


# Derived by the engine, never accepted from outside.


class NewStage(BaseEvent):
    """The member moved between tiers."""

    type: Literal["new_stage"] = "new_stage"
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down"]
    cause: Literal["earn", "maintenance"]
    # The program's tier scheme the member moved in (a program may have several).
    scheme: str = "main"


class PointsAbove(BaseEvent):
    """The available balance crossed a threshold upwards."""

    type: Literal["points_above"] = "points_above"
    threshold: int
    balance: int


class BonusExpiring(BaseEvent):
    """Points will expire soon: ``points`` of currency ``account`` at ``expires_at``.

    ``days_left`` is the reminder's N (``BonusExpiring(days_before=N)``), not the time
    really left: see `loyalty.ledger.reminders`.
    """

    type: Literal["bonus_expiring"] = "bonus_expiring"
    points: int
    expires_at: AwareDatetime
    days_left: int
    account: CurrencyName = "points"


class PointsMatured(BaseEvent):
    """Earned points became available."""

    type: Literal["points_matured"] = "points_matured"
    points: int
    account: CurrencyName = "points"


class ReferralFriendApproved(BaseEvent):
    """A friend this member referred accepted the referral."""

    type: Literal["referral_friend_approved"] = "referral_friend_approved"
    friend_id: Identifier


class SegmentEntered(BaseEvent):
    """The member entered a segment (`loyalty.segments`)."""

    type: Literal["segment_entered"] = "segment_entered"
    segment: str


class SegmentLeft(BaseEvent):
    """The member left a segment (`loyalty.segments`)."""

    type: Literal["segment_left"] = "segment_left"
    segment: str


class RecurringRun(BaseEvent):
    """The trigger of a recurring flow's journey: the member was in ``segment`` at the
    schedule's ``scheduled_at``. Never in the inbox: the run starts the journeys itself."""

    type: Literal["recurring"] = "recurring"
    flow: str
    segment: str
    scheduled_at: AwareDatetime


IncomingEvent = Annotated[
    Purchase
    | Return
    | Activity
    | Referral
    | ReferralApproved
    | PointsDeposit
    | PointsWithdrawal
    | MemberUpdated
    | MemberDeleted,
    Field(discriminator="type"),
]
DerivedEvent = Annotated[
    NewStage
    | PointsAbove
    | BonusExpiring
    | PointsMatured
    | ReferralFriendApproved
    | SegmentEntered
    | SegmentLeft
    | RecurringRun,
    Field(discriminator="type"),
]
AnyEvent = Annotated[
    Purchase
    | Return
    | Activity
    | Referral
    | ReferralApproved
    | PointsDeposit
    | PointsWithdrawal
    | MemberUpdated
    | MemberDeleted
    | NewStage
    | PointsAbove
    | BonusExpiring
    | PointsMatured
    | ReferralFriendApproved
    | SegmentEntered
    | SegmentLeft
    | RecurringRun,
    Field(discriminator="type"),
]

INCOMING_TYPES = (
    "purchase",
    "return",
    "activity",
    "referral",
    "referral_approved",
    "points_deposit",
    "points_withdrawal",
    "member_updated",
    "member_deleted",
)
DERIVED_TYPES = (
    "new_stage",
    "points_above",
    "bonus_expiring",
    "points_matured",
    "referral_friend_approved",
    "segment_entered",
    "segment_left",
    "recurring",
)

# Where an event comes from. Client events and the events the engine derives have separate
# id spaces (the inbox is unique on program, origin and event_id), so neither can take an
# id the other needs.
Origin = Literal["client", "engine"]


def origin_of(event: BaseEvent) -> Origin:
    """``engine`` for a derived event type, ``client`` for every type a client may emit."""
    return "engine" if getattr(event, "type", None) in DERIVED_TYPES else "client"


incoming_adapter: TypeAdapter[IncomingEvent] = TypeAdapter(IncomingEvent)
any_event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def events_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12, as pydantic writes it) of one incoming event.

    A ``oneOf`` of the emittable types with ``type`` as the discriminator, each type's
    schema under ``$defs``, for `loyalty schema events` and the HTTP API. Money is a
    number or a string of digits (exact either way); the schema states the types and
    limits it can express, while `parse_event` also checks what it cannot (the size of
    ``attributes``, ``occurred_at`` not too far ahead, text PostgreSQL can store).
    """
    schema = incoming_adapter.json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "IncomingEvent",
        "description": "An event another service sends to loyalty-flows.",
        **schema,
    }


def stored_event(payload: dict[str, Any] | str) -> AnyEvent:
    """An event read back from the inbox (decoded, or as its JSON text): typed, without
    the input checks it passed when it was accepted (`loyalty.inputs.stored`), which
    cost more than the parse."""
    if isinstance(payload, str):
        return any_event_adapter.validate_json(payload, context={"stored": True})
    return any_event_adapter.validate_python(payload, context={"stored": True})


def occurred_at_sent(event: BaseEvent) -> bool:
    """Whether the sender gave ``occurred_at`` (False: it was filled in with "now")."""
    return "occurred_at" in event.model_fields_set


def differing_fields(
    first: BaseEvent | dict[str, Any], second: BaseEvent, *, occurred_at: bool = True
) -> list[str]:
    """The fields whose values differ between two versions of one event; [] if identical.

    Values are compared for what they mean, not how they were written: amounts as
    decimals (``42.50`` is ``42.5``), times as instants (any time zone), ``attributes``
    and ``profile`` as JSON (``1`` is ``1.0``). ``first`` may be a stored payload (it is
    validated as an event; one that no longer validates is compared as JSON).
    ``occurred_at=False`` leaves that field out: one version did not give it.
    """
    second_json = second.model_dump(mode="json")
    if isinstance(first, dict):
        payload = first
        try:
            first = any_event_adapter.validate_python(payload)
        except ValidationError:
            return differing_json(payload, second_json, occurred_at=occurred_at)
    first_json = first.model_dump(mode="json")
    differ = []
    for name in dict.fromkeys([*type(first).model_fields, *type(second).model_fields]):
        if name == "occurred_at" and not occurred_at:
            continue
        if name not in first_json or name not in second_json:
            differ.append(name)
            continue
        a, b = getattr(first, name), getattr(second, name)
        same = (
            same_json(first_json[name], second_json[name])
            if isinstance(a, dict | list) or isinstance(b, dict | list)
            else a == b
        )
        if not same:
            differ.append(name)
    return differ


def describe_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, naming the field (``points: must be greater than 0``)."""
    lines = []
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        # The first element of a union location is the discriminator's value.
        if loc and isinstance(loc[0], str) and loc[0] in INCOMING_TYPES + DERIVED_TYPES:
            loc = loc[1:]
        field = ".".join(str(part) for part in loc) or "event"
        message = item["msg"].removeprefix("Value error, ")
        # A limit is shown as the number it is ("99999999999999.9999"), not its repr.
        message = re.sub(r"Decimal\('([^']*)'\)", r"\1", message)
        if item["type"] == "union_tag_invalid":
            field = "type"
            given = item.get("input", {})
            tag = given.get("type") if isinstance(given, dict) else None
            message = f"unknown event type {tag!r}; expected one of: {', '.join(INCOMING_TYPES)}"
        elif item["type"] == "union_tag_not_found":
            field = "type"
            message = "field required"
        elif item["type"] == "missing":
            message = "field required"
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{prefix}{field}: {message}")
    return lines


def parse_event(
    data: str | bytes | dict[str, Any] | BaseEvent,
    prefix: str = "",
    *,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> IncomingEvent:
    """Validate one incoming event from JSON text, a dict, or an event model.

    JSON text is read with `loyalty.inputs.load_json`, so that money keeps its exact
    digits. ``occurred_at`` may be at most ``max_clock_skew`` ahead of now (the setting
    ``LOYALTY_MAX_CLOCK_SKEW``).

    Raises:
        InvalidEvent: with one line per problem, each naming the field.
    """
    if isinstance(data, BaseEvent):
        given = getattr(data, "type", None)
        if given not in INCOMING_TYPES:
            raise InvalidEvent([_derived_problem(given, prefix)])
        problem = _future_problem(data.occurred_at, max_clock_skew)
        if problem:
            raise InvalidEvent([f"{prefix}occurred_at: {problem}"])
        return data  # type: ignore[return-value]
    if isinstance(data, str | bytes):
        text = data
        try:
            data = load_json(text)
        except RecursionError:
            field = deep_member(text)
            problem = (
                f"{field}: nested deeper than {MAX_JSON_DEPTH} levels"
                if field
                else "invalid JSON: nested too deeply"
            )
            raise InvalidEvent([prefix + problem]) from None
        except ValueError as exc:
            raise InvalidEvent([f"{prefix}invalid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise InvalidEvent([f"{prefix}event: Input should be an object"])
    try:
        return incoming_adapter.validate_python(data, context={"max_clock_skew": max_clock_skew})
    except ValidationError as exc:
        problems = describe_errors(exc, prefix)
        if any(p.startswith(f"{prefix}type: unknown event type") for p in problems):
            given = data.get("type")
            if given in DERIVED_TYPES:
                problems = [_derived_problem(given, prefix)]
        raise InvalidEvent(problems) from None


def _derived_problem(given: object, prefix: str) -> str:
    return f"{prefix}type: {given!r} is derived by the engine and cannot be emitted"


def parse_lines(
    lines: Iterable[str | bytes], *, max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
) -> list[IncomingEvent]:
    """Validate JSON lines (blank lines skipped); all problems of all lines are collected.

    Lines may be bytes (UTF-8), so that a line that is not UTF-8 is refused by number.

    Raises:
        InvalidEvent: if any line is invalid, with ``line N:`` before each problem.
    """
    events: list[IncomingEvent] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            events.append(parse_event(text, f"line {number}: ", max_clock_skew=max_clock_skew))
        except InvalidEvent as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidEvent(problems)
    return events
