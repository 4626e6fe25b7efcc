"""The HTTP API as services use it: `loyalty api` as a real server process on 127.0.0.1.

Requests go over TCP with httpx (and once with curl); keys are made with the CLI or the
keys module on the test's database; a worker applies what the API accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from loyalty.api.keys import create_key
from loyalty.store.embedded import free_port
from tests.conftest import StartWorker
from tests.test_cli import LOYALTY, cli_env, loyalty

PROBLEM = "application/problem+json"


@dataclass
class Api:
    url: str
    process: asyncio.subprocess.Process

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=90)


StartApi = Callable[..., Awaitable[Api]]


@pytest_asyncio.fixture
async def start_api(settings_env: dict[str, object]) -> AsyncIterator[StartApi]:
    """Start `loyalty api` with setting overrides; stopped (SIGTERM) at the end."""
    started: list[asyncio.subprocess.Process] = []

    async def start(**overrides: object) -> Api:
        port = free_port()
        env = cli_env({**settings_env, "LOYALTY_API_PORT": port, **overrides})
        proc = await asyncio.create_subprocess_exec(
            LOYALTY,
            "api",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http, asyncio.timeout(60):
            while True:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"loyalty api exited: {err.decode()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return Api(url, proc)
                await asyncio.sleep(0.1)

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.terminate()
        _out, err = await proc.communicate()
        # A clean stop: exit 0, no traceback.
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in err.decode(), err.decode()


async def make_key(conn: asyncpg.Connection, *scopes: str, program: str = "default") -> str:
    _, text = await create_key(conn, program, list(scopes), None)
    return text


def deposit(event_id: str, member: str = "m1", points: int = 120, **extra: Any) -> dict[str, Any]:
    return {
        "type": "points_deposit",
        "event_id": event_id,
        "member_id": member,
        "points": points,
        "kind": "available",
        "reason": "welcome",
        **extra,
    }


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert body["title"], body
    assert body["detail"], body
    return body


async def test_keys_on_the_command_line(settings_env: dict[str, object]) -> None:
    env = cli_env(settings_env)
    made = await loyalty(
        env,
        "api-keys",
        "create",
        "--program",
        "default",
        "--scope",
        "events:write",
        "--scope",
        "members:read",
        "--name",
        "pos",
    )
    assert made.code == 0, made.err
    key = made.lines[-1]
    assert key.startswith("lfk_")
    assert len(key) == 4 + 12 + 1 + 43
    as_json = await loyalty(
        env, "api-keys", "create", "--program", "default", "--scope", "admin", "--json"
    )
    second = json.loads(as_json.out)
    assert second["scopes"] == ["admin"]
    assert second["key"].startswith("lfk_")

    listed = await loyalty(env, "api-keys", "list", "--json")
    assert listed.code == 0, listed.err
    keys = json.loads(listed.out)
    assert [k["name"] for k in keys] == ["pos", f"key {second['id']}"]
    # The secret (after "lfk_" and the id) may itself hold "_" and "-".
    assert key[len("lfk_0123456789ab_") :] not in listed.out
    assert second["key"] not in listed.out
    assert keys[0]["scopes"] == ["events:write", "members:read"]

    revoked = await loyalty(env, "api-keys", "revoke", second["id"])
    assert revoked.code == 0, revoked.err
    keys = json.loads((await loyalty(env, "api-keys", "list", "--json")).out)
    assert keys[1]["revoked_at"] is not None
    assert keys[0]["revoked_at"] is None

    bad = await loyalty(env, "api-keys", "create", "--program", "nope", "--scope", "events:rite")
    assert bad.code == 2
    assert bad.problems == [
        "scope: unknown scope 'events:rite'; expected one of: events:write, members:read, admin",
        "program: unknown program 'nope'",
    ]
    missing = await loyalty(env, "api-keys", "revoke", "0123456789ab")
    assert (missing.code, missing.problems) == (2, ["key: no API key '0123456789ab'"])
    assert len(json.loads((await loyalty(env, "api-keys", "list", "--json")).out)) == 2


async def test_every_key_is_checked(
    start_api: StartApi, conn: asyncpg.Connection, start_worker: StartWorker
) -> None:
    await start_worker()
    api = await start_api(LOYALTY_API_KEY_CACHE_SECONDS=0)
    writer = await make_key(conn, "events:write")
    reader = await make_key(conn, "members:read")
    coffee = await make_key(conn, "events:write", "members:read", program="coffee")
    revoked = await make_key(conn, "events:write")
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", revoked[4:16])
    wrong = writer[:-4] + ("AAAA" if not writer.endswith("AAAA") else "BBBB")

    async with api.client() as anonymous:
        problem_of(await anonymous.post("/v1/events", json=deposit("e1")), 401)
    for key in (wrong, revoked, "not-a-key", writer[:20]):
        async with api.client(key) as http:
            assert (
                "key"
                in problem_of(await http.post("/v1/events", json=deposit("e1")), 401)["detail"]
            )
            problem_of(await http.get("/v1/members/m1"), 401)
    async with api.client(reader) as http:
        body = problem_of(await http.post("/v1/events", json=deposit("e1")), 403)
        assert "events:write" in body["detail"]
    async with api.client(coffee) as http:
        body = problem_of(await http.post("/v1/events", json=deposit("e1", program="default")), 403)
        assert "'coffee'" in body["detail"]
        assert "events[0]" not in body["detail"]
        problem_of(await http.get("/v1/members/m1", params={"program": "default"}), 403)
        problem_of(await http.get("/v1/events/default/e1"), 403)
    async with api.client(writer) as http:
        problem_of(await http.get("/v1/members/m1"), 403)
    assert await conn.fetchval("SELECT count(*) FROM events") == 0

    # The key's own program is the default of an event that names none.
    async with api.client(coffee) as http:
        posted = await http.post("/v1/events", json=deposit("c1"))
        assert posted.status_code == 202, posted.text
        assert posted.json() == {
            "results": [{"event_id": "c1", "program": "coffee", "status": "accepted"}]
        }
    # Refusals are logged with the key's id at most, never the secret.
    await asyncio.sleep(0.2)
    api.process.terminate()
    _, err = await api.process.communicate()
    assert "unknown, wrong or revoked key lfk_" in err.decode()
    assert writer[17:] not in err.decode()
    assert revoked[17:] not in err.decode()


async def test_sessionm_sequence_send_the_login_read_the_tier(
    start_api: StartApi,
    conn: asyncpg.Connection,
    start_worker: StartWorker,
    settings_env: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from examples.demo import app as demo_app

    # The demo's webhook provider needs a secret; its receiver is not running here.
    monkeypatch.setenv("LOYALTY_DEMO_WEBHOOK_SECRET", "test")
    await start_worker(app=demo_app)
    api = await start_api(LOYALTY_APP="examples.demo:app")
    key = await make_key(conn, "events:write", "members:read", program="coffee")
    login = {"type": "activity", "event_id": "login-1", "member_id": "ana", "name": "web_login"}
    async with api.client(key) as http:
        posted = await http.post("/v1/events", json={"events": [deposit("d1", "ana", 500), login]})
        assert posted.status_code == 202, posted.text
        assert [r["status"] for r in posted.json()["results"]] == ["accepted", "accepted"]
        outcome = await http.get("/v1/events/coffee/login-1", params={"wait": 30})
        assert outcome.status_code == 200, outcome.text
        assert outcome.json()["status"] in ("applied", "no_effect")
        assert (await http.get("/v1/events/coffee/d1")).json() == {
            "program": "coffee",
            "event_id": "d1",
            "status": "applied",
            "reason": None,
            "detail": None,
        }
        member = await http.get("/v1/members/ana")
        assert member.status_code == 200, member.text
        view = member.json()
        cli = await loyalty(cli_env(settings_env), "member", "ana", "--program", "coffee", "--json")
        printed = json.loads(cli.out)
        # Tier maintenance runs beside the test and may review the member in between.
        for tier in view["tiers"] + printed["tiers"]:
            tier.pop("reviewed_at")
        assert view == printed
        assert view["balances"]["points"]["available"] >= 500
        assert view["tier"] == "bronze"
        assert [t["tier"] for t in view["tiers"]] == ["bronze"]

        # A withdrawal larger than the balance is accepted, then rejected by the ledger.
        too_much = {
            "type": "points_withdrawal",
            "event_id": "w1",
            "member_id": "ana",
            "points": 10**6,
            "kind": "available",
            "reason": "oops",
        }
        assert (await http.post("/v1/events", json=too_much)).status_code == 202
        rejected = (await http.get("/v1/events/coffee/w1", params={"wait": 30})).json()
        assert rejected["status"] == "rejected"
        assert rejected["reason"] == "insufficient_points"
        assert rejected["detail"]

        # Paging the history back.
        first = (await http.get("/v1/members/ana/entries", params={"limit": 1})).json()
        assert len(first["entries"]) == 1
        assert first["more"] is True
        older = (
            await http.get(
                "/v1/members/ana/entries", params={"limit": 50, "before": first["next_before"]}
            )
        ).json()
        assert older["entries"]
        assert all(e["id"] < first["next_before"] for e in older["entries"])
        ids = [e["id"] for e in first["entries"] + older["entries"]]
        assert ids == [e["id"] for e in view["entries"]][: len(ids)]

        problem_of(await http.get("/v1/members/nobody"), 404)
        problem_of(await http.get("/v1/events/coffee/never-sent"), 404)

        programs = await http.get("/v1/programs")
        assert [p["name"] for p in programs.json()] == ["coffee"]
        flows = (await http.get("/v1/flows")).json()
        assert flows
        assert all("coffee" in f["programs"] for f in flows)
        assert {"name", "workflow", "trigger", "entry"} <= set(flows[0])


async def test_wait_returns_when_the_batch_commits(
    start_api: StartApi, conn: asyncpg.Connection, start_worker: StartWorker
) -> None:
    api = await start_api()
    key = await make_key(conn, "events:write")
    async with api.client(key) as http:
        assert (await http.post("/v1/events", json=deposit("late"))).status_code == 202
        pending = (await http.get("/v1/events/default/late")).json()
        assert pending["status"] == "pending"
        waiting = asyncio.create_task(http.get("/v1/events/default/late", params={"wait": 60}))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        await start_worker()
        answered = await asyncio.wait_for(waiting, 30)
        assert answered.json()["status"] == "applied"


async def test_every_error_has_its_shape_and_writes_nothing(
    start_api: StartApi, conn: asyncpg.Connection
) -> None:
    api = await start_api()
    key = await make_key(conn, "events:write", "members:read")
    async with api.client(key) as http:
        body = problem_of(
            await http.post(
                "/v1/events",
                json={"events": [deposit("ok"), deposit("bad", points=0), {"type": "purchase"}, 7]},
            ),
            422,
        )
        fields = [e["field"] for e in body["errors"]]
        assert "events[1].points" in fields
        assert "events[2].event_id" in fields
        assert "events[2].member_id" in fields
        assert "events[3]" in fields
        assert body["type"] == "urn:loyalty-flows:problem:invalid-input"

        single = problem_of(await http.post("/v1/events", json={**deposit("x"), "pts": 1}), 422)
        assert single["errors"] == [{"field": "pts", "message": "unknown field"}]
        unknown = problem_of(await http.post("/v1/events", json={"type": "teleport"}), 422)
        assert unknown["errors"][0]["field"] == "type"
        assert (
            problem_of(await http.post("/v1/events", content=b"{not json"), 422)["errors"][0][
                "field"
            ]
            == "body"
        )
        empty = await http.post("/v1/events", json={"events": []})
        assert (empty.status_code, empty.json()) == (202, {"results": []})
        problem_of(await http.post("/v1/events", json={"events": {}}), 422)
        extra = problem_of(await http.post("/v1/events", json={"events": [], "x": 1}), 422)
        assert extra["errors"][0]["field"] == "x"
        many = [deposit(f"e{i}") for i in range(1001)]
        over = problem_of(await http.post("/v1/events", json={"events": many}), 422)
        assert over["errors"][0]["field"] == "events"
        assert "at most 1000 events" in over["detail"]
        big = {"events": [deposit("big", attributes={"note": "x" * 10_000})] * 120}
        assert len(json.dumps(big)) > 1024 * 1024
        problem_of(await http.post("/v1/events", json=big), 413)
        # Money keeps its digits: an amount with too many decimals is refused, not rounded.
        money = {
            "type": "purchase",
            "event_id": "p1",
            "member_id": "m1",
            "order_id": "o1",
            "amount": 12.34567,
            "currency": "EUR",
        }
        assert "amount" in [
            e["field"] for e in problem_of(await http.post("/v1/events", json=money), 422)["errors"]
        ]
        assert await conn.fetchval("SELECT count(*) FROM events") == 0

        # A reused event_id with other content: 422 naming the ids; nothing written.
        assert (await http.post("/v1/events", json=deposit("same"))).status_code == 202
        clash = problem_of(
            await http.post(
                "/v1/events", json={"events": [deposit("fresh"), deposit("same", points=999)]}
            ),
            422,
        )
        assert "same" in clash["detail"]
        assert [e["field"] for e in clash["errors"]] == ["events[1].points"]
        assert "'same' was already sent" in clash["errors"][0]["message"]
        alone = problem_of(await http.post("/v1/events", json=deposit("same", points=5)), 422)
        assert [e["field"] for e in alone["errors"]] == ["points"]
        assert await conn.fetchval("SELECT count(*) FROM events") == 1

        wait = problem_of(await http.get("/v1/events/default/same", params={"wait": 61}), 422)
        assert wait["errors"][0]["field"] == "wait"
        limit = problem_of(await http.get("/v1/members/m1", params={"limit": 0}), 422)
        assert limit["errors"][0]["field"] == "limit"


async def test_a_batch_of_1000_and_concurrent_duplicates(
    start_api: StartApi, conn: asyncpg.Connection
) -> None:
    api = await start_api()
    key = await make_key(conn, "events:write")
    batch = {"events": [deposit(f"b{i}", member=f"m{i % 50}") for i in range(1000)]}
    async with api.client(key) as http:
        first = await http.post("/v1/events", json=batch)
        assert first.status_code == 202, first.text
        assert [r["status"] for r in first.json()["results"]] == ["accepted"] * 1000
        again = await http.post("/v1/events", json=batch)
        assert [r["status"] for r in again.json()["results"]] == ["duplicate"] * 1000
        posts = await asyncio.gather(
            *(http.post("/v1/events", json=deposit("one")) for _ in range(20))
        )
    statuses = sorted(p.json()["results"][0]["status"] for p in posts)
    assert statuses == ["accepted"] + ["duplicate"] * 19
    assert await conn.fetchval("SELECT count(*) FROM events") == 1001


async def test_a_key_over_its_rate_is_told_when_to_come_back(
    start_api: StartApi, conn: asyncpg.Connection
) -> None:
    # One request every 5 s: the bucket holds one, and no slow machine refills it
    # between two requests in a row.
    api = await start_api(LOYALTY_API_RATE_LIMIT=0.2)
    key = await make_key(conn, "members:read")
    other = await make_key(conn, "members:read")
    async with api.client(key) as http:
        answers = [await http.get("/v1/programs") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 429, 429]
    limited = problem_of(answers[1], 429)
    assert 1 <= int(answers[1].headers["retry-after"]) <= 5
    assert "0.2 requests/s" in limited["detail"]
    async with api.client(other) as http:
        assert (await http.get("/v1/programs")).status_code == 200


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut: the database "stops" for the API."""

    def __init__(self, socket_path: str) -> None:
        self.target = socket_path
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", port)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_readyz_names_what_is_down(
    start_api: StartApi, database_url: str, conn: asyncpg.Connection
) -> None:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    proxy = Proxy(f"{query['host'][0]}/.s.PGSQL.{query['port'][0]}")
    port = await proxy.start()
    through = f"postgresql://{parts.netloc}127.0.0.1:{port}{parts.path}"
    api = await start_api(LOYALTY_DATABASE_URL=through)
    key = await make_key(conn, "members:read")
    async with api.client() as http:
        ready = await http.get("/readyz")
        assert ready.json() == {"status": "ok", "checks": {"postgresql": "ok", "temporal": "ok"}}
        await proxy.cut()
        down = problem_of(await http.get("/readyz"), 503)
        assert [e["field"] for e in down["errors"]] == ["PostgreSQL"], down
        assert (await http.get("/healthz")).status_code == 200
    async with api.client(key) as http:
        unavailable = problem_of(await http.get("/v1/members/m1"), 503)
        assert "PostgreSQL" in unavailable["detail"]
        assert unavailable.get("errors") is None
    # PostgreSQL back: the API answers again without a restart.
    await proxy.start(port)
    async with api.client(key) as http, asyncio.timeout(30):
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.2)
        assert (await http.get("/v1/members/m1")).status_code == 404
    await proxy.cut()


