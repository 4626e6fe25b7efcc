"""The demo's story runner: `loyalty demo` and `loyalty dev --demo`.

It plays a story (`examples.stories.Story`: steps of events and the outcomes expected,
e.g. `examples.story`) against a running worker: it narrates each step in one line, emits
its events with `starter.client.LoyaltyClient`, waits until the events and the journeys
they started are done, shows a live table of the members (program, tier, available,
earned, debt, journeys running) and the messages the demo's webhook receiver got, then
checks the expected outcomes until they all hold or the timeout passes.

Time is never faked here: the story pauses in real time where the program's settings
make a "day" a few seconds long.

The receiver (`examples.receiver.WebhookReceiver`) is a small HTTP server on
127.0.0.1 that checks each request's signature, as a real marketing platform would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import asyncpg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus

from examples.marketing_list import MarketingList
from examples.receiver import WebhookReceiver
from examples.stories import Journey, Snapshot, Story, missing_outcomes
from loyalty.errors import UnknownMember
from loyalty.settings import Settings
from loyalty.store.db import create_pool
from starter.client import LoyaltyClient

# How often the live table and the outcome checks read the database and Temporal.
REFRESH_SECONDS = 0.5


def journeys_link(ui_url: str | None, namespace: str, query: str) -> str | None:
    """The Web UI's list of workflows filtered by ``query``."""
    if ui_url is None:
        return None
    return f"{ui_url}/namespaces/{namespace}/workflows?query={quote(query)}"


_STATUS = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued",
    WorkflowExecutionStatus.TIMED_OUT: "timed out",
}


class Observer:
    """Reads the story's state: members, journeys, messages, event outcomes."""

    def __init__(
        self,
        story: Story,
        pool: asyncpg.Pool,
        client: Client,
        receiver: WebhookReceiver | None,
        marketing: MarketingList | None = None,
    ) -> None:
        self.story = story
        self.pool = pool
        self.client = client
        self.receiver = receiver
        self.marketing = marketing
        self._closed: dict[str, str] = {}  # workflow id → final status, never asked again

    async def snapshot(self) -> Snapshot:
        """Everything the table and the checks need, read now."""
        from loyalty.ledger.members import member_view

        snap = Snapshot(received=self.receiver.received() if self.receiver else [])
        if self.marketing is not None:
            snap.contacts = self.marketing.snapshot()
        programs = sorted({p for p, _ in self.story.members})
        members = [m for _, m in self.story.members]
        async with self.pool.acquire() as conn:
            for program, member_id in self.story.members:
                try:
                    snap.members[(program, member_id)] = await member_view(conn, program, member_id)
                except UnknownMember:
                    snap.members[(program, member_id)] = None
            rows = await conn.fetch(
                """SELECT program, member_id, flow, workflow_id, started_at IS NOT NULL AS started
                   FROM journey_starts WHERE program = ANY($1) AND member_id = ANY($2)
                   ORDER BY created_at""",
                programs, members,
            )  # fmt: skip
            messages = await conn.fetch(
                """SELECT program, member_id, template, channel FROM message_log
                   WHERE program = ANY($1) AND member_id = ANY($2) ORDER BY id""",
                programs, members,
            )  # fmt: skip
            events = await conn.fetch(
                """SELECT program, event_id, type, member_id, payload, status, outcome, detail
                   FROM events WHERE program = ANY($1) AND member_id = ANY($2) ORDER BY id""",
                programs, members,
            )  # fmt: skip
            inside = await conn.fetch(
                """SELECT program, segment, member_id FROM segment_members
                   WHERE program = ANY($1) AND member_id = ANY($2) AND in_segment""",
                programs, members,
            )  # fmt: skip
        for r in inside:
            snap.segments.setdefault((r["program"], r["segment"]), set()).add(r["member_id"])
        snap.messages = [
            (m["program"], m["member_id"], m["template"], m["channel"]) for m in messages
        ]
        for e in events:
            status = e["status"]
            described = e["outcome"] or "applied" if status == "processed" else status
            if status == "rejected":
                described = f"rejected: {e['outcome']}: {e['detail']}"
            snap.outcomes[(e["program"], e["event_id"])] = described
            if e["type"] == "new_stage":
                p = json.loads(e["payload"]) if isinstance(e["payload"], str) else e["payload"]
                snap.stages.append(
                    (e["program"], e["member_id"], p.get("from_tier") or "", p["to_tier"],
                     p.get("cause") or "")
                )  # fmt: skip
        for row in rows:
            status = await self._status(row["workflow_id"], row["started"])
            snap.journeys.append(
                Journey(row["program"], row["member_id"], row["flow"], row["workflow_id"], status)
            )
        return snap

    async def _status(self, workflow_id: str, started: bool) -> str:
        if workflow_id in self._closed:
            return self._closed[workflow_id]
        if not started:
            return "pending"
        try:
            described = await self.client.get_workflow_handle(workflow_id).describe()
        except Exception:
            return "pending"
        status = _STATUS.get(described.status, "running") if described.status else "running"
        if status != "running":
            self._closed[workflow_id] = status
        return status

    async def settled(self, programs: Sequence[str]) -> bool:
        """No event of the programs pending and no journey of the story open."""
        async with self.pool.acquire() as conn:
            pending = await conn.fetchval(
                "SELECT count(*) FROM events WHERE program = ANY($1) AND status = 'pending'",
                list(programs),
            )
        if pending:
            return False
        snap = await self.snapshot()
        return all(j.status not in ("pending", "running") for j in snap.journeys)


