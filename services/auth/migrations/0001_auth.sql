-- Accounts. Email is stored normalised (trimmed, lower-cased) so the unique
-- constraint is the duplicate check.
CREATE TABLE users (
    id            UUID        PRIMARY KEY,
    email         TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    roles         TEXT[]      NOT NULL DEFAULT ARRAY['customer'],
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- A login starts a refresh family; every refresh rotates within it. The
-- family row is what logout and reuse detection revoke, and what a refresh
-- locks, so a rotation racing a revocation cannot leave a live token behind.
CREATE TABLE refresh_families (
    id         UUID        PRIMARY KEY,
    user_id    UUID        NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE INDEX refresh_families_user ON refresh_families (user_id);

-- Only SHA-256 hashes of refresh tokens are stored.
CREATE TABLE refresh_tokens (
    token_hash BYTEA       PRIMARY KEY,
    family_id  UUID        NOT NULL REFERENCES refresh_families (id),
    user_id    UUID        NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Ed25519 signing keys. The one with retired_at IS NULL signs; retired keys
-- stay published until every token they signed has expired.
CREATE TABLE signing_keys (
    kid         TEXT        PRIMARY KEY,
    private_key BYTEA       NOT NULL, -- PKCS#8 DER
    public_x    TEXT        NOT NULL, -- base64url, as in the JWK
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at  TIMESTAMPTZ
);

-- At most one active key, whatever replicas race.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE retired_at IS NULL;
