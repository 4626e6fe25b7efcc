"""Segments as services and operators see them: the HTTP API and `loyalty segments`.

A real worker installs the app's segments and applies the events; `loyalty api` and the
CLI run as processes of their own.
"""

from __future__ import annotations

import json

import asyncpg

from loyalty.app import LoyaltyApp, Program
from loyalty.segments import Segment, balance, consent
from loyalty.tiers import Tier, TierScheme
from tests.conftest import StartWorker
from tests.test_api import StartApi, deposit, make_key, problem_of
from tests.test_api import start_api as start_api  # the fixture
from tests.test_cli import cli_env, loyalty

SHOP = Program(
    name="shop",
    tier_schemes=(
        TierScheme(tiers=(Tier(name="bronze", threshold=0), Tier(name="gold", threshold=500))),
    ),
)
APP = LoyaltyApp(
    programs=[Program(name="default"), SHOP],
    segments=[
        Segment("band", "shop", where=balance().between(100, 300)),
        Segment("mailable", "shop", where=consent("email") & balance().at_least(1)),
    ],
)


async def test_segments_over_http_and_on_the_command_line(
    start_api: StartApi,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    settings_env: dict[str, object],
) -> None:
    await start_worker(app=APP)
    api = await start_api()
    key = await make_key(conn, "events:write", "members:read", program="shop")
    writer = await make_key(conn, "events:write", program="shop")
    events = [
        deposit("d1", "ann", 150),
        deposit("d2", "bob", 250),
        deposit("d3", "cat", 50),
        deposit("d4", "dan", 200),
        {"type": "member_updated", "event_id": "u1", "member_id": "bob",
         "profile": {"consent": {"email": False}}},
    ]  # fmt: skip
    async with api.client(key) as http:
        posted = await http.post("/v1/events", json={"events": events})
        assert posted.status_code == 202, posted.text
        for e in events:
            done = await http.get(f"/v1/events/shop/{e['event_id']}", params={"wait": 30})
            assert done.json()["status"] == "applied", done.text

        listed = await http.get("/v1/segments")
        assert listed.status_code == 200, listed.text
        by_name = {s["name"]: s for s in listed.json()}
        assert by_name["band"]["size"] == 3
        assert by_name["band"]["entered_last_day"] == 3
        assert by_name["band"]["definition"] == "balance().between(100, 300)"
        assert by_name["mailable"]["size"] == 3  # bob opted out

        page = (await http.get("/v1/segments/band/members", params={"limit": 2})).json()
        assert [m["member_id"] for m in page["members"]] == ["ann", "bob"]
        assert page["next_after"] == "bob"
        rest = await http.get("/v1/segments/band/members", params={"after": "bob"})
        assert [m["member_id"] for m in rest.json()["members"]] == ["dan"]
        assert rest.json()["next_after"] is None

        missing = problem_of(await http.get("/v1/segments/nope/members"), 404)
        assert "'nope'" in missing["detail"]
    async with api.client(writer) as http:
        assert "members:read" in problem_of(await http.get("/v1/segments"), 403)["detail"]

    env = cli_env(settings_env)
    shown = await loyalty(env, "segments", "--program", "shop", "--json")
    assert shown.code == 0, shown.err
    assert [(s["name"], s["size"]) for s in json.loads(shown.out)] == [
        ("band", 3),
        ("mailable", 3),
    ]
    table = await loyalty(env, "segments")
    assert table.code == 0, table.err
    assert "band" in table.out
    page = await loyalty(
        env, "segments", "members", "band", "--program", "shop", "--limit", "2", "--json"
    )
    assert page.code == 0, page.err
    assert json.loads(page.out)["next_after"] == "bob"
    unknown = await loyalty(env, "segments", "members", "nope", "--program", "shop")
    assert (unknown.code, unknown.problems) == (
        2,
        ["segment: no segment 'nope' in program 'shop'; see loyalty segments"],
    )
