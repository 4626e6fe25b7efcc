"""Domain exceptions: every error the engine raises on purpose derives from LoyaltyError."""

from __future__ import annotations


class LoyaltyError(Exception):
    """Base class of the engine's own errors."""


class ConfigurationError(LoyaltyError):
    """Settings, the app module or a local server cannot be used as configured."""


class InvalidFlows(ConfigurationError):
    """The app's flow definitions are wrong; the worker refuses to start.

    Attributes:
        problems: one line per problem, each naming the flow.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class InvalidEvent(LoyaltyError):
    """One or more events failed validation; nothing was written.

    Attributes:
        problems: one human-readable line per problem, each naming the field.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownMember(LoyaltyError):
    """The member has no profile and no ledger entries in the program."""


class UnknownProgram(ConfigurationError):
    """The database knows no program of that name: invalid input, not a refusal."""


class LedgerRefusal(LoyaltyError):
    """A business rule refuses a ledger movement; never retried.

    Attributes:
        code: stable machine-readable reason, e.g. ``insufficient_points``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InsufficientPoints(LedgerRefusal):
    """Spending or withdrawing more than the balance of the account."""

    def __init__(self, message: str) -> None:
        super().__init__("insufficient_points", message)


class AdjustmentFileError(LoyaltyError):
    """The file cannot be read or has no valid header; nothing is applied.

    Attributes:
        problems: one line per problem, naming the file, a line or a column.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class LedgerOutOfStep(LoyaltyError):
    """The lots of an account hold fewer points than its balance: a bug, never a refusal.

    Raised before commit, so the transaction rolls back and nothing is written.
    """
