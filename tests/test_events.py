"""Event models: every bad input gets one clear line per problem, naming the field."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from loyalty.errors import InvalidEvent
from loyalty.events import (
    MAX_ATTRIBUTES_BYTES,
    PointsDeposit,
    Purchase,
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
