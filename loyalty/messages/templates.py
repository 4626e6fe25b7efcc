"""Message templates: Jinja2 files ``<template>.j2`` in the app's templates folder.

Templates render in a sandboxed environment (`jinja2.sandbox.SandboxedEnvironment`: no
access to underscore attributes or unsafe callables) with `jinja2.StrictUndefined`, so a
missing variable is an error instead of an empty string. The context (`CONTEXT_NAMES`):

* ``member``: the whole member view (`loyalty.models.MemberView`, as a dict);
* ``tier``: the member's tier (first scheme) or None;
* ``balances``: ``{currency: {available, earned, debt, lifetime_earned}}``;
* ``upcoming_expiries``: ``[{currency, points, expires_at}]``, soonest first;
* ``profile``: the member's profile; ``name`` and ``locale`` are its keys of that name
  (None when absent);
* ``event``: the trigger event passed as ``event=`` (a dict), or None;
* ``data``: the step's ``data=``;
* ``program``, ``channel``, ``template``: the step's.

`check_templates` (run by `loyalty.flows.check_app`, so at worker start and by every
command that loads the app) parses every file: syntax errors and top-level variables
outside the context are problems, one line each naming the file. A variable that exists
only at run time (``data.first_name``, ``balances.stars``) is checked at render time: a
`TemplateProblem` naming the template and the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, meta
from jinja2.sandbox import SandboxedEnvironment

from loyalty.errors import LoyaltyError
from loyalty.models import MemberView

SUFFIX = ".j2"
CONTEXT_NAMES = frozenset(
    {"member", "tier", "balances", "upcoming_expiries", "profile", "name", "locale", "event",
     "data", "program", "channel", "template"}
)  # fmt: skip


class TemplateProblem(LoyaltyError):
    """A template cannot be found, parsed or rendered with the context it was given."""


def environment(folder: Path) -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment of a templates folder."""
    return SandboxedEnvironment(
        loader=FileSystemLoader(folder),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def check_templates(folder: Path) -> list[str]:
    """Problems of the templates in ``folder``, one line each naming the file."""
    if not folder.is_dir():
        return [f"templates: {folder} is not a folder"]
    env = environment(folder)
    problems = []
    for path in sorted(folder.rglob(f"*{SUFFIX}")):
        label = f"template {path.relative_to(folder).as_posix()}"
        try:
            parsed = env.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" line {line}:" if line else ""
            problems.append(f"{label}:{where} syntax error: {exc.message}")
            continue
        unknown = sorted(meta.find_undeclared_variables(parsed) - CONTEXT_NAMES)
        if unknown:
            problems.append(
                f"{label}: unknown variable{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}; known: {', '.join(sorted(CONTEXT_NAMES))}"
            )
    return problems


def context(
    view: MemberView | None,
    *,
    event: Mapping[str, object] | None,
    data: Mapping[str, object],
    program: str,
    channel: str,
    template: str,
) -> dict[str, Any]:
    """The variables a template sees; ``view`` None for a member not known yet."""
    member = view.model_dump() if view is not None else None
    profile: dict[str, object] = dict(view.profile) if view is not None else {}
    return {
        "member": member,
        "tier": view.tier if view is not None else None,
        "balances": member["balances"] if member else {},
        "upcoming_expiries": member["upcoming_expiries"] if member else [],
        "profile": profile,
        "name": profile.get("name"),
        "locale": profile.get("locale"),
        "event": dict(event) if event is not None else None,
        "data": dict(data),
        "program": program,
        "channel": channel,
        "template": template,
    }


def render(env: SandboxedEnvironment, template: str, variables: Mapping[str, Any]) -> str:
    """Render ``<template>.j2``.

    Raises:
        TemplateProblem: no such file, a syntax error, or a missing variable (named).
    """
    try:
        return env.get_template(f"{template}{SUFFIX}").render(variables)
    except TemplateNotFound:
        raise TemplateProblem(
            f"template {template!r}: no file {template}{SUFFIX} in the templates folder"
        ) from None
    except TemplateError as exc:
        raise TemplateProblem(f"template {template!r}: {exc.message}") from None
