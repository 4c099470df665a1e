-- Profiles are created from auth's UserRegistered events, never by a request.
CREATE TABLE profiles (
    user_id    UUID        PRIMARY KEY,
    email      TEXT        NOT NULL,
    name       TEXT        NOT NULL,
    phone      TEXT        NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- No foreign key to profiles: a user may add an address before the
-- registration event reached this service.
CREATE TABLE addresses (
    id             UUID        PRIMARY KEY,
    user_id        UUID        NOT NULL,
    label          TEXT        NOT NULL DEFAULT '',
    recipient_name TEXT        NOT NULL,
    line1          TEXT        NOT NULL,
    line2          TEXT        NOT NULL DEFAULT '',
    city           TEXT        NOT NULL,
    region         TEXT        NOT NULL DEFAULT '',
    postal_code    TEXT        NOT NULL,
    country_code   TEXT        NOT NULL,
    phone          TEXT        NOT NULL DEFAULT '',
    is_default     BOOLEAN     NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX addresses_user ON addresses (user_id, created_at);
-- At most one default address per user.
CREATE UNIQUE INDEX addresses_one_default ON addresses (user_id) WHERE is_default;
