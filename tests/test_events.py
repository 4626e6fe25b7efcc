"""Event models: every bad input gets one clear line per problem, naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from loyalty.errors import InvalidEvent
from loyalty.events import (
    MAX_ATTRIBUTES_BYTES,
    PointsDeposit,
    Purchase,
    Return,
    differing_fields,
    parse_event,
    parse_lines,
)

DEPOSIT = {
    "type": "points_deposit",
    "event_id": "e1",
    "member_id": "m1",
    "points": 120,
    "kind": "available",
    "reason": "welcome",
}


def problems(data: dict[str, object] | str) -> list[str]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data if isinstance(data, str) else json.dumps(data))
    return caught.value.problems


def api_problems(data: dict[str, object]) -> list[str]:
    """The problems of a dict given as it is, as through the Python API."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data)
    return caught.value.problems


def test_valid_deposit_gets_defaults() -> None:
    event = parse_event(json.dumps(DEPOSIT))
    assert isinstance(event, PointsDeposit)
    assert (event.program, event.account, event.attributes) == ("default", "points", {})
    assert event.occurred_at.tzinfo is not None


def test_purchase_amount_is_decimal_not_float() -> None:
    event = parse_event(
        '{"type":"purchase","event_id":"o1","member_id":"m1","order_id":"o1",'
        '"amount":"42.50","currency":"EUR"}'
    )
    assert isinstance(event, Purchase)
    assert event.amount == Decimal("42.50")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"type": "bogus"}, "type: unknown event type 'bogus'"),
        ({"member_id": 42}, "member_id: Input should be a valid string"),
        ({"points": -5}, "points: Input should be greater than 0"),
        ({"points": 1.5}, "points: Input should be a valid integer"),
        ({"points": "12"}, "points: Input should be a valid integer"),
        ({"kind": "gold"}, "kind: Input should be 'available' or 'earned'"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"event_id": ""}, "event_id: String should have at least 1 character"),
        ({"event_id": "x" * 129}, "event_id: String should have at most 128 characters"),
        ({"program": "Not A Name"}, "program: String should match pattern"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "occurred_at: Input should have timezone info"),
        ({"type": "new_stage"}, "type: 'new_stage' is derived by the engine and cannot be emitted"),
    ],
)
def test_each_problem_names_its_field(change: dict[str, object], expected: str) -> None:
    found = problems({**DEPOSIT, **change})
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_missing_member_id_is_named() -> None:
    data = {k: v for k, v in DEPOSIT.items() if k != "member_id"}
    assert problems(data) == ["member_id: field required"]


def test_several_problems_give_several_lines() -> None:
    found = problems({**DEPOSIT, "points": 0, "extra": 1, "reason": ""})
    assert sorted(p.split(":")[0] for p in found) == ["extra", "points", "reason"]


def test_oversized_attributes_are_refused() -> None:
    big = {"blob": "x" * MAX_ATTRIBUTES_BYTES}
    (only,) = problems({**DEPOSIT, "attributes": big})
    assert only.startswith("attributes: serialized size is")
    assert "more than the limit of 16384" in only


def test_attributes_at_the_limit_are_accepted() -> None:
    # {"b":"…"} is 8 bytes of syntax around the string.
    fitting = {"b": "x" * (MAX_ATTRIBUTES_BYTES - 8)}
    assert parse_event(json.dumps({**DEPOSIT, "attributes": fitting})).attributes == fitting


def test_lines_report_problems_of_every_line_with_numbers() -> None:
    lines = [json.dumps(DEPOSIT), "{not json", json.dumps({**DEPOSIT, "points": 0}), ""]
    with pytest.raises(InvalidEvent) as caught:
        parse_lines(lines)
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 2", "line 3"]
    assert caught.value.problems[0].startswith("line 2: invalid JSON")
    assert caught.value.problems[1].startswith("line 3: points:")


def test_non_object_json_is_refused() -> None:
    assert problems("[1, 2]") == ["event: Input should be an object"]


