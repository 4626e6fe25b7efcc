"""Bulk adjustments: parsing and validation (no database), then `loyalty adjust` as a real
subprocess against the test's PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from loyalty.app import LoyaltyApp, Program
from loyalty.errors import AdjustmentFileError
from loyalty.ledger.adjust import LineResult, file_digest, parse, summarize
from loyalty.policies import Rolling

LOYALTY = str(Path(sys.executable).parent / "loyalty")

APP = LoyaltyApp(
    programs=[
        Program(
            name="default",
            currencies=("points", "tier_points"),
            earned_waiting_period=timedelta(days=7),
            expiry={"points": Rolling(days=365)},
        ),
        Program(name="coffee"),
    ]
)
# The same app for the subprocess, imported with --app adjust_app:app.
APP_MODULE = """
from datetime import timedelta
from loyalty.app import LoyaltyApp, Program
from loyalty.policies import Rolling

app = LoyaltyApp(programs=[
    Program(name="default", currencies=("points", "tier_points"),
            earned_waiting_period=timedelta(days=7), expiry={"points": Rolling(days=365)}),
    Program(name="coffee"),
])
"""
HEADER = "member_id,points,kind,reason"


def csv_bytes(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


# --- parsing and validation ---------------------------------------------------------------


def test_valid_lines_take_the_defaults_and_keys_from_the_file_hash() -> None:
    data = csv_bytes(HEADER + ",currency,program", "m1,100,available,welcome,,",
                     "m2,-5,earned,fix,tier_points,", "m3,+7,available,coffee,,coffee")  # fmt: skip
    parsed = parse(data, APP, name="a.csv")
    assert parsed.invalid == ()
    digest = file_digest(data)
    assert len(digest) == 16
    got = [(a.line, a.key, a.source, a.program, a.member_id, a.currency, a.kind, a.points)
           for a in parsed.adjustments]  # fmt: skip
    assert got == [
        (2, f"adjust:{digest}:2", "adjust:a.csv:2", "default", "m1", "points", "available", 100),
        (3, f"adjust:{digest}:3", "adjust:a.csv:3", "default", "m2", "tier_points", "earned", -5),
        (4, f"adjust:{digest}:4", "adjust:a.csv:4", "coffee", "m3", "points", "available", 7),
    ]


def test_the_program_option_is_the_default_program() -> None:
    parsed = parse(csv_bytes(HEADER, "m1,1,available,x"), APP, program="coffee")
    assert [a.program for a in parsed.adjustments] == ["coffee"]


def test_an_edited_file_gets_new_keys_and_an_id_column_keeps_them() -> None:
    first = parse(csv_bytes(HEADER, "m1,1,available,x"), APP).adjustments[0].key
    edited = parse(csv_bytes(HEADER, "m1,2,available,x"), APP).adjustments[0].key
    assert first != edited
    with_id = [csv_bytes("id," + HEADER, f"fix-1,m1,{n},available,x") for n in (1, 2)]
    assert {parse(data, APP).adjustments[0].key for data in with_id} == {"adjust:fix-1"}


BAD_LINES: dict[str, tuple[str, str]] = {
    "non-integer points": ("m1,1.5,available,x,,", "points: not an integer: '1.5'"),
    "points with underscores": ("m1,1_000,available,x,,", "points: not an integer"),
    "zero points": ("m1,0,available,x,,", "points: zero"),
    "too many points": ("m1,-10000000000000,available,x,,", "points: more than"),
    "unknown kind": ("m1,5,gift,x,,", "kind: unknown kind 'gift'"),
    "empty member": (",5,available,x,,", "member_id: empty"),
    "long member": ("m" * 129 + ",5,available,x,,", "member_id: 129 characters, at most 128"),
    "empty reason": ("m1,5,available, ,,", "reason: empty"),
    "long reason": ("m1,5,available," + "r" * 201 + ",,", "reason: 201 characters"),
    "unknown currency": ("m1,5,available,x,stars,", "currency: program 'default' has no"),
    "currency of another program": ("m1,5,available,x,tier_points,coffee", "currency:"),
    "unknown program": ("m1,5,available,x,,nope", "program: unknown program 'nope'"),
    "missing values": ("m1,5,available", "reason: missing (the line has 3 values"),
    "NUL character": ("m1,5,available,x\0y,,", "reason: contains a NUL character"),
    "extra values": ("m1,5,available,x,,,surprise", "unknown column: the line has 7 values"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_an_invalid_line_is_rejected_naming_the_column(case: str) -> None:
    line, problem = BAD_LINES[case]
    parsed = parse(csv_bytes(HEADER + ",currency,program", "ok,1,available,x,,", line), APP)
    assert [a.line for a in parsed.adjustments] == [2]
    [rejected] = parsed.invalid
    assert (rejected.line, rejected.status, rejected.code) == (3, "rejected", "invalid")
    assert rejected.detail is not None
    assert rejected.detail.startswith(problem), rejected.detail


def test_every_problem_of_a_line_is_reported() -> None:
    parsed = parse(csv_bytes(HEADER, ",x,gift,"), APP)
    [rejected] = parsed.invalid
    assert [p.split(":")[0] for p in rejected.problems] == [
        "member_id", "points", "kind", "reason"
    ]  # fmt: skip


def test_line_numbers_are_those_of_the_file() -> None:
    data = (
        b'\xef\xbb\xbfmember_id,points,kind,reason\r\n\r\nm1,1,available,"two\r\nlines"\r\n'
        b",,,\r\nm2,x,available,y\r\n"
    )
    parsed = parse(data, APP)
    assert [(a.line, a.reason) for a in parsed.adjustments] == [(3, "two\r\nlines")]
    assert [r.line for r in parsed.invalid] == [6]


def test_an_id_used_twice_in_a_program_rejects_the_second_line() -> None:
    data = csv_bytes("id,program," + HEADER, "a,,m1,1,available,x", "a,coffee,m1,1,available,x",
                     "a,default,m2,1,available,y", ",,m3,1,available,z")  # fmt: skip
    parsed = parse(data, APP)
    assert [(a.line, a.key) for a in parsed.adjustments] == [
        (2, "adjust:a"), (3, "adjust:a"), (5, f"adjust:{file_digest(data)}:5")
    ]  # fmt: skip
    [rejected] = parsed.invalid
    assert (rejected.line, rejected.detail) == (4, "id: 'a' is already the id of line 2")


BAD_FILES: dict[str, tuple[bytes, list[str]]] = {
    "empty": (b"", ["line 1: no header row"]),
    "blank first line": (b"\n" + csv_bytes(HEADER), ["line 1: no header row"]),
    "data as header": (csv_bytes("m1,5,available,x"), ["line 1: no header row"]),
    "missing column": (csv_bytes("member_id,points,reason"), ["column kind: missing"]),
    "unknown column": (csv_bytes(HEADER + ",colour"), ["column 'colour': unknown column"]),
    "column twice": (csv_bytes(HEADER + ",points"), ["column points: appears 2 times"]),
    "not UTF-8": (csv_bytes(HEADER).replace(b"member", b"m\xe9mber"), ["file: not UTF-8"]),
    "huge field": (csv_bytes(HEADER, "m1,1,available," + "x" * 200_000), ["line 2: not valid"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_file_without_a_valid_header_is_refused_whole(case: str) -> None:
    data, expected = BAD_FILES[case]
    with pytest.raises(AdjustmentFileError) as caught:
        parse(data, APP)
    assert len(caught.value.problems) == len(expected), caught.value.problems
    for problem, start in zip(caught.value.problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_summary_counts_and_lists_rejected_lines_in_file_order() -> None:
    def result(line: int, status: str) -> LineResult:
        return LineResult.model_validate(
            {"line": line, "member_id": "m", "program": "default", "status": status}
        )

    summary = summarize([result(7, "rejected"), result(2, "applied"), result(3, "rejected"),
                         result(4, "already_applied"), result(5, "applied")])  # fmt: skip
    assert (summary.applied, summary.already_applied) == (2, 1)
    assert [r.line for r in summary.rejected] == [3, 7]


# --- the command, against PostgreSQL -------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def rejected(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
def env(settings_env: dict[str, object], tmp_path: Path) -> dict[str, str]:
    """The process environment: the test's settings, and the test app importable."""
    (tmp_path / "adjust_app.py").write_text(APP_MODULE)
    env = {**os.environ, **{k: str(v) for k, v in settings_env.items()}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    return env


async def adjust(env: dict[str, str], path: Path, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "adjust", "--file", str(path), "--app", "adjust_app:app", *args, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def balances(conn: asyncpg.Connection) -> dict[tuple[str, str, str, str], int]:
    rows = await conn.fetch(
        "SELECT program, member_id, currency, kind, balance FROM accounts "
        "WHERE member_id IS NOT NULL AND balance <> 0"
    )
    return {(r["program"], r["member_id"], r["currency"], r["kind"]): r["balance"] for r in rows}


MIXED = [
    HEADER + ",currency,program",
    "m1,100,available,welcome,,",  # 2
    "m1,-30,available,correction,,",  # 3
    "m2,50,earned,bonus,,",  # 4
    "m3,1.5,available,typo,,",  # 5: points
    "m4,10,gift,typo,,",  # 6: kind
    ",10,available,nobody,,",  # 7: member_id
    "m5,10,available,stars,stars,",  # 8: currency
    "m6,10,available,elsewhere,,nope",  # 9: program
    "m7,5,available,coffee welcome,,coffee",  # 10
    "m1,20,available,tier,tier_points,",  # 11
    "m8,-5,available,never seen,,",  # 12: unknown member
    'm9,7,available,"a reason',  # 13
    'on two lines",,',  # 14
    "m10,3,available,x,,,extra",  # 15: too many values
]


async def test_good_lines_apply_and_bad_lines_are_reported_then_nothing_twice(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Mixed file: six lines apply with exact balances; seven rejected; a rerun adds nothing."""
    path = tmp_path / "adjustments.csv"
    path.write_bytes(csv_bytes(*MIXED))
    run = await adjust(env, path, "--json", "--create-members")
    assert run.code == 1, run.err
    assert "applied 6, already applied 0, rejected 7" in run.err
    rejected = {r["line"]: (r["member_id"], r["code"], str(r["detail"])) for r in run.rejected}
    assert sorted(rejected) == [5, 6, 7, 8, 9, 12, 15]
    for line, column in [(5, "points"), (6, "kind"), (7, "member_id"), (8, "currency"),
                         (9, "program"), (15, "unknown column")]:  # fmt: skip
        assert rejected[line][1] == "invalid"
        assert rejected[line][2].startswith(f"{column}:"), rejected[line]
    assert rejected[12][:2] == ("m8", "unknown_member")
    expected = {
        ("default", "m1", "points", "available"): 70,
        ("default", "m1", "tier_points", "available"): 20,
        ("default", "m2", "points", "earned"): 50,
        ("default", "m9", "points", "available"): 7,
        ("coffee", "m7", "points", "available"): 5,
    }
    assert await balances(conn) == expected
    members = await conn.fetch("SELECT program, member_id FROM members ORDER BY 1, 2")
    assert [tuple(m) for m in members] == [
        ("coffee", "m7"), ("default", "m1"), ("default", "m2"), ("default", "m9")
    ]  # fmt: skip
    lots = await conn.fetch(
        """SELECT l.member_id, l.currency, l.available_at - t.occurred_at AS waits,
                  l.expires_at - t.occurred_at AS lasts, l.state, t.reason, t.source
           FROM lot_states AS l
           JOIN ledger_transactions AS t ON t.id = l.transaction_id ORDER BY l.id"""
    )
    got = [(r["member_id"], r["currency"], r["waits"], r["lasts"], r["state"]) for r in lots]
    assert got == [
        ("m1", "points", None, timedelta(days=365), "available"),
        ("m2", "points", timedelta(days=7), timedelta(days=365), "earned"),
        ("m7", "points", None, None, "available"),
        ("m1", "tier_points", None, None, "available"),
        ("m9", "points", None, timedelta(days=365), "available"),
    ]
    assert (lots[-1]["reason"], lots[-1]["source"]) == (
        "a reason\non two lines", "adjust:adjustments.csv:13"
    )  # fmt: skip
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 6

    again = await adjust(env, path, "--create-members")
    assert again.code == 1, again.err
    assert "applied 0, already applied 6, rejected 7" in again.out
    assert "Rejected lines" in again.out
    assert await balances(conn) == expected
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 6


async def test_taking_more_than_the_balance_is_rejected_and_the_rest_applies(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """a has 40: taking 50 is insufficient_points, so is taking earned points a has none of."""
    path = tmp_path / "spend.csv"
    path.write_bytes(csv_bytes(HEADER, "a,40,available,start", "b,10,available,start",
                               "a,-50,available,too much", "b,-4,available,ok",
                               "a,-15,earned,none earned"))  # fmt: skip
    run = await adjust(env, path, "--json", "--create-members")
    assert run.code == 1, run.err
    assert [(r["line"], r["member_id"], r["code"]) for r in run.rejected] == [
        (4, "a", "insufficient_points"), (6, "a", "insufficient_points")
    ]  # fmt: skip
    assert await balances(conn) == {
        ("default", "a", "points", "available"): 40,
        ("default", "b", "points", "available"): 6,
    }
    again = await adjust(env, path, "--json", "--create-members")
    assert "applied 0, already applied 3, rejected 2" in again.err


async def test_an_edited_file_with_ids_applies_only_its_new_lines(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Lines with an id keep their key when the file is edited; only the new id applies."""
    path = tmp_path / "ids.csv"
    path.write_bytes(csv_bytes("id," + HEADER, "fix-1,a,10,available,x", "fix-2,a,5,available,y"))
    run = await adjust(env, path, "--program", "coffee", "--create-members")
    assert (run.code, "applied 2, already applied 0, rejected 0" in run.out) == (0, True), run
    path.write_bytes(csv_bytes("id," + HEADER, "fix-1,a,10,available,x",
                               "fix-2,a,500,available,y", "fix-3,a,1,available,z"))  # fmt: skip
    run = await adjust(env, path, "--program", "coffee")
    assert (run.code, "applied 1, already applied 2, rejected 0" in run.out) == (0, True), run
    assert await balances(conn) == {("coffee", "a", "points", "available"): 16}


# A database that cannot be reached exits 3 (tests/test_unavailable.py).
@pytest.mark.parametrize("case", ["no file", "no header", "unknown --program"])
async def test_an_unusable_file_or_option_exits_2_and_writes_nothing(
    case: str, env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "adjustments.csv"
    args: list[str] = []
    if case == "no header":
        path.write_bytes(csv_bytes("m1,10,available,x"))
    elif case == "unknown --program":
        path.write_bytes(csv_bytes(HEADER, "m1,10,available,x"))
        args = ["--program", "nope"]
    run = await adjust(env, path, *args)
    assert (run.code, run.out) == (2, ""), run
    assert run.err.startswith("error: "), run.err
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    assert await conn.fetchval("SELECT count(*) FROM members") == 0


async def test_a_database_error_stops_the_run_and_a_rerun_applies_the_rest(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Line 3 fails in the database: line 2 stays applied, exit 1; once fixed, a rerun
    applies lines 3 and 4 only."""
    await conn.execute(
        """CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.member_id = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_boom BEFORE INSERT ON members
               FOR EACH ROW EXECUTE FUNCTION refuse_boom();"""
    )
    path = tmp_path / "stops.csv"
    path.write_bytes(csv_bytes(HEADER, "a,1,available,x", "boom,2,available,y", "c,3,available,z"))
    run = await adjust(env, path, "--create-members")
    assert run.code == 1, run
    assert "applied 1, already applied 0, rejected 0" in run.out
    assert run.err.startswith("error: database error at line 3: RaiseError: boom refused"), run
    assert await balances(conn) == {("default", "a", "points", "available"): 1}
    await conn.execute("DROP TRIGGER refuse_boom ON members")
    run = await adjust(env, path, "--create-members")
    assert (run.code, "applied 2, already applied 1, rejected 0" in run.out) == (0, True), run
    assert len(await balances(conn)) == 3


async def test_a_member_the_program_never_saw_is_refused_unless_create_members(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A typo in a member id does not create a member with points."""
    await conn.execute("INSERT INTO members (program, member_id) VALUES ('default', 'ana')")
    path = tmp_path / "typo.csv"
    path.write_bytes(csv_bytes(HEADER, "ana,10,available,goodwill", "anna,10,available,goodwill"))
    run = await adjust(env, path, "--json")
    assert run.code == 1, run.err
    [(line, code, detail)] = [(r["line"], r["code"], r["detail"]) for r in run.rejected]
    assert (line, code) == (3, "unknown_member")
    assert detail == (
        "member 'anna' is unknown in program 'default'; give --create-members to enrol new members"
    )
    assert await balances(conn) == {("default", "ana", "points", "available"): 10}
    assert await conn.fetchval("SELECT count(*) FROM members WHERE member_id = 'anna'") == 0
    run = await adjust(env, path, "--create-members")
    assert (run.code, "applied 1, already applied 1, rejected 0" in run.out) == (0, True), run
    assert await conn.fetchval("SELECT count(*) FROM members WHERE member_id = 'anna'") == 1


async def test_ctrl_c_stops_after_the_line_in_flight_and_says_how_many_applied(
    env: dict[str, str], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """The test holds the program's ledger lock, so the first line waits; Ctrl-C, then the
    lock is released: that line completes, the others are not attempted."""
    path = tmp_path / "long.csv"
    path.write_bytes(csv_bytes(HEADER, *(f"m{n},1,available,bulk" for n in range(500))))
    lock = "SELECT pg_advisory_lock(hashtextextended('loyalty-ledger:' || 'default', 0))"
    await conn.execute(lock)
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "adjust", "--file", str(path), "--app", "adjust_app:app", "--create-members",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while not await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        async with asyncio.timeout(60):
            first = (await proc.stderr.readline()).decode()
        # Said at once; the line in flight still waits for the lock.
        assert first == "interrupted: finishing line 2, then stopping\n"
        await conn.execute(lock.replace("pg_advisory_lock", "pg_advisory_unlock"))
        async with asyncio.timeout(60):
            out, rest = await proc.communicate()
        err = first.encode() + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "long.csv: applied 1, already applied 0, rejected 0" in out.decode()
    assert err.decode().splitlines() == [
        "interrupted: finishing line 2, then stopping",
        "error: interrupted after line 2: applied 1 of 500 lines; the lines applied stay "
        "applied, and running the same file again applies the rest",
    ]
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 1
    run = await adjust(env, path, "--create-members")
    assert (run.code, "applied 499, already applied 1, rejected 0" in run.out) == (0, True), run