async def test_readyz_without_temporal(start_api: StartApi) -> None:
    api = await start_api(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    async with api.client() as http:
        down = problem_of(await http.get("/readyz"), 503)
    assert [e["field"] for e in down["errors"]] == ["Temporal"], down


async def test_openapi_and_docs(start_api: StartApi) -> None:
    api = await start_api()
    async with api.client() as http:
        spec = (await http.get("/openapi.json")).json()
        docs = await http.get("/docs")
    assert spec["openapi"].startswith("3.1")
    assert {
        "/v1/events",
        "/v1/events/{program}/{event_id}",
        "/v1/members/{member_id}",
        "/v1/members/{member_id}/entries",
        "/v1/programs",
        "/v1/flows",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    event = spec["components"]["schemas"]["Event"]
    assert event["discriminator"]["propertyName"] == "type"
    assert "points_deposit" in event["discriminator"]["mapping"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_sends_the_login_and_reads_the_member(
    start_api: StartApi, conn: asyncpg.Connection, start_worker: StartWorker
) -> None:
    await start_worker()
    api = await start_api()
    key = await make_key(conn, "events:write", "members:read")

    async def curl(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {key}",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        body, _, code = out.decode().rpartition("\n")
        return int(code), body

    code, body = await curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps(deposit("curl-1", "zoe", 75)),
        f"{api.url}/v1/events",
    )
    assert code == 202
    assert json.loads(body)["results"][0]["status"] == "accepted"
    code, body = await curl(f"{api.url}/v1/events/default/curl-1?wait=30")
    assert code == 200
    assert json.loads(body)["status"] == "applied"
    code, body = await curl(f"{api.url}/v1/members/zoe")
    assert code == 200
    assert json.loads(body)["balances"]["points"]["available"] == 75


async def test_concurrent_single_events_are_answered_each_alone(
    start_api: StartApi, conn: asyncpg.Connection
) -> None:
    """Single POSTs that arrive together are written together, but a conflict refuses
    only its own request."""
    api = await start_api()
    key = await make_key(conn, "events:write")
    async with api.client(key) as http:
        assert (await http.post("/v1/events", json=deposit("x"))).status_code == 202
        bodies = (
            [deposit(f"new{i}", member=f"m{i}") for i in range(10)]
            + [deposit("x")] * 3
            + [deposit("x", points=7)] * 2
        )
        answers = await asyncio.gather(*(http.post("/v1/events", json=b) for b in bodies))
    codes = [a.status_code for a in answers]
    assert codes == [202] * 13 + [422] * 2
    assert [a.json()["results"][0]["status"] for a in answers[:13]] == (
        ["accepted"] * 10 + ["duplicate"] * 3
    )
    for refused in answers[13:]:
        assert [e["field"] for e in problem_of(refused, 422)["errors"]] == ["points"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 11
    assert await conn.fetchval("SELECT payload->>'points' FROM events WHERE event_id = 'x'") == (
        "120"
    )


async def test_a_taken_port_is_one_line_and_exit_code_2(
    settings_env: dict[str, object],
) -> None:
    """Another process on the API's port: `loyalty api` says so in one line, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await loyalty(cli_env({**settings_env, "LOYALTY_API_PORT": port}), "api")
    assert run.code == 2, run.err
    assert run.problems == [
        f"the API could not listen on 127.0.0.1:{port} (LOYALTY_API_HOST, LOYALTY_API_PORT): "
        "[Errno 98] Address already in use"
    ], run.err
