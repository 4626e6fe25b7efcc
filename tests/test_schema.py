"""`loyalty schema events` as a real subprocess: the JSON Schema of the events services send."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from loyalty.events import DERIVED_TYPES, INCOMING_TYPES, parse_event
from tests.test_cli import cli_env, deposit, loyalty

SAMPLE = {
    "type": "purchase",
    "event_id": "o1",
    "member_id": "m1",
    "order_id": "o1",
    "amount": "42.50",
    "currency": "EUR",
    "occurred_at": "2026-01-31T10:00:00Z",
    "attributes": {"store": "s1"},
}


def definition(schema: dict[str, Any], event_type: str) -> dict[str, Any]:
    found: dict[str, Any] = schema["$defs"][
        schema["discriminator"]["mapping"][event_type].removeprefix("#/$defs/")
    ]
    return found


async def test_schema_events_prints_every_incoming_type_and_no_derived_one(
    settings_env: dict[str, object],
) -> None:
    run = await loyalty(cli_env(settings_env), "schema", "events")
    assert run.code == 0, run.err
    schema = json.loads(run.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(INCOMING_TYPES)
    assert not set(DERIVED_TYPES) & set(schema["discriminator"]["mapping"])
    assert {one["$ref"] for one in schema["oneOf"]} == set(
        schema["discriminator"]["mapping"].values()
    )
    for event_type in INCOMING_TYPES:
        event = definition(schema, event_type)
        assert event["additionalProperties"] is False
        assert event["properties"]["type"]["const"] == event_type
        assert {"event_id", "member_id"} <= set(event["required"])
    # Money is a number (read from its digits) or a string; never bare "ge"/"le" keys.
    amount = definition(schema, "purchase")["properties"]["amount"]
    assert [option["type"] for option in amount["anyOf"]] == ["number", "string"]
    assert "ge" not in amount
    assert definition(schema, "points_deposit")["properties"]["points"]["type"] == "integer"


async def test_the_schema_accepts_what_the_engine_accepts(
    settings_env: dict[str, object],
) -> None:
    run = await loyalty(cli_env(settings_env), "schema", "events")
    schema = json.loads(run.out)
    parse_event(SAMPLE)
    parse_event(deposit("e1"))
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        for sample in (SAMPLE, deposit("e1")):
            jsonschema.Draft202012Validator(schema).validate(sample)
        return
    # Without jsonschema installed: the sample's fields are the type's, its required ones
    # are there.
    for sample in (SAMPLE, deposit("e1")):
        event = definition(schema, sample["type"])
        assert set(sample) <= set(event["properties"])
        assert set(event["required"]) <= set(sample)


async def test_schema_events_output_writes_the_file_and_a_bad_path_exits_2(
    settings_env: dict[str, object], tmp_path: Path
) -> None:
    env = cli_env(settings_env)
    printed = await loyalty(env, "schema", "events")
    target = tmp_path / "events.schema.json"
    run = await loyalty(env, "schema", "events", "--output", str(target))
    assert (run.code, run.out) == (0, ""), run.err
    assert target.read_text() == printed.out
    run = await loyalty(env, "schema", "events", "--output", str(tmp_path / "no" / "x.json"))
    assert run.code == 2
    assert len(run.problems) == 1
    assert run.problems[0].startswith("--output: cannot write ")
