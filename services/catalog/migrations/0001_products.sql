-- Products are archived (active = false), never deleted: orders keep resolving them.
CREATE TABLE products (
    id             uuid PRIMARY KEY,
    sku            text NOT NULL UNIQUE,
    name           text NOT NULL,
    description    text NOT NULL DEFAULT '',
    category       text NOT NULL,
    price_currency text NOT NULL CHECK (price_currency ~ '^[A-Z]{3}$'),
    price_minor    bigint NOT NULL CHECK (price_minor >= 0),
    image_url      text NOT NULL DEFAULT '',
    attributes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- Name matters most, then description, then category.
    search         tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, name), 'A') ||
        setweight(to_tsvector('english'::regconfig, description), 'B') ||
        setweight(to_tsvector('english'::regconfig, category), 'C')
    ) STORED
);

CREATE INDEX products_search_idx ON products USING GIN (search);
-- Keyset pagination of the default listing, with and without a category.
CREATE INDEX products_active_recent_idx ON products (created_at DESC, id DESC) WHERE active;
CREATE INDEX products_active_category_idx ON products (category, created_at DESC, id DESC) WHERE active;
