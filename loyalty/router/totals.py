"""What a router partition committed, counted in the transaction of each batch.

A session's own count reaches the workflow only if Temporal still takes its result: an
attempt that outlived its heartbeat timeout goes on and commits, but its result is
dropped and a retry takes over. Counting in the batch's transaction and reading the sum
back makes the router's totals exactly what committed, each batch once.
"""

from __future__ import annotations

from loyalty.models import RouterProgress
from loyalty.store.db import Conn

_FIELDS = tuple(RouterProgress.model_fields)


async def add(
    conn: Conn, program: str, partitions: int, partition: int, batch: RouterProgress
) -> None:
    """Add a batch's counts to its partition's totals; call inside the batch's transaction."""
    columns = ", ".join(_FIELDS)
    values = ", ".join(f"${i}" for i in range(4, 4 + len(_FIELDS)))
    sums = ", ".join(f"{f} = router_totals.{f} + EXCLUDED.{f}" for f in _FIELDS)
    await conn.execute(
        f"""INSERT INTO router_totals (program, partitions, partition, {columns})
            VALUES ($1, $2, $3, {values})
            ON CONFLICT (program, partitions, partition) DO UPDATE SET {sums}""",
        program, partitions, partition, *(getattr(batch, f) for f in _FIELDS),
    )  # fmt: skip


async def read(conn: Conn, program: str, partitions: int, partition: int) -> RouterProgress:
    """Everything the partition's batches committed so far."""
    row = await conn.fetchrow(
        f"""SELECT {", ".join(_FIELDS)} FROM router_totals
            WHERE program = $1 AND partitions = $2 AND partition = $3""",
        program, partitions, partition,
    )  # fmt: skip
    return RouterProgress(**dict(row)) if row is not None else RouterProgress()