def render(story: Story, snap: Snapshot) -> Group:
    """The live view: one row per member, then the webhook's received messages."""
    table = Table(
        "program", "member", "tier", "available", "earned", "debt", "journeys running",
        "journeys done", title=story.title,
    )  # fmt: skip
    for program, member_id in story.members:
        view = snap.member(program, member_id)
        journeys = snap.journeys_of(program, member_id)
        running = [j.flow for j in journeys if j.status in ("pending", "running")]
        done = sum(1 for j in journeys if j.status not in ("pending", "running"))
        if view is None:
            table.add_row(program, member_id, "-", "-", "-", "-", "-", "-", style="dim")
            continue
        available, earned, debt = snap.balance(program, member_id) or (0, 0, 0)
        table.add_row(
            program, member_id, view.tier or "-", f"{available:,}", f"{earned:,}",
            f"{debt:,}" if debt else "-", ", ".join(running) or "-", str(done),
        )  # fmt: skip
    parts: list[Any] = [table]
    if story.webhook_port is not None:
        inbox = Table(
            "member", "template", "message", "idempotency key", "signature",
            title=f"Received by the webhook receiver on 127.0.0.1:{story.webhook_port}",
        )  # fmt: skip
        for r in snap.received:
            inbox.add_row(
                str(r.body.get("member_id", "?")), str(r.body.get("template", "?")),
                str(r.body.get("body") or "-").strip(), r.idempotency_key or "-",
                "refused: " + r.error if r.error else
                "verified, duplicate: not acted on" if r.duplicate else "verified",
            )  # fmt: skip
        if not snap.received:
            inbox.add_row("-", "nothing yet", "-", "-", "-")
        parts.append(inbox)
    if story.list_port is not None:
        parts.append(_list_table(story, snap))
    return Group(*parts)


def _list_table(story: Story, snap: Snapshot) -> Table:
    """The demo's marketing list: a row per contact of the story's members."""
    names = sorted({name for fields in snap.contacts.values() for name in fields})
    table = Table(
        "alt id", *names,
        title=f"Marketing list on 127.0.0.1:{story.list_port}, kept by the profile stream",
    )  # fmt: skip
    for key, fields in sorted(snap.contacts.items()):
        table.add_row(key, *("-" if fields.get(n) is None else str(fields[n]) for n in names))
    if not snap.contacts:
        table.add_row("nothing yet")
    return table


