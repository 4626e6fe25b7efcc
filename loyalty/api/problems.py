"""Error bodies of the HTTP API: ``application/problem+json`` (RFC 9457).

Every error has ``type`` (a URN naming the kind), ``title``, ``status`` and ``detail``;
input errors add ``errors``, one entry per problem with the ``field`` path it concerns
(``events[3].points``) and a ``message``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

MEDIA_TYPE = "application/problem+json"


class FieldProblem(BaseModel):
    """One problem of a request, naming the field."""

    field: str
    message: str


class Problem(BaseModel):
    """An error response."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Not allowed for this key"),
    404: ("not-found", "Not found"),
    413: ("too-large", "Request body too large"),
    422: ("invalid-input", "Invalid input"),
    429: ("rate-limited", "Too many requests"),
    503: ("unavailable", "A service the API needs is unavailable"),
}


class ProblemError(Exception):
    """Raised by a handler to answer with a problem; `problem_response` renders it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[FieldProblem] | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors
        self.kind, self.headers = kind, headers


def field_problems(lines: list[str]) -> list[FieldProblem]:
    """Problem lines as `loyalty.events` writes them (``<field>: <message>``) as entries."""
    entries = []
    for line in lines:
        field, sep, message = line.partition(": ")
        entries.append(FieldProblem(field=field, message=message) if sep
                       else FieldProblem(field="", message=line))  # fmt: skip
    return entries


def problem_response(error: ProblemError) -> JSONResponse:
    """The response for ``error``."""
    kind, title = TITLES.get(error.status, ("error", "Error"))
    body: dict[str, Any] = Problem(
        type=f"urn:loyalty-flows:problem:{error.kind or kind}",
        title=title,
        status=error.status,
        detail=error.detail,
        errors=error.errors,
    ).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=error.status, media_type=MEDIA_TYPE,
                        headers=error.headers)  # fmt: skip
