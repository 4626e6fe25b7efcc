"""`loyalty member ID`: a member in one program or in every program it belongs to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loyalty.cli.kit import console, problem, run, settings_of
from loyalty.models import MemberView


def _show(view: MemberView) -> None:
    """One program's view as tables: tiers, balances, expiries, entries."""
    console.print(
        f"[bold]{view.member_id}[/] in program [bold]{view.program}[/], tier: {view.tier or '-'}"
    )
    if view.tiers:
        tiers = Table("scheme", "tier", "since", "qualifying", "next tier", "reviewed",
                      title="Tiers")  # fmt: skip
        for t in view.tiers:
            upcoming = f"{t.next_tier} in {t.points_to_next:,}" if t.next_tier else "-"
            since = t.since.date().isoformat() if t.since else "start"
            review = t.reviewed_at.date().isoformat() if t.reviewed_at else "-"
            if t.grace_until:
                review += f" (grace until {t.grace_until.date().isoformat()})"
            tiers.add_row(t.scheme, t.tier, since, f"{t.qualifying:,} {t.currency}",
                          upcoming, review)  # fmt: skip
        console.print(tiers)
    balances = Table("currency", "available", "earned", "debt", "lifetime earned", title="Balances")
    for currency, b in view.balances.items():
        balances.add_row(
            currency, f"{b.available:,}", f"{b.earned:,}", f"{b.debt:,}",
            f"{b.lifetime_earned:,}",
        )  # fmt: skip
    console.print(balances)
    if view.upcoming_expiries:
        expiries = Table("currency", "points", "expires at", title="Upcoming expiries")
        for x in view.upcoming_expiries:
            expiries.add_row(x.currency, str(x.points), x.expires_at.isoformat())
        console.print(expiries)
    entries = Table(
        "id", "at", "currency", "kind", "points", "reason", "source", title="Latest entries"
    )
    for e in view.entries:
        source = f"{e.source} action={e.action}" if e.action else e.source
        entries.add_row(
            str(e.id), e.at.isoformat(timespec="seconds"), e.currency, e.kind,
            f"{e.points:+d}", e.reason, source,
        )  # fmt: skip
    console.print(entries)
    if view.more_entries and view.entries:
        console.print(
            f"older entries: loyalty member {view.member_id} --program {view.program} "
            f"--before {view.entries[-1].id}",
            soft_wrap=True, markup=False, highlight=False,
        )  # fmt: skip


def register(cli: typer.Typer) -> None:
    """Add `loyalty member` to the command line."""

    @cli.command()
    def member(
        ctx: typer.Context,
        member_id: Annotated[str, typer.Argument(help="The member id.")],
        program: Annotated[
            str | None,
            typer.Option(help="The program (default: every program the member belongs to)."),
        ] = None,
        limit: Annotated[
            int, typer.Option(min=1, help="How many ledger entries, newest first.")
        ] = 20,
        before: Annotated[
            int | None,
            typer.Option(min=1, help="Only entries older than the entry of this id."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON: one object per line and program.")
        ] = False,
    ) -> None:
        """Show a member: tier, balances, upcoming expiries, latest ledger entries.

        Without --program, the member in every program it belongs to. The operator's own
        view: --json also has the enrolment date and the profile.
        """
        from loyalty.errors import UnknownMember
        from starter.client import LoyaltyClient

        settings = settings_of(ctx)

        async def go() -> int:
            async with await LoyaltyClient.connect(settings) as client:
                programs = [program] if program else await client.member_programs(member_id)
                if not programs:
                    problem(f"member {member_id!r} is unknown in every program")
                    return 1
                try:
                    views = [
                        await client.member(member_id, p, limit=limit, before=before)
                        for p in programs
                    ]
                except UnknownMember as exc:
                    problem(str(exc))
                    return 1
            for view in views:
                if as_json:
                    print(view.model_dump_json())
                else:
                    _show(view)
            return 0

        raise typer.Exit(run(go()))
