"""Personal data: kept out of journey histories, erased from the database by member_deleted.

Journeys run on the dev server with a real worker; what Temporal stored is read back
from the journey's history, and what PostgreSQL stored from every table.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from loyalty import events
from loyalty.messages.history import member_messages
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.privacy_app import app

NAME = "Ana Secreta"
EMAIL = "ana.secreta@example.com"
PHONE = "+351 912 345 678"
PROFILE = {"name": NAME, "email": EMAIL, "phone": PHONE, "locale": "pt-PT"}


def profile_update(event_id: str, **profile: object) -> events.MemberUpdated:
    return events.MemberUpdated(event_id=event_id, member_id="m1", profile=profile or dict(PROFILE))


def activity(event_id: str, name: str) -> events.Activity:
    return events.Activity(event_id=event_id, member_id="m1", name=name)


def history_text(history: WorkflowHistory) -> str:
    """Every payload of a history, decoded: what the Temporal CLI and Web UI show."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        found.append(base64.b64decode(value).decode(errors="replace"))
                    except (binascii.Error, ValueError):
                        found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history.to_json()))
    return "\n".join(found)


async def journey(conn: asyncpg.Connection, flow: str, event_id: str) -> str:
    """The workflow id of the flow's journey for a trigger, once it is started."""
    async with asyncio.timeout(30):
        while True:
            found = await conn.fetchval(
                "SELECT workflow_id FROM journey_starts WHERE flow = $1 AND event_id = $2 "
                "AND started_at IS NOT NULL",
                flow, event_id,
            )  # fmt: skip
            if found is not None:
                return str(found)
            await asyncio.sleep(0.1)


async def result(client: Client, workflow_id: str) -> Any:
    async with asyncio.timeout(30):
        return await client.get_workflow_handle(workflow_id).result()


async def tables_holding(conn: asyncpg.Connection, text: str) -> list[str]:
    """The tables of the database with a row whose text contains ``text``."""
    names = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    holding = []
    for row in names:
        table = row["table_name"]
        found = await conn.fetchval(
            f'SELECT count(*) FROM "{table}" AS t WHERE strpos(t::text, $1) > 0', text
        )
        if found:
            holding.append(table)
    return holding


async def test_get_member_leaves_the_profile_out_of_the_history_unless_asked(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    await start_worker(app=app)
    emitted = [await client.emit(profile_update("u1"))]
    emitted += [await client.emit(activity("l1", "web_login"))]
    emitted += [await client.emit(activity("p1", "profile_check"))]
    await client.wait(emitted, timeout=30)
    reader = await journey(conn, "ReadMember", "l1")
    assert await result(dev_env.client, reader) == {"member_id": "m1", "profile": {}}
    shown = history_text(await dev_env.client.get_workflow_handle(reader).fetch_history())
    assert "thanks" in shown  # the history's payloads are read
    for personal in (NAME, EMAIL, PHONE):
        assert personal not in shown
    # The rendered message used the name: templates read the profile in the activity.
    body = await conn.fetchval("SELECT body FROM message_log WHERE template = 'thanks'")
    assert NAME in body
    asked = await journey(conn, "ReadProfile", "p1")
    assert await result(dev_env.client, asked) == NAME


async def test_member_deleted_erases_the_profile_from_stored_payloads_and_messages(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    await start_worker(app=app)
    await client.wait([await client.emit(profile_update("u1"))], timeout=30)
    await client.wait([await client.emit(activity("w1", "wait_profile"))], timeout=30)
    waiter = await journey(conn, "wait-profile", "w1")
    async with asyncio.timeout(30):
        while not await conn.fetchval("SELECT count(*) FROM journey_waits"):
            await asyncio.sleep(0.1)
    emitted = [await client.emit(profile_update("u2", **{**PROFILE, "email": "new." + EMAIL}))]
    emitted += [await client.emit(activity("l1", "web_login"))]
    await client.wait(emitted, timeout=30)
    assert await result(dev_env.client, waiter) is True
    await result(dev_env.client, await journey(conn, "ReadMember", "l1"))
    for event_id in ("u1", "u2"):
        await result(dev_env.client, await journey(conn, "on-profile", event_id))
    before = await conn.fetchrow(
        "SELECT id, status, template, channel, idempotency_key, workflow_id, created_at "
        "FROM message_log"
    )
    assert before["status"] == "sent"
    assert await tables_holding(conn, NAME) == [
        "events", "journey_signals", "journey_starts", "members", "message_log",
    ]  # fmt: skip

    outcomes = await client.wait(
        [await client.emit(events.MemberDeleted(event_id="d1", member_id="m1"))], timeout=30
    )
    assert [o.describe() for o in outcomes] == ["applied"]
    for personal in (NAME, EMAIL, PHONE, "pt-PT"):
        assert await tables_holding(conn, personal) == [], personal
    # What the engine still knows: which events came, which messages went, when.
    payloads = await conn.fetch(
        "SELECT event_id, payload FROM events WHERE type = 'member_updated' ORDER BY id"
    )
    assert [(r["event_id"], r["payload"]["profile"]) for r in payloads] == [
        ("u1", {}), ("u2", {}),
    ]  # fmt: skip
    assert payloads[0]["payload"]["member_id"] == "m1"
    after = await conn.fetchrow(
        "SELECT id, status, template, channel, idempotency_key, workflow_id, created_at, "
        "body, data, event, erased_at FROM message_log"
    )
    assert {k: after[k] for k in dict(before)} == dict(before)
    assert (after["body"], after["data"], after["event"]) == (None, {}, None)
    [listed] = await member_messages(conn, "m1")
    assert (listed.status, listed.body, listed.erased_at) == ("sent", None, after["erased_at"])
    assert listed.erased_at is not None
    # The member can enrol again; what comes after the erasure is kept.
    await client.wait([await client.emit(profile_update("u3"))], timeout=30)
    assert await tables_holding(conn, NAME) == ["events", "journey_starts", "members"]
