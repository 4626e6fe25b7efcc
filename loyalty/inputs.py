"""Checks of what clients send, for the event models and whatever reads events.

Each check refuses, with a message that names the problem, a value that would pass a
type check and then fail later, far from its sender: in PostgreSQL (a NUL character, a
lone surrogate, a non-finite number in ``jsonb``), in Python (an integer too long to
print, JSON nested deeper than the recursion limit) or in the ledger (money rounded by a
float). `loyalty.events` applies them as pydantic validators; `load_json` reads JSON
text so that money keeps its exact digits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from pydantic import ValidationInfo

# Levels of nesting allowed in a free-form object (``attributes``, ``profile``), the
# object itself being level 1. Far below the recursion limits of json, pydantic and
# PostgreSQL, and far above what a profile or a set of attributes needs.
MAX_JSON_DEPTH = 32
# Digits of an integer inside a free-form object. Python may refuse to print integers
# of more than 640 digits (json.dumps fails), so a bound is needed. It must hold what
# PostgreSQL's jsonb makes of a float: 1e300 comes back as an integer of 301 digits.
MAX_JSON_INT_DIGITS = 400
_INT_LIMIT = 10**MAX_JSON_INT_DIGITS
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class JsonFloat(float):
    """A JSON number with a fraction or an exponent, read as a float that keeps its text.

    Free-form values use it as the float it is; money reads the exact decimal from its
    text (`exact_money`), since ``169.99999999999999999`` is 170.0 as a float.
    """

    text: str

    def __new__(cls, text: str) -> JsonFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


# What an integer too long for int() is read as: larger than every limit, so that the
# field holding it refuses it, by name, instead of the whole text failing to parse.
_HUGE = 10**4300


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -_HUGE if text.startswith("-") else _HUGE


_DECODER = json.JSONDecoder(parse_float=JsonFloat, parse_int=_integer)


def load_json(text: str | bytes) -> Any:
    """Read JSON text; numbers with a fraction or an exponent become `JsonFloat`.

    Raises:
        RecursionError: nested deeper than Python can read (`deep_member` names where).
        ValueError: not JSON (a ``json.JSONDecodeError``) or not UTF-8.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _DECODER.decode(text)


def deep_member(text: str | bytes) -> str | None:
    """The member of a top-level JSON object whose value cannot be read for its depth.

    Reads the object one member at a time with the standard decoder, so that the member
    that exceeds the recursion limit is known; None if the text is not such an object.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    at = _skip(text, 0)
    if text[at : at + 1] != "{":
        return None
    at += 1
    while True:
        at = _skip(text, at)
        if text[at : at + 1] != '"':
            return None
        try:
            key, at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            if text[at : at + 1] != ":":
                return None
            _, at = _DECODER.raw_decode(text, _skip(text, at + 1))
        except RecursionError:
            return str(key)
        except ValueError:
            return None
        at = _skip(text, at)
        if text[at : at + 1] != ",":
            return None
        at += 1


def _skip(text: str, at: int) -> int:
    """The index of the first character at or after ``at`` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store this text, if it cannot: NUL or a lone surrogate."""
    if "\x00" in value:
        return "must not contain NUL characters (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain lone surrogates (\\ud800-\\udfff)"
    return None


def stored(info: ValidationInfo) -> bool:
    """Whether the validation reads an event back from the inbox
    (`loyalty.events.stored_event`): it passed every input check when it was accepted,
    so they are not made again."""
    return bool(info.context and info.context.get("stored"))


def storable_text(value: object, info: ValidationInfo) -> object:
    """A pydantic before-validator: refuse text that PostgreSQL cannot store.

    Before, not after, the type check: pydantic refuses a lone surrogate itself, with a
    message that does not say what is wrong.
    """
    if isinstance(value, str) and not stored(info):
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def json_problem(value: dict[str, Any]) -> str | None:
    """The first reason this free-form object cannot be stored as JSON, if any.

    Refused: nesting deeper than `MAX_JSON_DEPTH`, keys that are not text, text that
    `text_problem` refuses (keys too), integers of more than `MAX_JSON_INT_DIGITS`
    digits, non-finite numbers, and values that are not JSON (str, int, float, bool,
    None, list or dict). Walks without recursion, so any depth is refused cleanly.
    """
    for path, depth, item in _walk(value):
        where = f"at {path}: " if path else ""
        if depth > MAX_JSON_DEPTH and isinstance(item, dict | list | tuple):
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return f"{where}keys must be strings, not {type(key).__name__}"
                problem = text_problem(key)
                if problem:
                    return f"{where}key {problem}"
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{where}{problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -_INT_LIMIT < item < _INT_LIMIT:
                return f"{where}integer of more than {MAX_JSON_INT_DIGITS} digits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where}must be a finite number"
        elif not isinstance(item, list | tuple):
            return f"{where}must be a JSON value, not {type(item).__name__}"
    return None


def stored_size(value: dict[str, Any]) -> int:
    """The object's size as compact JSON, with numbers written as PostgreSQL's jsonb
    writes them: in full, never with an exponent (``1e300`` is 301 digits there).

    The size then stays the same when the engine reads the object back from the inbox,
    so an object accepted once is never refused when its event is processed.
    """
    size = len(json.dumps(value, separators=(",", ":")).encode())
    for _, _, item in _walk(value):
        if isinstance(item, float) and math.isfinite(item):
            written = repr(item)
            size += len(format(Decimal(written), "f")) - len(written)
    return size


def _walk(value: dict[str, Any]) -> Iterator[tuple[str, int, object]]:
    """(path, depth, value) of the object and everything in it, depth first."""
    stack: list[tuple[str, int, object]] = [("", 1, value)]
    while stack:
        path, depth, item = stack.pop()
        yield path, depth, item
        if depth > MAX_JSON_DEPTH:
            continue  # refused as too deep: what it holds is not looked at
        if isinstance(item, dict):
            children = [
                (f"{path}.{key}" if path else str(key), depth + 1, child)
                for key, child in item.items()
            ]
        elif isinstance(item, list | tuple):
            children = [(f"{path}[{n}]", depth + 1, child) for n, child in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))


def exact_money(value: object) -> object:
    """A pydantic before-validator for money: exact decimals only, never a float.

    A JSON number arrives as a `JsonFloat` and is read from its text; a Python float is
    refused, since it is already rounded (money is a ``Decimal`` or a string).
    """
    if isinstance(value, JsonFloat):
        return Decimal(value.text)
    if isinstance(value, float):
        raise ValueError("must be a Decimal or a string, not a float (floats are inexact)")
    return value


def differing_json(
    first: dict[str, Any], second: dict[str, Any], *, occurred_at: bool
) -> list[str]:
    """The top-level members whose JSON values differ (`same_json`); ``occurred_at`` is
    left out when ``occurred_at`` is False."""
    names = dict.fromkeys([*first, *second])
    return [
        name
        for name in names
        if (occurred_at or name != "occurred_at")
        and not (name in first and name in second and same_json(first[name], second[name]))
    ]


def same_json(a: object, b: object) -> bool:
    """JSON equality: numbers by value (an integer equals the float it rounds to, as
    PostgreSQL's jsonb prints ``1e300`` in full), objects regardless of key order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) or isinstance(b, float):
            try:
                return float(a) == float(b)
            except OverflowError:
                return False
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