async def _first_unplayed(pool: asyncpg.Pool, story_for: Callable[[int], Story]) -> Story:
    """The story with the first run number whose members no program has seen yet.

    Playing again in the same data folder casts new members (``ana-2``…), so that every
    run starts from nothing and its outcomes can be checked.
    """
    async with pool.acquire() as conn:
        for run in range(1, 1000):
            story = story_for(run)
            seen = await conn.fetchval(
                """SELECT count(*) FROM members AS m
                   JOIN unnest($1::text[], $2::text[]) AS s(program, member_id)
                     ON (m.program, m.member_id) = (s.program, s.member_id)""",
                [p for p, _ in story.members], [m for _, m in story.members],
            )  # fmt: skip
            if not seen:
                return story
    raise RuntimeError("the demo story was played 999 times in this data folder")


def next_commands(story: Story, settings: Settings) -> list[str]:
    """What to try after the demo, in another shell: the story's first member and program.

    The commands need the same database (the same folder, ``LOYALTY_HOME`` or
    ``LOYALTY_DATABASE_URL``) and find the demo's app themselves (`loyalty.cli.apps`).
    """
    if settings.database_url is not None:
        where = "with the same LOYALTY_DATABASE_URL"
    elif settings.home == Settings.model_fields["home"].default:
        where = "in this folder"
    else:
        where = f"with LOYALTY_HOME={settings.home}"
    program, member = story.members[0]
    return [
        f"Next, in another shell {where} (the commands find the demo's app themselves):",
        f"  loyalty member {member}",
        f"  loyalty messages --member {member} --program {program}",
        "  loyalty flows",
        f"  loyalty maintenance status --program {program}",
        "  loyalty report",
    ]


async def play(
    story_for: Callable[[int], Story],
    settings: Settings,
    client: Client,
    dsn: str,
    ui_url: str | None,
    console: Console,
    *,
    timeout: float,
    exit_when_done: bool,
) -> int:
    """Play the story, show it live, check its outcomes; 0 when every outcome happened.

    With ``exit_when_done`` it returns once the outcomes are checked (1 when some are
    missing, each listed on its own line); otherwise it keeps the webhook receiver
    running until cancelled (Ctrl-C of `loyalty dev --demo`).
    """
    deadline = time.monotonic() + timeout
    pool = await create_pool(dsn, size=2)
    receiver: WebhookReceiver | None = None
    marketing: MarketingList | None = None
    try:
        story = await _first_unplayed(pool, story_for)
        if story.webhook_port is not None and story.webhook_secret_env is not None:
            receiver = WebhookReceiver(story.webhook_port, os.environ[story.webhook_secret_env])
            try:
                receiver.start()
            except OSError as exc:
                console.print(
                    f"[yellow]webhook receiver: cannot listen on 127.0.0.1:{story.webhook_port} "
                    f"({exc}); set LOYALTY_DEMO_WEBHOOK_PORT to a free port[/]"
                )
                receiver = None
        if story.list_port is not None and story.webhook_secret_env is not None:
            marketing = MarketingList(os.environ[story.webhook_secret_env], story.list_port)
            try:
                marketing.start()
            except OSError as exc:
                console.print(
                    f"[yellow]marketing list: cannot listen on 127.0.0.1:{story.list_port} "
                    f"({exc}); set LOYALTY_DEMO_LIST_PORT to a free port[/]"
                )
                marketing = None
        observer = Observer(story, pool, client, receiver, marketing)
        link = journeys_link(ui_url, settings.temporal_namespace, story.journeys_query)
        console.rule(f"[bold]{story.title}")
        if link:
            console.print(f"Journeys in the Temporal Web UI: {link}", soft_wrap=True)
        try:
            async with await LoyaltyClient.connect(settings) as loyalty:
                code = await _play_live(story, observer, loyalty, console, deadline)
        except Exception as exc:
            if exit_when_done:
                raise
            # `loyalty dev --demo` goes on serving whatever happened to the story.
            console.print(f"[red]the demo story stopped: {exc!r}[/]")
            code = 1
        if link:
            console.print(f"Journeys in the Temporal Web UI: {link}", soft_wrap=True)
        if exit_when_done:
            return code
        for line in next_commands(story, settings):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        console.print("The worker keeps running; stop with Ctrl-C.")
        await asyncio.Event().wait()  # the receiver keeps serving until Ctrl-C
        return code
    finally:
        if receiver is not None:
            receiver.stop()
        if marketing is not None:
            marketing.stop()
        await pool.close()


