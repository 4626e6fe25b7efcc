"""Apps whose journeys send messages through providers, for tests/test_messages*.py."""

from __future__ import annotations

from pathlib import Path

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import flow
from loyalty.journeys import send_message
from loyalty.messages import LogProvider, Messages, WebhookProvider
from loyalty.models import MessageReceipt
from loyalty.triggers import Activity

with workflow.unsafe.imports_passed_through():
    from loyalty import events

TEMPLATES = Path(__file__).parent / "templates_messages"
SECRET_ENV = "TEST_MESSAGES_WEBHOOK_SECRET"


@flow(trigger=Activity("web_login"))
@workflow.defn
class ThankYou:
    """A thank-you email through the channel's provider, with the trigger event."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> MessageReceipt:
        return await send_message(
            trigger.member_id, "thanks", channel="email", data={"points": 25}, event=trigger,
            action="thanks", program=trigger.program,
        )  # fmt: skip


def webhook(url: str, max_attempts: int = 5, timeout_seconds: float = 10.0) -> WebhookProvider:
    """The email channel's provider: a webhook on the test's HTTP server."""
    return WebhookProvider(
        url=url, secret_env=SECRET_ENV, max_attempts=max_attempts,
        timeout_seconds=timeout_seconds, headers={"X-Tenant": "coffee"},
    )  # fmt: skip


def make_app(
    provider: LogProvider | WebhookProvider, templates: Path | None = TEMPLATES
) -> LoyaltyApp:
    """Program ``default`` sends email through ``provider`` and the rest to the log."""
    messages = Messages(channels={"email": provider}, default=LogProvider())
    return LoyaltyApp(
        programs=[Program(name="default", messages=messages)],
        flows=[ThankYou],
        templates=templates,
    )
