"""Messages: webhook and log providers, signatures, retries, consent, templates, the log.

The webhook receiver is a real HTTP server on 127.0.0.1 (pytest-httpserver). Unit-level
cases run the activity in `temporalio.testing.ActivityEnvironment`, setting the attempt
number Temporal would give a retry; journeys with retries run on the time-skipping
server; one test goes end to end on the dev server: emit → router → journey → webhook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from pytest_httpserver import HTTPServer
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker
from werkzeug import Request, Response

from activities.journeys import JourneyActivities
from examples.receiver import WebhookReceiver
from loyalty import events
from loyalty.app import LoyaltyApp, Program
from loyalty.errors import ConfigurationError, InvalidFlows, UnknownProgram
from loyalty.flows import check_app
from loyalty.messages import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidSignature,
    LogProvider,
    Secrets,
    WebhookProvider,
    load_secrets,
    sign,
    verify_signature,
    webhook_body,
)
from loyalty.messages.history import member_messages
from loyalty.models import AwardPointsInput, MessageReceipt, SendMessageInput
from loyalty.store.db import prepare_database
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.messages_app import SECRET_ENV, TEMPLATES, ThankYou, make_app, webhook

SECRET = "s3cr3t-value-never-logged"
BROKEN = Path(__file__).parent / "templates_broken"
LOGIN = events.Activity(
    event_id="e1", member_id="m1", name="web_login", occurred_at=datetime(2030, 1, 2, tzinfo=UTC)
)


def message(
    template: str = "thanks",
    key: str = "journey:w1:thanks",
    data: dict[str, object] | None = None,
    channel: str = "email",
    event: events.AnyEvent | None = None,
) -> SendMessageInput:
    return SendMessageInput(
        program="default", member_id="m1", template=template, channel=channel,
        data={"points": 25} if data is None else data, idempotency_key=key, workflow_id="w1",
        event=event or LOGIN,
    )  # fmt: skip


def attempt(number: int) -> ActivityEnvironment:
    """An activity environment as for Temporal's attempt ``number`` of the activity."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=number)
    return env


def statuses(*codes: int) -> Callable[[Request], Response]:
    """A receiver answering ``codes`` in turn, then 200 for ever."""
    queue = list(codes)

    def handler(request: Request) -> Response:
        return Response("nope" * 100 if queue and queue[0] >= 400 else "ok",
                        status=queue.pop(0) if queue else 200)  # fmt: skip

    return handler


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """The receiver listens on 127.0.0.1 (pytest-httpserver's default is localhost)."""
    return ("127.0.0.1", 0)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest_asyncio.fixture
async def app_db(database_url: str) -> str:
    """The test database with the messages app's programs recorded."""
    await prepare_database(database_url, make_app(webhook("http://127.0.0.1:1/")))
    return database_url


def activities_for(
    pool: asyncpg.Pool, app: LoyaltyApp, http: httpx.AsyncClient
) -> JourneyActivities:
    return JourneyActivities(pool, app, http, Secrets({SECRET_ENV: SECRET}))


async def log_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT template, channel, provider, status, detail, body, idempotency_key "
        "FROM message_log ORDER BY id"
    )
    return [dict(r) for r in rows]


async def attempt_rows(conn: asyncpg.Connection) -> list[tuple[int, int | None, str | None]]:
    rows = await conn.fetch("SELECT attempt, http_status, error FROM message_attempts ORDER BY id")
    return [(r["attempt"], r["http_status"], r["error"]) for r in rows]


async def everything_stored(conn: asyncpg.Connection) -> str:
    """Every row of the message and program tables, as text."""
    parts = []
    for table in ("message_log", "message_attempts", "programs"):
        parts += [str(dict(r)) for r in await conn.fetch(f"SELECT * FROM {table}")]
    return "\n".join(parts)


