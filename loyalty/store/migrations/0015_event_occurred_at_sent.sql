-- Whether the sender of a client event gave `occurred_at`, or it was filled in with the
-- time of receipt.
--
-- The same (program, event_id) with other content is a conflict, refused; with the same
-- content it is a duplicate. A retry that omits `occurred_at` is filled in with another
-- "now": comparing what the sender sent means comparing `occurred_at` only when both
-- versions gave it. Rows written before this migration, and derived events (never
-- compared), are false: not known to be given, so never a conflict on that field.

ALTER TABLE events ADD COLUMN occurred_at_sent boolean NOT NULL DEFAULT false;
