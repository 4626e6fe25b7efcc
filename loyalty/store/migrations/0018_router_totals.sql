-- What each router partition committed, counted in the transaction of each batch.
-- A router session's result is lost when Temporal gives up on it (a heartbeat timeout)
-- while its batch still commits; the workflow reads its totals from here instead of
-- summing what sessions return, so every committed batch counts once.
CREATE TABLE router_totals (
    program text NOT NULL REFERENCES programs (name),
    partitions integer NOT NULL CHECK (partitions >= 1),
    partition integer NOT NULL CHECK (partition >= 0 AND partition < partitions),
    batches bigint NOT NULL DEFAULT 0,
    events bigint NOT NULL DEFAULT 0,
    applied bigint NOT NULL DEFAULT 0,
    no_effect bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    failed_attempts bigint NOT NULL DEFAULT 0,
    dead bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (program, partitions, partition)
);
