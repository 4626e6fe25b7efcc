"""`loyalty member` as an operator uses it: every program of a member, the whole history
page by page, the enrolment date and profile, and the journey step behind an entry."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from loyalty import events
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.journeys_app import app
from tests.test_cli import cli_env, loyalty


def deposit(event_id: str, points: int, program: str = "default") -> events.PointsDeposit:
    return events.PointsDeposit(
        event_id=event_id, member_id="m1", points=points, kind="available",
        reason=f"deposit {event_id}", program=program,
    )  # fmt: skip


async def member_json(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    run = await loyalty(env, "member", "m1", "--json", *args)
    assert run.code == 0, run.err
    return [json.loads(line) for line in run.lines]


async def test_member_in_every_program_with_its_whole_history_profile_and_actions(
    settings_env: dict[str, object],
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
) -> None:
    env = cli_env(settings_env)
    await start_worker(app=app)
    emitted = [
        await client.emit(
            events.MemberUpdated(event_id="u1", member_id="m1", profile={"name": "Ana"})
        )
    ]
    emitted += await client.emit_many([deposit(f"d{n}", 1) for n in range(25)])
    emitted += [await client.emit(deposit("c1", 7, program="coffee"))]
    emitted += [await client.emit(events.Activity(event_id="l1", member_id="m1", name="web_login"))]
    await client.wait(emitted, timeout=30)
    async with asyncio.timeout(30):  # LoginBonus and FirstLogin award in their journeys
        while (
            await conn.fetchval(
                "SELECT count(*) FROM ledger_transactions WHERE idempotency_key LIKE 'journey:%'"
            )
            < 2
        ):
            await asyncio.sleep(0.1)

    # Without --program: every program the member belongs to, by name.
    both = await member_json(env)
    assert [v["program"] for v in both] == ["coffee", "default"]
    coffee, default = both
    assert coffee["balances"]["points"]["available"] == 7
    assert default["balances"]["points"]["available"] == 25 + 25 + 100
    # The operator's own view: enrolment date and profile.
    assert default["enrolled_at"] is not None
    assert default["profile"] == {"name": "Ana"}
    assert default["erased_at"] is None
    assert len(default["entries"]) == 20
    assert default["more_entries"] is True
    by_source = {e["action"] for e in default["entries"] if e["source"].startswith("journey:")}
    assert by_source == {"login-bonus", "step-1"}
    assert {e["action"] for e in default["entries"] if e["source"].startswith("event:")} == {None}

    shown = await loyalty({**env, "COLUMNS": "250"}, "member", "m1")
    assert shown.code == 0, shown.err
    assert "m1 in program coffee" in shown.out
    assert "m1 in program default" in shown.out
    assert "action=login-bonus" in shown.out
    assert "--before" in shown.out  # how to reach the older entries

    # The whole history, page by page.
    seen: list[int] = []
    args = ["--program", "default", "--limit", "7"]
    while True:
        [page] = await member_json(env, *args)
        ids = [e["id"] for e in page["entries"]]
        assert ids == sorted(ids, reverse=True)
        assert not seen or ids[0] < seen[-1]
        seen += ids
        if not page["more_entries"]:
            break
        args = ["--program", "default", "--limit", "7", "--before", str(ids[-1])]
    legs = await conn.fetchval(
        "SELECT count(*) FROM ledger_legs AS g JOIN accounts AS a ON a.id = g.account_id "
        "WHERE a.program = 'default' AND a.member_id = 'm1'"
    )
    assert len(seen) == len(set(seen)) == legs == 27

    unknown = await loyalty(env, "member", "nobody")
    assert (unknown.code, unknown.problems) == (1, ["member 'nobody' is unknown in every program"])
    elsewhere = await loyalty(env, "member", "m1", "--program", "default", "--limit", "0")
    assert elsewhere.code == 2
    assert elsewhere.err
