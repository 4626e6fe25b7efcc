-- API keys of the HTTP API (`loyalty api-keys`): one program each, with scopes. Only a
-- SHA-256 hash of the key's secret is stored; the key is shown once, when created.
CREATE TABLE api_keys (
    id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    program       text NOT NULL REFERENCES programs (name),
    scopes        text[] NOT NULL CHECK (cardinality(scopes) > 0),
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_program ON api_keys (program);
