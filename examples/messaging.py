"""Where the demo's messages go.

The coffee program's e-mails go through the webhook provider (the Zeta/Selligent case)
to the receiver that `loyalty demo` starts on 127.0.0.1; everything else goes to the
``log`` provider (rows of ``message_log``).

The coffee program's profile stream (`examples.programs.streams`) goes to the demo's
marketing list (`examples.marketing_list`), which `loyalty demo` also starts.

The ports are read when `examples.demo` builds the app: ``LOYALTY_DEMO_WEBHOOK_PORT``
(default 8299) and ``LOYALTY_DEMO_LIST_PORT`` (default 8298). The HMAC secret of both is
the environment variable ``LOYALTY_DEMO_WEBHOOK_SECRET``: `loyalty demo` and
`loyalty dev --demo` set a random one for their worker when it is not set already.
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from loyalty.messages import LogProvider, Messages, WebhookProvider

WEBHOOK_PORT_ENV = "LOYALTY_DEMO_WEBHOOK_PORT"
WEBHOOK_SECRET_ENV = "LOYALTY_DEMO_WEBHOOK_SECRET"
DEFAULT_WEBHOOK_PORT = 8299
WEBHOOK_PATH = "/selligent"
LIST_PORT_ENV = "LOYALTY_DEMO_LIST_PORT"
DEFAULT_LIST_PORT = 8298
LIST_PATH = "/lists/loyalty"
TEMPLATES = Path(__file__).parent / "templates"


def webhook_port() -> int:
    """The port of the demo's webhook receiver (``LOYALTY_DEMO_WEBHOOK_PORT``)."""
    return int(os.environ.get(WEBHOOK_PORT_ENV, DEFAULT_WEBHOOK_PORT))


def webhook_url() -> str:
    """Where the coffee program's e-mails are posted."""
    return f"http://127.0.0.1:{webhook_port()}{WEBHOOK_PATH}"


def list_port() -> int:
    """The port of the demo's marketing list (``LOYALTY_DEMO_LIST_PORT``)."""
    return int(os.environ.get(LIST_PORT_ENV, DEFAULT_LIST_PORT))


def list_url() -> str:
    """Where the coffee program's profile stream posts its batches."""
    return f"http://127.0.0.1:{list_port()}{LIST_PATH}"


def coffee_messages() -> Messages:
    """E-mail through the signed webhook; any other channel to the log."""
    return Messages(
        channels={"email": WebhookProvider(url=webhook_url(), secret_env=WEBHOOK_SECRET_ENV)},
        default=LogProvider(),
    )
