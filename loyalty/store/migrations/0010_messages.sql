-- Messages through providers (loyalty/messages.py, activities/messages.py).
--
-- * message_log keeps one row per idempotency key (a journey step); this migration adds
--   what the step became: ``pending`` while a webhook is being retried, ``sent``,
--   ``skipped`` (the member withdrew consent for the channel) or ``failed`` (4xx answer,
--   template error, attempts used up), the provider, the rendered body and the event
--   that triggered the journey. Webhook secrets are never stored.
-- * message_attempts: every delivery attempt of a message: Temporal's attempt number,
--   when, the HTTP status (NULL for a connection error, a timeout or the log provider)
--   and the error.

ALTER TABLE message_log
    ADD COLUMN status    text NOT NULL DEFAULT 'sent'
        CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
    ADD COLUMN provider  text NOT NULL DEFAULT 'log' CHECK (provider IN ('log', 'webhook')),
    ADD COLUMN body      text,
    ADD COLUMN event     jsonb,
    ADD COLUMN detail    text,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- Not unique on (key, attempt): a reset journey runs the step again from attempt 1.
CREATE TABLE message_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key  text NOT NULL REFERENCES message_log (idempotency_key) ON DELETE CASCADE,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    at               timestamptz NOT NULL DEFAULT now(),
    http_status      integer CHECK (http_status BETWEEN 100 AND 599),
    error            text
);
CREATE INDEX message_attempts_key ON message_attempts (idempotency_key, id);
