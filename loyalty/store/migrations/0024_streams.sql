-- Profile streams (`loyalty.streams`): member fields kept current in a marketing tool's
-- list. The worker installs the app's streams here at start-up (`streams`,
-- `stream_programs`) and runs one ProfileStream workflow per stream.
--
-- Change capture: statement triggers on the tables a mapped field reads (accounts,
-- member_currencies, member_tiers, members, qualifying_points, segment_members) mark the
-- members they touched in stream_marks, one row per stream and member, in the writing
-- transaction itself. A member changed 50 times before the stream reads it has one mark
-- (its `version` counts the changes), so it is sent once, with its latest values. The
-- stream deletes a mark only if its version is still the one it read: a change that
-- commits while its batch is in flight leaves the mark for the next batch.
--
-- What the destination last received is kept per member in stream_records; the batch
-- in flight in stream_batches (its records and idempotency key are fixed when it is
-- built, so every retry sends the same records under the same key).

CREATE TABLE streams (
    name                text PRIMARY KEY
                        CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$' AND length(name) <= 64),
    definition          jsonb NOT NULL,
    digest              text NOT NULL,
    -- The source tables the stream's fields read, whose triggers must be on.
    sources             text[] NOT NULL,
    enabled             boolean NOT NULL DEFAULT true,
    installed_at        timestamptz NOT NULL DEFAULT now(),
    changed_at          timestamptz NOT NULL DEFAULT now(),
    next_batch          bigint NOT NULL DEFAULT 1,
    batches             bigint NOT NULL DEFAULT 0,
    requests            bigint NOT NULL DEFAULT 0,
    upserts             bigint NOT NULL DEFAULT 0,
    deletes             bigint NOT NULL DEFAULT 0,
    rejected            bigint NOT NULL DEFAULT 0,
    failures            bigint NOT NULL DEFAULT 0,
    last_delivered_at   timestamptz,
    last_error          text,
    last_error_at       timestamptz
);

CREATE TABLE stream_programs (
    stream   text NOT NULL REFERENCES streams (name) ON DELETE CASCADE,
    program  text NOT NULL REFERENCES programs (name),
    PRIMARY KEY (program, stream)
);

CREATE TABLE stream_marks (
    stream     text NOT NULL REFERENCES streams (name) ON DELETE CASCADE,
    program    text NOT NULL,
    member_id  text NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    -- Send every field, not only those that differ (`loyalty streams resync`).
    full_record boolean NOT NULL DEFAULT false,
    -- The first change not yet delivered: the lag is measured from it.
    marked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, program, member_id)
);
CREATE INDEX stream_marks_age ON stream_marks (stream, marked_at);

CREATE TABLE stream_records (
    stream        text NOT NULL REFERENCES streams (name) ON DELETE CASCADE,
    program       text NOT NULL,
    member_id     text NOT NULL,
    key           text NOT NULL,
    fields        jsonb NOT NULL,
    delivered_at  timestamptz NOT NULL,
    batch         bigint NOT NULL,
    PRIMARY KEY (stream, program, member_id)
);

-- Records the destination refused (a 207 or 4xx answer naming them): sent again on the
-- member's next change or a resync.
CREATE TABLE stream_rejections (
    stream       text NOT NULL REFERENCES streams (name) ON DELETE CASCADE,
    program      text NOT NULL,
    member_id    text NOT NULL,
    key          text NOT NULL,
    reason       text NOT NULL,
    batch        bigint NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, program, member_id)
);

-- The batch in flight: at most one per stream.
CREATE TABLE stream_batches (
    stream           text PRIMARY KEY REFERENCES streams (name) ON DELETE CASCADE,
    batch            bigint NOT NULL,
    idempotency_key  text NOT NULL,
    -- [{program, member_id, version, key, op, fields, record}]: what to send and, once
    -- delivered, what the destination then holds.
    items            jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0
);

CREATE FUNCTION streams_mark() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stream_marks AS k (stream, program, member_id)
    SELECT DISTINCT s.stream, c.program, c.member_id
    FROM changed AS c JOIN stream_programs AS s ON s.program = c.program
    WHERE c.member_id IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT (stream, program, member_id) DO UPDATE SET version = k.version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_streams_insert AFTER INSERT ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER accounts_streams_update AFTER UPDATE ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER member_currencies_streams_insert AFTER INSERT ON member_currencies
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER member_currencies_streams_update AFTER UPDATE ON member_currencies
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER member_tiers_streams_insert AFTER INSERT ON member_tiers
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER member_tiers_streams_update AFTER UPDATE ON member_tiers
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER member_tiers_streams_delete AFTER DELETE ON member_tiers
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER members_streams_insert AFTER INSERT ON members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER members_streams_update AFTER UPDATE ON members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER qualifying_points_streams_insert AFTER INSERT ON qualifying_points
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER segment_members_streams_insert AFTER INSERT ON segment_members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();
CREATE TRIGGER segment_members_streams_update AFTER UPDATE ON segment_members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION streams_mark();

-- Off until a stream reads the table (`loyalty.streams.capture.install` turns each on
-- with the first stream that maps a field from it, off with the last one).
ALTER TABLE accounts DISABLE TRIGGER accounts_streams_insert;
ALTER TABLE accounts DISABLE TRIGGER accounts_streams_update;
ALTER TABLE member_currencies DISABLE TRIGGER member_currencies_streams_insert;
ALTER TABLE member_currencies DISABLE TRIGGER member_currencies_streams_update;
ALTER TABLE member_tiers DISABLE TRIGGER member_tiers_streams_insert;
ALTER TABLE member_tiers DISABLE TRIGGER member_tiers_streams_update;
ALTER TABLE member_tiers DISABLE TRIGGER member_tiers_streams_delete;
ALTER TABLE members DISABLE TRIGGER members_streams_insert;
ALTER TABLE members DISABLE TRIGGER members_streams_update;
ALTER TABLE qualifying_points DISABLE TRIGGER qualifying_points_streams_insert;
ALTER TABLE segment_members DISABLE TRIGGER segment_members_streams_insert;
ALTER TABLE segment_members DISABLE TRIGGER segment_members_streams_update;