def test_differing_fields_compare_meaning_not_spelling() -> None:
    order = {
        "type": "purchase", "event_id": "o1", "member_id": "m1", "order_id": "o1",
        "amount": "42.50", "currency": "EUR", "occurred_at": "2026-03-02T09:00:00Z",
        "attributes": {"n": 1, "tags": ["a"]},
    }  # fmt: skip
    first = parse_event(json.dumps(order))
    same = {**order, "amount": "42.5", "occurred_at": "2026-03-02T11:00:00+02:00",
            "attributes": {"tags": ["a"], "n": 1.0}, "discount": "0"}  # fmt: skip
    assert differing_fields(first, parse_event(json.dumps(same))) == []
    other = {**order, "member_id": "m2", "attributes": {"n": 2, "tags": ["a"]}}
    assert differing_fields(first, parse_event(json.dumps(other))) == ["member_id", "attributes"]
    login = {"type": "activity", "event_id": "o1", "member_id": "m1", "name": "web_login"}
    assert differing_fields(first, parse_event(json.dumps(login)), occurred_at=False) == [
        "attributes", "type", "order_id", "amount", "currency", "points_redeemed", "discount",
        "name",
    ]  # fmt: skip
    # A stored payload that no longer validates is compared as JSON.
    stored = {**first.model_dump(mode="json"), "retired_field": 1}
    assert differing_fields(stored, first) == ["retired_field"]


# --- input that used to get past validation and fail later --------------------------------


def text_of(change: dict[str, object], base: dict[str, object] = DEPOSIT, raw: str = "") -> str:
    """The JSON text of an event; ``raw`` is spliced in verbatim as its last member."""
    text = json.dumps({**base, **change})
    return f"{text[:-1]}, {raw}}}" if raw else text


