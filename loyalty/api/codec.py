"""The codec server: ``POST /codec/encode`` and ``/codec/decode`` for Temporal's tools.

The Temporal Web UI and ``temporal … --codec-endpoint <api>/codec`` send the payloads
they show as JSON (``{"payloads": [{"metadata": {k: base64}, "data": base64}]}``, the
protobuf JSON of ``Payloads``) with the namespace in ``X-Namespace``; the answer has the
same shape. Only a key with the ``admin`` scope may call them (``LOYALTY_CODEC_AUTH=none``
opens them, for `loyalty dev`'s Web UI on a loopback address). Browsers of the Web UI's
origins get CORS answers, preflights without a key (`CodecCors`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from google.protobuf.json_format import MessageToJson, Parse, ParseError
from pydantic import BaseModel, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads

from loyalty.api.problems import Problem, ProblemError
from loyalty.codec import EncryptionCodec
from loyalty.errors import CodecError

PREFIX = "/codec"
# A history's payloads may be large (Temporal allows 2 MiB each); the UI sends one
# event's at a time.
MAX_CODEC_BODY = 8 * 1024 * 1024
_HEADERS = ["Authorization", "Content-Type", "X-Namespace"]
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CodecPayloads"}}},
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": Problem,
        "description": "Not payloads JSON, another namespace, a payload that does not "
        "decrypt or names an unknown key id, or no key configured",
    },
    413: {"model": Problem, "description": "Body over 8 MiB"},
}


class CodecPayload(BaseModel):
    """A Temporal payload in protobuf JSON: metadata values and data in base64."""

    metadata: dict[str, str] = {}
    data: str = ""


class CodecPayloads(BaseModel):
    """The body of a codec request and of its answer."""

    payloads: list[CodecPayload] = Field(default_factory=list)


class CodecCors:
    """CORS (Starlette's) on the codec routes only, for the Web UI's origins.

    A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here,
    before any key is asked for: browsers send it without credentials. The rest of the
    API answers no cross-origin request.
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["POST"],
            allow_headers=_HEADERS,
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _payloads(body: bytes) -> list[Payload]:
    try:
        message = Parse(body.decode("utf-8"), Payloads())
    except (ParseError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f'body: expected {{"payloads": [...]}}: {exc}') from None
    return list(message.payloads)


def _answer(payloads: list[Payload]) -> Response:
    return Response(
        MessageToJson(Payloads(payloads=payloads), indent=None),
        media_type="application/json",
    )


def codec_routes(
    codec: EncryptionCodec | None,
    namespace: str,
    guard: Any,
    read_body: Callable[[Request, int], Awaitable[bytes]],
) -> APIRouter:
    """The codec routes for ``namespace``, given the codec (None: no key configured), the
    dependency that checks the caller (``Depends(...)``) and the body reader."""
    router = APIRouter(prefix=PREFIX, tags=["codec"], dependencies=[guard])

    def check(x_namespace: str | None) -> EncryptionCodec:
        if x_namespace is not None and x_namespace != namespace:
            raise ProblemError(
                400, f"this codec serves the namespace {namespace!r}, not {x_namespace!r}"
            )
        if codec is None:
            raise ProblemError(
                400,
                "this API has no codec key: set LOYALTY_CODEC_KEYS or LOYALTY_CODEC_KEYRING",
            )
        return codec

    @router.post("/encode", response_model=CodecPayloads, responses=_RESPONSES, openapi_extra=_BODY)
    async def encode(
        request: Request, x_namespace: str | None = Header(None, alias="X-Namespace")
    ) -> Response:
        """Encrypt payloads with the current key."""
        found = check(x_namespace)
        return _answer(found.encode_sync(_payloads(await read_body(request, MAX_CODEC_BODY))))

    @router.post("/decode", response_model=CodecPayloads, responses=_RESPONSES, openapi_extra=_BODY)
    async def decode(
        request: Request, x_namespace: str | None = Header(None, alias="X-Namespace")
    ) -> Response:
        """Decrypt payloads with the key each names; payloads not encrypted pass as they are."""
        found = check(x_namespace)
        payloads = _payloads(await read_body(request, MAX_CODEC_BODY))
        try:
            return _answer(found.decode_sync(payloads))
        except CodecError as exc:
            raise ProblemError(400, str(exc), kind="codec") from None

    return router