async def _play_live(
    story: Story, observer: Observer, loyalty: LoyaltyClient, console: Console, deadline: float
) -> int:
    programs = sorted({p for p, _ in story.members})
    with Live(render(story, Snapshot()), console=console, refresh_per_second=4) as live:

        async def refresh() -> None:
            while True:
                with contextlib.suppress(Exception):
                    live.update(render(story, await observer.snapshot()))
                await asyncio.sleep(REFRESH_SECONDS)

        refresher = asyncio.create_task(refresh())
        try:
            for number, step in enumerate(story.steps, 1):
                if step.pause:
                    live.console.print(f"   [dim]… {step.pause:.0f} seconds later[/]")
                    await asyncio.sleep(step.pause)
                live.console.print(f"[bold cyan]{number:2d}.[/] {step.say}")
                results = await loyalty.emit_many(step.events)
                left = max(1.0, deadline - time.monotonic())
                try:
                    outcomes = await loyalty.wait(results, left)
                    said = ", ".join(f"{o.event_id} {o.describe()}" for o in outcomes)
                except TimeoutError:
                    said = "still pending: is the worker running?"
                live.console.print(f"    [dim]→ {said}[/]", highlight=False)
                # The next step may depend on this one's journeys (a balance above 200).
                while time.monotonic() < deadline:
                    if await observer.settled(programs):
                        break
                    await asyncio.sleep(REFRESH_SECONDS)
            if story.settle_note:
                live.console.print(f"[bold cyan] ⏳[/] {story.settle_note}")
            while True:
                snap = await observer.snapshot()
                missing = missing_outcomes(story.outcomes, snap)
                if not missing or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(REFRESH_SECONDS)
            live.update(render(story, snap))
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
    if not console.is_terminal:
        console.line()  # a console that is not a terminal gets the last table without one
    for outcome in story.outcomes:
        if outcome.text in missing:
            console.print(f"[red]✗ missing:[/] {outcome.text}", highlight=False)
        else:
            console.print(f"[green]✓[/] {outcome.text}", highlight=False)
    total = len(story.outcomes)
    if missing:
        console.print(f"[bold red]{len(missing)} of {total} expected outcomes missing[/]")
        return 1
    console.print(f"[bold green]all {total} expected outcomes happened[/]")
    return 0


def prepare_demo() -> None:
    """Give the demo's webhook provider its secret (random) unless the environment has one.

    Called before the worker starts, which reads the secret once (`loyalty.messages`).
    """
    from examples.messaging import WEBHOOK_SECRET_ENV

    if not os.environ.get(WEBHOOK_SECRET_ENV):
        os.environ[WEBHOOK_SECRET_ENV] = secrets.token_hex(32)


def story_hook(
    settings: Settings, console: Console, *, timeout: float, exit_when_done: bool
) -> Callable[[Client, str, str | None], Awaitable[int]]:
    """`examples.story` as `loyalty.cli.dev.run_dev`'s story."""
    from examples.story import story

    def hook(client: Client, dsn: str, ui_url: str | None) -> Awaitable[int]:
        return play(
            story, settings, client, dsn, ui_url, console,
            timeout=timeout, exit_when_done=exit_when_done,
        )  # fmt: skip

    return hook