MEMBER_UPDATED = {"type": "member_updated", "event_id": "u1", "member_id": "m1", "profile": {}}
LOGIN = {"type": "activity", "event_id": "l1", "member_id": "m1", "name": "web_login"}
DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (text_of({"occurred_at": "9999-12-30T00:00:00Z"}),
         "occurred_at: must not be more than 1 day in the future"),
        (text_of({"occurred_at": "9999-12-31T23:59:59-14:00"}),
         "occurred_at: must not be more than 1 day in the future"),
        (text_of({"occurred_at": "0001-01-01T00:00:00+14:00"}),
         "occurred_at: must be 2000-01-01T00:00:00Z or later"),
        (text_of({"occurred_at": "1999-12-31T23:59:59Z"}),
         "occurred_at: must be 2000-01-01T00:00:00Z or later"),
        (text_of({"event_id": "e\u0000"}), "event_id: must not contain NUL characters"),
        (text_of({"member_id": "\u0000"}), "member_id: must not contain NUL characters"),
        (text_of({"reason": "a\u0000b"}), "reason: must not contain NUL characters"),
        (text_of({"name": "x\u0000"}, LOGIN), "name: must not contain NUL characters"),
        (text_of({"attributes": {"note": "\u0000"}}),
         "attributes: at note: must not contain NUL characters"),
        (text_of({"attributes": {"a": [{"\u0000": 1}]}}),
         "attributes: at a[0]: key must not contain NUL characters"),
        (text_of({"profile": {"name": "x\u0000"}}, MEMBER_UPDATED),
         "profile: at name: must not contain NUL characters"),
        (text_of({}, raw='"attributes": {"x": "\\ud800"}'),
         "attributes: at x: must not contain lone surrogates"),
        (text_of({"event_id": "\udfff"}), "event_id: must not contain lone surrogates"),
        (text_of({}, raw=f'"attributes": {{"deep": {DEEP}}}'),
         "attributes: nested deeper than 32 levels"),
        (text_of({}, raw=f'"attributes": {{"deep": {"[" * 40 + "]" * 40}}}'),
         "attributes: nested deeper than 32 levels"),
        (text_of({}, raw=f'"profile": {DEEP}'), "profile: nested deeper than 32 levels"),
        (text_of({}, raw=f'"attributes": {{"n": {"7" * 5000}}}'),
         "attributes: at n: integer of more than 400 digits"),
        (text_of({}, raw=f'"points": {"7" * 5000}'),
         "points: Input should be less than or equal to 1000000000000"),
        (text_of({}, raw='"attributes": {"x": 1e400}'),
         "attributes: at x: must be a finite number"),
    ],
)  # fmt: skip
def test_input_that_failed_later_is_refused_naming_the_field(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_a_document_too_deep_to_parse_outside_an_object_is_invalid_json() -> None:
    assert problems(DEEP) == ["invalid JSON: nested too deeply"]


def test_the_python_api_refuses_lone_surrogates_and_deep_nesting() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(2000):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    assert api_problems({**DEPOSIT, "attributes": deep}) == [
        "attributes: nested deeper than 32 levels"
    ]
    assert api_problems({**DEPOSIT, "attributes": {"x": ["\ud800"]}}) == [
        "attributes: at x[0]: must not contain lone surrogates (\\ud800-\\udfff)"
    ]
    with pytest.raises(ValidationError, match="nested deeper than 32 levels"):
        PointsDeposit.model_validate({**DEPOSIT, "attributes": deep})


def test_occurred_at_more_than_the_clock_skew_ahead_is_refused() -> None:
    now = datetime.now(UTC)
    ahead = {**DEPOSIT, "occurred_at": (now + timedelta(hours=12)).isoformat()}
    assert parse_event(ahead).occurred_at > now
    with pytest.raises(InvalidEvent) as caught:
        parse_event(ahead, max_clock_skew=timedelta(hours=1))
    assert caught.value.problems == ["occurred_at: must not be more than 1 hour in the future"]
    too_far = {**DEPOSIT, "occurred_at": (now + timedelta(days=2)).isoformat()}
    assert problems(too_far) == ["occurred_at: must not be more than 1 day in the future"]
    # A model given to the Python API is checked the same way.
    model = PointsDeposit.model_validate(too_far)
    with pytest.raises(InvalidEvent, match="occurred_at: must not be more than 1 day"):
        parse_event(model)


# --- money is exact -------------------------------------------------------------------------


ORDER = {"type": "purchase", "event_id": "o1", "member_id": "m1", "order_id": "o1",
         "currency": "EUR"}  # fmt: skip


@pytest.mark.parametrize(
    ("number", "exact"),
    [("42.5", "42.5"), ("0.1", "0.1"), ("169.9999", "169.9999"), ("1e2", "100"), ("7", "7")],
)
def test_json_numbers_are_read_exactly_as_money(number: str, exact: str) -> None:
    event = parse_event(text_of({}, ORDER, raw=f'"amount": {number}, "discount": {number}'))
    assert isinstance(event, Purchase)
    assert (event.amount, event.discount) == (Decimal(exact), Decimal(exact))
    assert str(event.amount) == str(Decimal(number))


@pytest.mark.parametrize("number", ["169.99999999999999999", "12.30000000000000001", "0.00001"])
def test_json_numbers_with_more_than_4_decimal_places_are_refused(number: str) -> None:
    found = problems(text_of({}, ORDER, raw=f'"amount": {number}'))
    assert len(found) == 1, found
    assert found[0].startswith("amount: "), found
    # As for the same number as a string.
    assert problems(text_of({"amount": number}, ORDER))[0].startswith("amount: ")


def test_floats_are_refused_as_money_in_the_python_api() -> None:
    expected = "amount: must be a Decimal or a string, not a float (floats are inexact)"
    assert api_problems({**ORDER, "amount": 12.3}) == [expected]
    with pytest.raises(ValidationError, match="not a float"):
        Purchase(event_id="o1", member_id="m1", order_id="o1", amount=12.3, currency="EUR")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not a float"):
        Return(event_id="r1", member_id="m1", order_id="o1", amount=1.5)  # type: ignore[arg-type]
