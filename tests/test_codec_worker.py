"""Encrypted histories on the real dev server, read through the API's codec endpoint.

A worker and a client with a key run journeys; the history read back without the codec
holds ciphertext only, while the `temporal` CLI given the codec endpoint shows it. The
endpoint itself is called over HTTP on 127.0.0.1: keys, CORS, rotation, unknown keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import asyncpg
from temporalio.testing import WorkflowEnvironment

from loyalty import events
from loyalty.codec import ENCODING, KEY_ID
from loyalty.settings import Settings
from loyalty.store.embedded import find_binary
from loyalty.temporal import connect_temporal
from starter.client import LoyaltyClient
from tests.conftest import StartWorker, temporal_address
from tests.privacy_app import app
from tests.test_api import StartApi, deposit, make_key, problem_of, start_api
from tests.test_codec import NEW, OLD
from tests.test_emit_events import execute
from tests.test_privacy import history_text, journey, result

__all__ = ["start_api"]  # the fixture, imported

NAME = "Nome-Marcador-d41c"
NOTE = "nota-marcador-9b2e"
UI = "http://localhost:8233"


async def temporal_show(address: str, workflow_id: str, *codec: str) -> tuple[int, str, str]:
    """`temporal workflow show --output json` of a workflow, with codec options."""
    proc = await asyncio.create_subprocess_exec(
        find_binary("temporal"), "workflow", "show", "--workflow-id", workflow_id,
        "--address", address, "--output", "json", *codec,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def shown(json_text: str) -> str:
    """The history's text with every payload's data base64-decoded, as history_text."""
    found: list[str] = [json_text]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value).decode(errors="replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    try:
        walk(json.loads(json_text))
    except ValueError:
        for line in json_text.splitlines():
            with contextlib.suppress(ValueError):
                walk(json.loads(line))
    return "\n".join(found)


async def test_histories_hold_ciphertext_and_the_codec_endpoint_reads_them(
    settings_env: dict[str, object],
    start_worker: StartWorker,
    start_api: StartApi,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    keyed = {**settings_env, "LOYALTY_CODEC_KEYS": OLD}
    settings = Settings(**keyed)  # type: ignore[arg-type]
    temporal = await connect_temporal(settings)
    await start_worker(app=app, temporal=temporal, LOYALTY_CODEC_KEYS=OLD)
    async with await LoyaltyClient.connect(settings, app) as client:
        profile = events.MemberUpdated(event_id="u1", member_id="m1", profile={"name": NAME})
        emitted = [await client.emit(profile)]
        for event_id, name in (("p1", "profile_check"), ("l1", "web_login")):
            trigger = events.Activity(
                event_id=event_id, member_id="m1", name=name, attributes={"note": NOTE}
            )
            emitted.append(await client.emit(trigger))
        await client.wait(emitted, timeout=30)
    asked = await journey(conn, "ReadProfile", "p1")
    assert await result(temporal, asked) == NAME  # the codec's client decodes
    messenger = await journey(conn, "ReadMember", "l1")
    await result(temporal, messenger)

    # Without the codec: ciphertext, with the key id, and no marker anywhere.
    for workflow_id in (asked, messenger):
        raw = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
        as_bytes = b"".join(e.SerializeToString() for e in raw.events)
        for marker in (NAME, NOTE, "thanks", "profile_check"):
            assert marker.encode() not in as_bytes, (workflow_id, marker)
            assert marker not in history_text(raw), (workflow_id, marker)
        assert ENCODING in as_bytes
        assert KEY_ID.encode() in as_bytes

    admin = await make_key(conn, "admin")
    reader = await make_key(conn, "members:read")
    api = await start_api(LOYALTY_CODEC_KEYS=OLD)
    address = temporal_address(dev_env.client)
    endpoint = ("--codec-endpoint", f"{api.url}/codec", "--codec-auth", f"Bearer {admin}")
    code, out, err = await temporal_show(address, asked, *endpoint)
    assert code == 0, err
    assert NAME in shown(out)
    assert NOTE in shown(out)
    code, out, err = await temporal_show(address, messenger, *endpoint)
    assert code == 0, err
    assert NOTE in shown(out)
    assert "thanks" in shown(out)
    code, out, _ = await temporal_show(address, asked)
    assert NAME not in shown(out)

    # A service in another language starts EmitEvents with plain input: accepted; its
    # result is readable through the codec endpoint only.
    plain = await execute(settings, "emit-plain", [deposit("x1")])
    assert plain.code == 0, plain.err
    assert "accepted" not in shown(json.dumps(plain.result))
    coded = await execute(settings, "emit-coded", [deposit("x2")], *endpoint)
    assert coded.code == 0, coded.err
    assert coded.result == {
        "results": [{"event_id": "x2", "program": "default", "status": "accepted"}]
    }

    # Rotated: a new key first, the old one kept: the old history still reads, through
    # the endpoint and through a client; new payloads name the new key.
    rotated = await start_api(LOYALTY_CODEC_KEYS=f"{NEW},{OLD}")
    code, out, err = await temporal_show(
        address, asked, "--codec-endpoint", f"{rotated.url}/codec",
        "--codec-auth", f"Bearer {admin}",
    )  # fmt: skip
    assert code == 0, err
    assert NAME in shown(out)
    again = await connect_temporal(Settings(**{**keyed, "LOYALTY_CODEC_KEYS": f"{NEW},{OLD}"}))  # type: ignore[arg-type]
    assert await result(again, asked) == NAME

    raw = await dev_env.client.get_workflow_handle(asked).fetch_history()
    started = raw.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in started.metadata.items()},
                "data": base64.b64encode(started.data).decode(),
            }
        ]
    }
    async with api.client() as anonymous, api.client(reader) as read, api.client(admin) as ok:
        problem_of(await anonymous.post("/codec/decode", json=body), 401)
        problem_of(await read.post("/codec/decode", json=body), 403)
        problem_of(await read.post("/codec/encode", json=body), 403)
        decoded = await ok.post("/codec/decode", json=body, headers={"X-Namespace": "default"})
        assert decoded.status_code == 200, decoded.text
        [payload] = decoded.json()["payloads"]
        assert NOTE in base64.b64decode(payload["data"]).decode()
        assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
        # Encode then decode returns what was sent; the answer is encrypted with k1.
        encoded = (await ok.post("/codec/encode", json=decoded.json())).json()
        [sealed] = encoded["payloads"]
        assert base64.b64decode(sealed["metadata"][KEY_ID]) == b"k1"
        assert (await ok.post("/codec/decode", json=encoded)).json() == decoded.json()
        # Another namespace and bodies that are not payloads are refused, not crashed on.
        other = await ok.post("/codec/decode", json=body, headers={"X-Namespace": "other"})
        assert "namespace 'default', not 'other'" in problem_of(other, 400)["detail"]
        problem_of(await ok.post("/codec/decode", content=b"[1, 2"), 400)
        problem_of(await ok.post("/codec/decode", json={"payloads": [{"size": 1}]}), 400)

        # Preflights are answered without a key, for the Web UI's origin only.
        preflight = {
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
        }
        answer = await anonymous.options("/codec/decode", headers=preflight)
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == UI
        assert "x-namespace" in answer.headers["access-control-allow-headers"].lower()
        assert answer.headers["access-control-allow-credentials"] == "true"
        elsewhere = await anonymous.options(
            "/codec/decode", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert elsewhere.status_code == 400
        assert "access-control-allow-origin" not in elsewhere.headers
        cross = await ok.post("/codec/decode", json=body, headers={"Origin": UI})
        assert cross.headers["access-control-allow-origin"] == UI
        # The rest of the API answers no cross-origin request.
        members = await anonymous.options("/v1/members/m1", headers=preflight)
        assert "access-control-allow-origin" not in members.headers

    # An API whose keyring lacks k1 says so, naming the key id.
    newer = await start_api(LOYALTY_CODEC_KEYS=NEW)
    async with newer.client(admin) as ok:
        unknown = problem_of(await ok.post("/codec/decode", json=body), 400)
    assert "codec key 'k1'" in unknown["detail"]
    assert unknown["type"] == "urn:loyalty-flows:problem:codec"
    # Without any key: encoding is refused, plain payloads still pass decode.
    keyless = await start_api()
    async with keyless.client(admin) as ok:
        refused = problem_of(await ok.post("/codec/encode", json=decoded.json()), 400)
        assert "LOYALTY_CODEC_KEYS" in refused["detail"]
        problem_of(await ok.post("/codec/decode", json=body), 400)
