-- How many claimed events each router partition applied on the fast path (set-based)
-- and one at a time: the fallbacks operators and benchmarks watch.
ALTER TABLE router_totals
    ADD COLUMN fast_path bigint NOT NULL DEFAULT 0,
    ADD COLUMN one_by_one bigint NOT NULL DEFAULT 0;
