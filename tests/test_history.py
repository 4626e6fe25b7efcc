"""Liability over time: the housekeeping step's daily snapshots, a program's point value,
``loyalty report --history``, and the housekeeping loop's replay across the new step.

The shop program values a point at EUR 0.01. Ann gets 150 points, the day's housekeeping
runs: the day's row says 150 points, EUR 1.50. She gets 50 more and a second run of the
same day (``run now``) rewrites that row to 200; a retried activity of the first run
writes nothing more. Yesterday's run left its own row.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHistory
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.housekeeping import HousekeepingActivities
from loyalty.app import LoyaltyApp, PointValue, Program
from loyalty.events import PointsDeposit
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.history import Money, history
from loyalty.models import HousekeepingProgress, HousekeepingWork
from loyalty.router.processing import EventProcessor
from loyalty.settings import Settings
from loyalty.store.db import Conn, prepare_database
from loyalty.temporal import DATA_CONVERTER
from tests.test_cli import loyalty
from workflows.housekeeping import Housekeeping

HISTORIES = Path(__file__).parent / "histories"
APP = LoyaltyApp(
    programs=[
        Program(
            name="shop",
            currencies=("points", "tier_points"),
            point_value=PointValue(amount=Decimal("0.01"), currency="EUR"),
        ),
        Program(name="cafe"),
    ]
)


async def deposit(conn: Conn, program: str, member: str, points: int, currency: str) -> None:
    event = PointsDeposit(
        event_id=uuid.uuid4().hex, member_id=member, program=program,
        points=points, kind="available", account=currency, reason="welcome",
    )  # fmt: skip
    await insert_events(conn, [event])
    async with conn.transaction():
        await EventProcessor(APP).apply(conn, event)


async def housekeeping(activities: HousekeepingActivities, as_of: datetime) -> list[str]:
    """Every step of the shop's run at ``as_of``, as the loop calls them; the steps done."""
    work = HousekeepingWork(program="shop", as_of=as_of)
    steps = {
        "mature": activities.mature, "expire": activities.expire,
        "remind": activities.remind, "segments": activities.segments,
        "snapshot": activities.snapshot, "prune": activities.prune,
    }  # fmt: skip
    done, step = [], "mature"
    while step != "done":
        run: HousekeepingProgress = await ActivityEnvironment().run(steps[step], work)
        done.append(step)
        step = run.step
    return done


def test_a_point_value_is_money_and_names_a_currency_of_the_program() -> None:
    value = PointValue(amount=Decimal("0.01"), currency="EUR")
    assert Program(name="p", point_value=value).config()["point_value"] == {
        "amount": "0.01", "currency": "EUR", "points": None,
    }  # fmt: skip
    for bad in (
        {"amount": 0.01, "currency": "EUR"},  # a float
        {"amount": "0", "currency": "EUR"},
        {"amount": "0.01", "currency": "euro"},
    ):
        with pytest.raises(ValidationError):
            PointValue.model_validate(bad)
    with pytest.raises(ValidationError, match="unknown currency: miles"):
        Program(name="p", point_value=value.model_copy(update={"points": "miles"}))


async def test_snapshots_are_one_row_per_day_rewritten_by_a_later_run_of_the_day(
    database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await prepare_database(database_url, APP)
    settings = Settings(LOYALTY_DATABASE_URL=database_url)  # type: ignore[arg-type]
    activities = HousekeepingActivities(pool, APP, settings)
    # Noon: every run of the test falls on the same UTC day, whenever it runs.
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    await deposit(conn, "shop", "ann", 100, "points")
    assert await housekeeping(activities, now - timedelta(days=1)) == [
        "mature", "expire", "remind", "segments", "snapshot", "prune",
    ]  # fmt: skip
    await deposit(conn, "shop", "ann", 50, "points")
    await deposit(conn, "shop", "ann", 7, "tier_points")
    await deposit(conn, "cafe", "bob", 10, "points")
    first = now - timedelta(hours=2)
    await housekeeping(activities, first)
    await deposit(conn, "shop", "ann", 50, "points")
    # A retried step of the first run finds it done; a second run of the day rewrites.
    work = HousekeepingWork(program="shop", as_of=first)
    again = await ActivityEnvironment().run(activities.snapshot, work)
    assert (again.step, again.snapshots) == ("done", 2)
    await housekeeping(activities, now)
    rows = await conn.fetch(
        "SELECT currency, day, outstanding, issued FROM liability_snapshots ORDER BY day, currency"
    )
    today, yesterday = now.date(), (now - timedelta(days=1)).date()
    assert [tuple(r) for r in rows] == [
        ("points", yesterday, 100, 100),
        ("tier_points", yesterday, 0, 0),
        ("points", today, 200, 200),
        ("tier_points", today, 7, 7),
    ]
    assert (
        await conn.fetchval("SELECT snapshots FROM housekeeping_runs WHERE as_of = $1", now)
    ) == 2
    snapshots = await history(conn, 30, "shop")
    assert [(s.day, s.outstanding_value) for s in snapshots if s.currency == "points"] == [
        (yesterday, Money(amount=Decimal("1.00"), currency="EUR")),
        (today, Money(amount=Decimal("2.00"), currency="EUR")),
    ]
    assert [s.outstanding_value for s in snapshots if s.currency == "tier_points"] == [None, None]
    assert await history(conn, 1, "shop") == [s for s in snapshots if s.day == today]

    env = {"LOYALTY_DATABASE_URL": database_url, "LOYALTY_HOME": str(tmp_path)}
    done = await loyalty(env, "report", "--history", "--program", "shop", "--json")
    assert done.code == 0, done.err
    shown = json.loads(done.out)
    assert [(s["currency"], s["day"], s["outstanding"]) for s in shown] == [
        ("points", yesterday.isoformat(), 100),
        ("points", today.isoformat(), 200),
        ("tier_points", yesterday.isoformat(), 0),
        ("tier_points", today.isoformat(), 7),
    ]
    assert shown[1]["outstanding_value"] == {"amount": "2.00", "currency": "EUR"}
    chart = await loyalty(env, "report", "--history", "--days", "7")
    assert chart.code == 0, chart.err
    assert "shop · points" in chart.out
    assert "EUR 2.00" in chart.out
    assert "cafe" not in chart.out  # no snapshot: its housekeeping did not run
    report = await loyalty(env, "report", "--program", "shop", "--json")
    assert report.code == 0, report.err
    [points, _] = json.loads(report.out)
    assert points["outstanding_value"] == {"amount": "2.00", "currency": "EUR"}
    unknown = await loyalty(env, "report", "--history", "--program", "nope")
    assert (unknown.code, unknown.problems) == (2, ["program: unknown program 'nope'"])


async def test_a_run_recorded_before_the_snapshot_step_replays_with_the_new_code() -> None:
    # Recorded by the housekeeping loop as it was before the snapshot step: its segments
    # step answered "prune"; the new code must follow the recorded answer.
    text = (HISTORIES / "housekeeping_before_snapshots.json").read_text()
    assert "housekeeping_snapshot" not in text
    assert "housekeeping_segments" in text
    replayer = Replayer(
        workflows=[Housekeeping],
        data_converter=DATA_CONVERTER,
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("loyalty")
        ),
    )
    result = await replayer.replay_workflow(
        WorkflowHistory.from_json("housekeeping/shop@housekeeping-history", text)
    )
    assert result.replay_failure is None
