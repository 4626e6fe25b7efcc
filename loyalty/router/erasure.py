"""What a ``member_deleted`` event erases besides the profile, in the batch's transaction.

The router empties the member's profile when it applies the event, in order with the
member's other events (`loyalty.router.processing`). Then, once the batch has written
its journey outboxes, `erase_copies` empties every stored copy of the profile that came
before the erasure: the ``profile`` of the member's ``member_updated`` payloads in the
inbox and in the journey outboxes (``journey_starts``, ``journey_signals``), and the
rendered body, data and trigger event of the member's messages in ``message_log``
(status, template, key and times stay). The ledger keeps its pseudonymous entries.

"Before" is by inbox row: ``member_updated`` events that reached the inbox after the
``member_deleted`` one enrol the member again and are kept. Temporal histories are not
in the database: journeys get the profile only when they ask for it
(``get_member(..., profile=True)``), so that it does not land there in the first place.
"""

from __future__ import annotations

from collections.abc import Sequence

from loyalty.store.db import Conn

# (member_id, inbox row id of the member_deleted event), per erasure of the batch.
_ERASURES = "unnest($2::text[], $3::bigint[]) AS d(member_id, before)"


async def erase_copies(conn: Conn, program: str, erasures: Sequence[tuple[str, int]]) -> None:
    """Empty the stored copies of the erased members' profiles (see the module).

    Args:
        conn: a connection inside the batch's transaction, after its outboxes are written.
        program: the program of the batch.
        erasures: (member id, inbox row id of its ``member_deleted`` event) per erasure.
    """
    if not erasures:
        return
    members = [member for member, _ in erasures]
    rows = [row for _, row in erasures]
    for table, event_row, is_profile_update in (
        ("events", "id", "t.type = 'member_updated'"),
        ("journey_starts", "event_row_id", "t.event_type = 'member_updated'"),
        ("journey_signals", "event_row_id", "t.payload->>'type' = 'member_updated'"),
    ):
        await conn.execute(
            f"""UPDATE {table} AS t
                SET payload = jsonb_set(t.payload, '{{profile}}', '{{}}'::jsonb)
                FROM {_ERASURES}
                WHERE t.program = $1 AND t.member_id = d.member_id AND {is_profile_update}
                  AND t.{event_row} < d.before AND t.payload->'profile' <> '{{}}'::jsonb""",
            program, members, rows,
        )  # fmt: skip
    await conn.execute(
        f"""UPDATE message_log AS t
            SET body = NULL, data = '{{}}'::jsonb, event = NULL, erased_at = now(),
                updated_at = now()
            FROM {_ERASURES}
            WHERE t.program = $1 AND t.member_id = d.member_id AND t.erased_at IS NULL""",
        program, members, rows,
    )  # fmt: skip
