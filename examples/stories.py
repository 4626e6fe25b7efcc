"""What a demo story is: steps of events, the outcomes expected, and what checks them.

`examples.story` tells one; the runner (`loyalty.cli.main.demo`, behind `loyalty demo` and
`loyalty dev --demo`) plays it, filling a `Snapshot` from the database, Temporal and the
webhook receiver until every `Outcome` holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from examples.receiver import Received
from loyalty.models import MemberView


@dataclass(frozen=True)
class Step:
    """One beat of the story: a line of narration, then its events, emitted together.

    ``pause`` is real time waited before the step (the demo's "a day later").
    """

    say: str
    events: tuple[dict[str, Any], ...]
    pause: float = 0.0


@dataclass(frozen=True)
class Journey:
    """A journey the router started for a story member."""

    program: str
    member_id: str
    flow: str
    workflow_id: str
    status: str  # pending (not started yet), running, completed, failed, …


@dataclass
class Snapshot:
    """What the outcome checks look at: read from the database, Temporal, the receiver."""

    members: dict[tuple[str, str], MemberView | None] = field(default_factory=dict)
    journeys: list[Journey] = field(default_factory=list)
    messages: list[tuple[str, str, str, str]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)
    stages: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    # (program, segment) → the story's members in it now.
    segments: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # The demo's marketing list: alt id → the loyalty fields it holds.
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def member(self, program: str, member_id: str) -> MemberView | None:
        """The member's view, None before the program saw the member."""
        return self.members.get((program, member_id))

    def balance(self, program: str, member_id: str) -> tuple[int, int, int] | None:
        """(available, earned, debt) in the program's ``points``."""
        view = self.member(program, member_id)
        if view is None or "points" not in view.balances:
            return None
        b = view.balances["points"]
        return b.available, b.earned, b.debt

    def journeys_of(self, program: str, member_id: str) -> list[Journey]:
        """The member's journeys in the program."""
        return [j for j in self.journeys if (j.program, j.member_id) == (program, member_id)]


@dataclass(frozen=True)
class Outcome:
    """An expected outcome: a sentence and the check that says it happened."""

    text: str
    check: Callable[[Snapshot], bool]


@dataclass(frozen=True)
class Story:
    """Steps to play, members to show (program, member id), outcomes to check.

    ``webhook_port`` and ``webhook_secret_env``: where the demo's receiver listens and the
    variable holding the secret it checks signatures with (None: no receiver);
    ``list_port``: where the demo's marketing list listens (None: no list), with the same
    secret.
    """

    title: str
    members: tuple[tuple[str, str], ...]
    steps: tuple[Step, ...]
    outcomes: tuple[Outcome, ...]
    journeys_query: str
    webhook_port: int | None = None
    webhook_secret_env: str | None = None
    list_port: int | None = None
    settle_note: str = ""


def missing_outcomes(outcomes: Sequence[Outcome], snapshot: Snapshot) -> list[str]:
    """The sentences of the outcomes that did not happen (a check that raises did not)."""
    missing = []
    for outcome in outcomes:
        try:
            ok = outcome.check(snapshot)
        except Exception:
            ok = False
        if not ok:
            missing.append(outcome.text)
    return missing
