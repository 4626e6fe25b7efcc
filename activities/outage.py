"""What every activity does when PostgreSQL cannot be reached: let Temporal retry it."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from loyalty.errors import ServiceUnavailable
from loyalty.store.db import UNREACHABLE

# The database cannot be reached (or went away): the attempt is retried, no traceback.
DATABASE_DOWN: tuple[type[BaseException], ...] = (ServiceUnavailable, *UNREACHABLE)


def database_unavailable(exc: BaseException) -> ApplicationError:
    """The retryable error of an attempt that found PostgreSQL down; benign, so the worker
    does not log it as a failure (the activity logs one line of its own)."""
    return ApplicationError(
        f"PostgreSQL is unavailable: {exc}",
        type="DatabaseUnavailable",
        category=ApplicationErrorCategory.BENIGN,
    )
