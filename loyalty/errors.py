"""Domain exceptions: every error the engine raises on purpose derives from LoyaltyError."""

from __future__ import annotations

from typing import NamedTuple


class LoyaltyError(Exception):
    """Base class of the engine's own errors."""


class ConfigurationError(LoyaltyError):
    """Settings, the app module or a local server cannot be used as configured."""


class ServiceUnavailable(LoyaltyError):
    """PostgreSQL or Temporal cannot be reached now: nothing was decided, try again.

    The message names what is down and where (host and port, never a password); the
    CLI prints it as one line and exits with code 3.

    Attributes:
        service: ``"PostgreSQL"`` or ``"Temporal"``.
    """

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


class InvalidFlows(ConfigurationError):
    """The app's flow definitions are wrong; the worker refuses to start.

    Attributes:
        problems: one line per problem, each naming the flow.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class InvalidSegments(ConfigurationError):
    """The app's segment definitions are wrong; the app is refused when it is created.

    Attributes:
        problems: one line per problem, each naming the segment.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class InvalidStreams(ConfigurationError):
    """The app's profile streams are wrong; the app is refused when it is created.

    Attributes:
        problems: one line per problem, each naming the stream and the field.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class InvalidInput(LoyaltyError):
    """A request is invalid; nothing was written.

    Attributes:
        problems: one human-readable line per problem, each naming the field.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class InvalidEvent(InvalidInput):
    """One or more events failed validation; nothing was written."""


class Conflict(NamedTuple):
    """One event_id already used in its program with other content."""

    program: str
    event_id: str
    # The fields whose values differ, in the event's field order.
    fields: list[str]

    def describe(self) -> str:
        """``<event_id> conflict: <fields>``, and the program unless it is ``default``."""
        where = "" if self.program == "default" else f" (program {self.program})"
        return f"{self.event_id} conflict: {', '.join(self.fields)}{where}"


class EventConflict(InvalidEvent):
    """An event reuses an ``event_id`` with other content; nothing of the batch was written.

    The idempotency-key convention: one key, one payload. Identical content is a
    duplicate, not a conflict.

    Attributes:
        conflicts: one per conflicting event id.
        problems: one line per conflict, ``<event_id> conflict: <fields that differ>``.
    """

    def __init__(self, conflicts: list[Conflict]) -> None:
        super().__init__([c.describe() for c in conflicts])
        self.conflicts = conflicts


class UnknownMember(LoyaltyError):
    """The member has no profile and no ledger entries in the program."""


class UnknownProgram(ConfigurationError):
    """The database knows no program of that name: invalid input, not a refusal."""


class UnknownStream(ConfigurationError):
    """No profile stream of that name is installed: invalid input, not a refusal."""


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


class CodecError(LoyaltyError):
    """A Temporal payload cannot be decrypted: its ciphertext or its key is wrong."""


class UnknownCodecKey(CodecError):
    """A payload was encrypted with a key this keyring does not hold.

    Attributes:
        key_id: the key id written in the payload's metadata.
    """

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"a payload is encrypted with codec key {key_id!r}, which the keyring does not "
            "hold; add that key (LOYALTY_CODEC_KEYS or LOYALTY_CODEC_KEYRING) to read it"
        )
        self.key_id = key_id