def test_signature_round_trip_and_refusals() -> None:
    body = json.dumps({"member_id": "m1", "idempotency_key": "k", "sent_at": 1_000_000}).encode()
    header = sign(body, SECRET)
    assert header.startswith("sha256=")
    assert len(header) == 7 + 64
    assert verify_signature(body, header, SECRET, now=1_000_010)["member_id"] == "m1"
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body.replace(b"m1", b"m2"), header, SECRET, now=1_000_010)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body, header, "another secret", now=1_000_010)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body, None, SECRET, now=1_000_010)
    # A replay of a captured request: the signed timestamp is too old.
    with pytest.raises(InvalidSignature, match="seconds old"):
        verify_signature(body, header, SECRET, now=1_000_000 + 301)


def signed_request(key: str = "journey:w1:thanks", sent_at: int | None = None) -> bytes:
    return webhook_body(
        program="default", member_id="m1", channel="email", template="thanks", body="Hi",
        data={}, event=None, idempotency_key=key,
        sent_at=int(datetime.now(UTC).timestamp()) if sent_at is None else sent_at,
    )  # fmt: skip


def test_the_idempotency_key_is_signed_and_a_changed_header_is_refused() -> None:
    body = signed_request(sent_at=1_000_000)
    header = sign(body, SECRET)
    payload = verify_signature(
        body, header, SECRET, idempotency_key="journey:w1:thanks", now=1_000_010
    )
    assert payload["idempotency_key"] == "journey:w1:thanks"
    # A captured request replayed under another key: the header is not signed, the body is.
    with pytest.raises(InvalidSignature, match="Idempotency-Key header"):
        verify_signature(body, header, SECRET, idempotency_key="journey:w1:other", now=1_000_010)
    unkeyed = json.dumps({"member_id": "m1", "sent_at": 1_000_000}).encode()
    with pytest.raises(InvalidSignature, match="no idempotency_key"):
        verify_signature(unkeyed, sign(unkeyed, SECRET), SECRET, now=1_000_010)


async def test_the_demo_receiver_acts_once_per_signed_key_whatever_the_header(
    http: httpx.AsyncClient,
) -> None:
    receiver = WebhookReceiver(free_port(), SECRET)
    receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        body = signed_request()

        async def post(key: str) -> int:
            headers = {SIGNATURE_HEADER: sign(body, SECRET), IDEMPOTENCY_HEADER: key}
            return (await http.post(url, content=body, headers=headers)).status_code

        assert await post("journey:w1:thanks") == 200
        # A retry (or a replay within the window) with the same key: answered, not acted on.
        assert await post("journey:w1:thanks") == 200
        # A replay with a changed header: refused, not taken for a new message.
        assert await post("journey:w1:replayed") == 401
    finally:
        receiver.stop()
    got = receiver.received()
    assert [(r.idempotency_key, r.duplicate, r.error is None) for r in got] == [
        ("journey:w1:thanks", False, True),
        ("journey:w1:thanks", True, True),
        ("journey:w1:replayed", False, False),
    ]
    assert [r.body["template"] for r in got if r.error is None and not r.duplicate] == ["thanks"]


def test_secrets_come_from_the_environment_and_never_reach_the_config() -> None:
    app = make_app(webhook("http://127.0.0.1:1/hook"))
    with pytest.raises(ConfigurationError) as refused:
        load_secrets(app.programs, environ={})
    assert str(refused.value) == (
        "webhook message providers need their secret in the environment, missing: "
        f"{SECRET_ENV} (program default)"
    )
    secrets = load_secrets(app.programs, environ={SECRET_ENV: SECRET})
    assert secrets.get(SECRET_ENV) == SECRET.encode()
    assert SECRET not in repr(secrets)
    assert "messages" not in app.programs["default"].config()
    # Messages() sends everything to the log, as before providers existed.
    assert isinstance(Program(name="p").messages.provider("sms"), LogProvider)
    with pytest.raises(ValueError, match="cannot be overridden"):
        WebhookProvider(url="http://x/", secret_env="S", headers={"X-Loyalty-Signature": "x"})


def test_the_start_up_check_names_every_broken_template() -> None:
    broken = LoyaltyApp(programs=[Program(name="default")], templates=BROKEN)
    with pytest.raises(InvalidFlows) as refused:
        check_app(broken)
    assert refused.value.problems == [
        "template bad_syntax.j2: line 1: syntax error: Unexpected end of template. Jinja was "
        "looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block "
        "that needs to be closed is 'if'.",
        "template unknown_var.j2: unknown variables first_name, points_balance; known: "
        "balances, channel, data, event, locale, member, name, profile, program, template, "
        "tier, upcoming_expiries",
    ]
    assert [spec.cls for spec in check_app(make_app(webhook("http://127.0.0.1:1/")))] == [ThankYou]
    missing = LoyaltyApp(programs=[Program(name="default")], templates=BROKEN / "nowhere")
    with pytest.raises(InvalidFlows, match="is not a folder"):
        check_app(missing)


async def test_webhook_is_signed_and_the_receiver_verifies_it(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/selligent", method="POST").respond_with_data("accepted")
    app = make_app(webhook(httpserver.url_for("/selligent")))
    activities = activities_for(pool, app, http)
    receipt = await attempt(1).run(activities.send_message, message())
    assert (receipt.status, receipt.provider, receipt.duplicate) == ("sent", "webhook", False)
    [(request, _)] = httpserver.log
    raw = request.get_data()
    payload = verify_signature(raw, request.headers[SIGNATURE_HEADER], SECRET)
    assert request.headers[IDEMPOTENCY_HEADER] == "journey:w1:thanks"
    assert request.headers[TIMESTAMP_HEADER] == str(payload["sent_at"])
    assert request.headers["X-Tenant"] == "coffee"
    assert request.headers["Content-Type"] == "application/json"
    assert {k: v for k, v in payload.items() if k != "sent_at"} == {
        "program": "default", "member_id": "m1", "channel": "email", "template": "thanks",
        "body": "Thanks friend for your web_login: 25 points.\n", "data": {"points": 25},
        "event": LOGIN.model_dump(mode="json"),
        "idempotency_key": "journey:w1:thanks",
    }  # fmt: skip
    # The same step again (a retry after the answer was lost): not sent twice.
    again = await attempt(2).run(activities.send_message, message())
    assert (again.message_id, again.duplicate) == (receipt.message_id, True)
    assert len(httpserver.log) == 1
    assert [(r["provider"], r["status"]) for r in await log_rows(conn)] == [("webhook", "sent")]
    assert await attempt_rows(conn) == [(1, 200, None)]
    assert SECRET not in await everything_stored(conn)


async def test_a_4xx_answer_fails_the_step_at_once_with_status_and_body(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/hook").respond_with_data("unknown contact m1", status=422)
    activities = activities_for(pool, make_app(webhook(httpserver.url_for("/hook"))), http)
    with pytest.raises(ApplicationError) as failed:
        await attempt(1).run(activities.send_message, message())
    assert failed.value.type == "MessageRejected"
    assert failed.value.non_retryable
    assert failed.value.message == (
        f"webhook {httpserver.url_for('/hook')} answered 422: unknown contact m1"
    )
    assert SECRET not in failed.value.message
    assert [(r["status"], r["detail"]) for r in await log_rows(conn)] == [
        ("failed", failed.value.message)
    ]
    assert await attempt_rows(conn) == [(1, 422, failed.value.message)]


async def test_5xx_retries_with_the_same_key_until_max_attempts(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/hook").respond_with_handler(statuses(500, 503, 502))
    app = make_app(webhook(httpserver.url_for("/hook"), max_attempts=3))
    activities = activities_for(pool, app, http)
    for number in (1, 2):
        with pytest.raises(ApplicationError) as retried:
            await attempt(number).run(activities.send_message, message())
        assert (retried.value.type, retried.value.non_retryable) == ("MessageDeliveryError", False)
    with pytest.raises(ApplicationError) as failed:
        await attempt(3).run(activities.send_message, message())
    assert (failed.value.type, failed.value.non_retryable) == ("MessageFailed", True)
    assert "answered 502" in failed.value.message
    assert "attempt 3 of 3, giving up" in failed.value.message
    keys = {request.headers[IDEMPOTENCY_HEADER] for request, _ in httpserver.log}
    assert keys == {"journey:w1:thanks"}
    assert [(a, s) for a, s, _ in await attempt_rows(conn)] == [(1, 500), (2, 503), (3, 502)]
    assert [r["status"] for r in await log_rows(conn)] == ["failed"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_receiver_down_for_a_while_gets_the_message_when_it_comes_back(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
) -> None:  # fmt: skip
    port = free_port()
    app = make_app(webhook(f"http://127.0.0.1:{port}/hook"))
    activities = activities_for(pool, app, http)
    with pytest.raises(ApplicationError) as refused:
        await attempt(1).run(activities.send_message, message())
    assert (refused.value.type, refused.value.non_retryable) == ("MessageDeliveryError", False)
    assert "ConnectError" in str(refused.value)
    server = HTTPServer(host="127.0.0.1", port=port)
    server.expect_request("/hook").respond_with_data("ok")
    server.start()
    try:
        receipt = await attempt(2).run(activities.send_message, message())
    finally:
        server.stop()
    assert receipt.status == "sent"
    [(request, _)] = server.log
    assert request.headers[IDEMPOTENCY_HEADER] == "journey:w1:thanks"
    rows = await attempt_rows(conn)
    assert [(a, s) for a, s, _ in rows] == [(1, None), (2, 200)]
    assert rows[0][2] is not None
    assert rows[0][2].startswith("ConnectError")


async def test_a_timeout_is_retried(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    released = threading.Event()

    def slow(request: Request) -> Response:
        released.wait(timeout=10)
        return Response("late")

    httpserver.expect_request("/hook").respond_with_handler(slow)
    app = make_app(webhook(httpserver.url_for("/hook"), timeout_seconds=0.05))
    activities = activities_for(pool, app, http)
    with pytest.raises(ApplicationError) as timed_out:
        await attempt(1).run(activities.send_message, message())
    assert (timed_out.value.type, timed_out.value.non_retryable) == ("MessageDeliveryError", False)
    assert "ReadTimeout" in str(timed_out.value)
    assert [r["status"] for r in await log_rows(conn)] == ["pending"]
    # Let the server answer the abandoned request now, inside this test, so its late entry
    # does not land in the next test's log of the shared server.
    released.set()
    for _ in range(200):
        if httpserver.log:
            break
        await asyncio.sleep(0.05)
    assert len(httpserver.log) == 1


async def test_a_member_who_withdrew_consent_is_not_sent_to_on_that_channel(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/hook").respond_with_data("ok")
    await conn.execute(
        "INSERT INTO members (program, member_id, profile) VALUES ('default', 'm1', $1)",
        {"name": "Ana", "consent": {"email": False, "sms": True}},
    )
    activities = activities_for(pool, make_app(webhook(httpserver.url_for("/hook"))), http)
    receipt = await attempt(1).run(activities.send_message, message())
    assert (receipt.status, receipt.detail) == ("skipped", "no consent")
    assert httpserver.log == []
    # SMS (the log provider here) is still allowed.
    sms = await attempt(1).run(activities.send_message, message(channel="sms", key="k-sms"))
    assert (sms.status, sms.provider) == ("sent", "log")
    assert [(r["channel"], r["status"], r["detail"]) for r in await log_rows(conn)] == [
        ("email", "skipped", "skipped: no consent"),
        ("sms", "sent", None),
    ]


async def test_templates_see_tier_balances_expiries_profile_event_and_data(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO members (program, member_id, profile, tier) VALUES ('default', 'm1', $1, "
        "'gold')",
        {"name": "Ana", "locale": "pt-PT"},
    )
    app = LoyaltyApp(programs=[Program(name="default")], templates=TEMPLATES)
    activities = activities_for(pool, app, http)
    await ActivityEnvironment().run(
        activities.award_points,
        AwardPointsInput(
            program="default", member_id="m1", points=120, reason="bonus",
            idempotency_key="journey:w1:bonus", workflow_id="w1",
        ),
    )  # fmt: skip
    await conn.execute("UPDATE lots SET expires_at = '2031-03-01T00:00:00Z'")
    step = message(template="gold_welcome", data={"note": "enjoy"}, channel="push")
    receipt = await attempt(1).run(activities.send_message, step)
    assert receipt.provider == "log"
    [row] = await log_rows(conn)
    assert row["body"] == (
        "Hello Ana (pt-PT), welcome to gold in default!\n"
        "You have 120 points.\n"
        "120 points expire on 2031-03-01.\n"
        "Trigger: activity web_login. Note: enjoy.\n"
    )
    assert await attempt_rows(conn) == [(1, None, None)]


async def test_a_missing_variable_or_file_fails_the_step_naming_template_and_variable(
    app_db: str, pool: asyncpg.Pool, conn: asyncpg.Connection, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    activities = activities_for(pool, make_app(webhook(httpserver.url_for("/hook"))), http)
    with pytest.raises(ApplicationError) as missing:
        await attempt(1).run(activities.send_message, message(template="coupon", key="k1"))
    assert (missing.value.type, missing.value.non_retryable) == ("TemplateError", True)
    assert missing.value.message == "template 'coupon': 'dict object' has no attribute 'coupon'"
    with pytest.raises(ApplicationError) as no_file:
        await attempt(1).run(activities.send_message, message(template="nothing", key="k2"))
    assert no_file.value.type == "TemplateError"
    assert no_file.value.message == "template 'nothing': no file nothing.j2 in the templates folder"
    assert httpserver.log == []
    assert [(r["template"], r["status"]) for r in await log_rows(conn)] == [
        ("coupon", "failed"), ("nothing", "failed"),
    ]  # fmt: skip
    # Without a templates folder there is nothing to render: body is null.
    plain = activities_for(pool, make_app(LogProvider(), templates=None), http)
    await attempt(1).run(plain.send_message, message(template="coupon", key="k3", channel="sms"))
    assert (await log_rows(conn))[-1]["body"] is None


async def test_a_journey_retries_a_receiver_that_answers_503_twice(
    time_env: WorkflowEnvironment, app_db: str, pool: asyncpg.Pool,
    conn: asyncpg.Connection, http: httpx.AsyncClient, httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/hook").respond_with_handler(statuses(503, 503))
    app = make_app(webhook(httpserver.url_for("/hook")))
    activities = activities_for(pool, app, http)
    queue = f"messages-{uuid.uuid4().hex}"
    trigger = events.Activity(event_id="e1", member_id="m1", name="web_login")
    async with Worker(
        time_env.client, task_queue=queue, workflows=[ThankYou], activities=activities.all()
    ):
        handle = await time_env.client.start_workflow(
            ThankYou.run, trigger, id=f"journey-{uuid.uuid4().hex}", task_queue=queue,
        )  # fmt: skip
        receipt = await handle.result()
    assert receipt.status == "sent"
    keys = [request.headers[IDEMPOTENCY_HEADER] for request, _ in httpserver.log]
    assert keys == [f"journey:{handle.id}:thanks"] * 3
    assert [(a, s) for a, s, _ in await attempt_rows(conn)] == [(1, 503), (2, 503), (3, 200)]
    records = await member_messages(conn, "m1")
    assert [(r.status, len(r.attempts)) for r in records] == [("sent", 3)]


async def test_a_journey_fails_on_a_4xx_without_retrying(
    time_env: WorkflowEnvironment, app_db: str, pool: asyncpg.Pool, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    httpserver.expect_request("/hook").respond_with_data("bad request", status=400)
    activities = activities_for(pool, make_app(webhook(httpserver.url_for("/hook"))), http)
    queue = f"messages-{uuid.uuid4().hex}"
    async with Worker(
        time_env.client, task_queue=queue, workflows=[ThankYou], activities=activities.all()
    ):
        handle = await time_env.client.start_workflow(
            ThankYou.run, events.Activity(event_id="e1", member_id="m1", name="web_login"),
            id=f"journey-{uuid.uuid4().hex}", task_queue=queue,
        )  # fmt: skip
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "MessageRejected"
    assert "answered 400: bad request" in str(cause.cause)
    assert len(httpserver.log) == 1


async def test_emit_to_router_to_journey_to_webhook_on_localhost(
    start_worker: StartWorker, client: LoyaltyClient, conn: asyncpg.Connection,
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, dev_env: WorkflowEnvironment,
) -> None:  # fmt: skip
    httpserver.expect_request("/selligent", method="POST").respond_with_data("ok")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    app = make_app(webhook(httpserver.url_for("/selligent")))
    settings = await start_worker(app=app)
    await client.wait(
        [await client.emit(events.Activity(event_id="e1", member_id="m1", name="web_login"))],
        timeout=30,
    )
    async with asyncio.timeout(30):
        while not httpserver.log:
            await asyncio.sleep(0.1)
    [(request, _)] = httpserver.log
    payload = verify_signature(request.get_data(), request.headers[SIGNATURE_HEADER], SECRET)
    workflow_id = f"journey/default/ThankYou/m1/event/e1@{settings.task_queue}"
    assert payload["idempotency_key"] == f"journey:{workflow_id}:thanks"
    assert payload["body"] == "Thanks friend for your web_login: 25 points.\n"
    assert payload["event"]["event_id"] == "e1"  # type: ignore[index]
    receipt = await dev_env.client.get_workflow_handle(
        workflow_id, result_type=MessageReceipt
    ).result()
    assert receipt.status == "sent"
    assert SECRET not in await everything_stored(conn)


async def test_a_worker_without_the_webhook_secret_refuses_to_start(
    start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=f"missing: {SECRET_ENV}"):
        await start_worker(app=make_app(webhook("http://127.0.0.1:1/hook")))


async def test_loyalty_messages_lists_a_members_messages_with_attempts(
    settings_env: dict[str, object], app_db: str, pool: asyncpg.Pool, http: httpx.AsyncClient,
    httpserver: HTTPServer,
) -> None:  # fmt: skip
    from loyalty.cli.messages import list_messages
    from loyalty.settings import Settings

    httpserver.expect_request("/hook").respond_with_handler(statuses(503))
    activities = activities_for(pool, make_app(webhook(httpserver.url_for("/hook"))), http)
    with pytest.raises(ApplicationError):
        await attempt(1).run(activities.send_message, message())
    await attempt(2).run(activities.send_message, message())
    await attempt(1).run(activities.send_message, message(channel="sms", key="k-sms"))
    settings = Settings(**settings_env)  # type: ignore[arg-type]
    records = await list_messages(settings, "m1", "default", 10)
    assert [(r.channel, r.provider, r.status) for r in records] == [
        ("sms", "log", "sent"), ("email", "webhook", "sent"),
    ]  # fmt: skip
    assert [(a.attempt, a.http_status) for a in records[1].attempts] == [(1, 503), (2, 200)]
    assert records[1].attempts[0].at <= datetime.now(UTC) + timedelta(seconds=1)
    # A program the database does not know is invalid input (exit code 2 in the CLI).
    with pytest.raises(UnknownProgram, match="unknown program 'other'"):
        await list_messages(settings, "m1", "other", 10)


async def test_loyalty_messages_lists_a_members_messages_with_their_attempts(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    """`loyalty messages --member` as a user runs it: a real process on the test's database."""
    from tests.test_cli import cli_env, loyalty

    await conn.execute(
        """INSERT INTO message_log (program, member_id, template, channel, data,
                                    idempotency_key, workflow_id, status, provider, body)
           VALUES ('default', 'm1', 'gold_welcome', 'email', '{}', 'journey:w1:welcome', 'w1',
                   'sent', 'webhook', 'Welcome to gold')"""
    )
    await conn.execute(
        """INSERT INTO message_attempts (idempotency_key, attempt, http_status, error)
           VALUES ('journey:w1:welcome', 1, 503, 'HTTP 503'),
                  ('journey:w1:welcome', 2, 200, NULL)"""
    )
    env = cli_env(settings_env)
    run = await loyalty(env, "messages", "--member", "m1", "--json")
    assert run.code == 0, run.err
    [record] = [json.loads(line) for line in run.lines]
    assert (record["template"], record["status"], record["provider"]) == (
        "gold_welcome",
        "sent",
        "webhook",
    )
    assert [(a["attempt"], a["http_status"]) for a in record["attempts"]] == [(1, 503), (2, 200)]
    table = await loyalty({**env, "COLUMNS": "200"}, "messages", "--member", "m1")
    assert table.code == 0, table.err
    assert "gold_welcome" in table.out
    assert "sent" in table.out
