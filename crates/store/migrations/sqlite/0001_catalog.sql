-- The catalog on one shard: a product, its variants and their stock always live together,
-- on the shard the ring assigns to the product id.

-- Which shard of which layout this file is, so that a data directory is never opened with a
-- ring that would look for its rows elsewhere.
CREATE TABLE shard_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE products (
    id           INTEGER PRIMARY KEY,           -- time-ordered 63-bit id: newest = highest
    name         TEXT    NOT NULL,
    description  TEXT    NOT NULL,
    brand        TEXT    NOT NULL,
    category     TEXT    NOT NULL,
    price_amount INTEGER NOT NULL CHECK (price_amount >= 0),  -- lowest variant price, minor units
    currency     TEXT    NOT NULL CHECK (length(currency) = 3),
    created_at   INTEGER NOT NULL,              -- ms since the Unix epoch, UTC
    updated_at   INTEGER NOT NULL
) STRICT;

-- One index per sort order, with and without the category filter, each ending in the id so
-- that a cursor (sort key, id) resumes with an index seek.
CREATE INDEX products_by_price ON products (price_amount, id);
CREATE INDEX products_by_category ON products (category, id);
CREATE INDEX products_by_category_price ON products (category, price_amount, id);

CREATE TABLE variants (
    id           INTEGER PRIMARY KEY,
    product_id   INTEGER NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    sku          TEXT    NOT NULL,
    color        TEXT    NOT NULL,
    size         TEXT    NOT NULL,
    price_amount INTEGER NOT NULL CHECK (price_amount >= 0),
    currency     TEXT    NOT NULL CHECK (length(currency) = 3)
) STRICT;

CREATE INDEX variants_by_product ON variants (product_id, id);

-- Stock is its own table: it is the one row that checkout writes under contention, and the
-- CHECK makes "never below zero" the database's promise, not only the application's.
CREATE TABLE stock (
    variant_id INTEGER PRIMARY KEY REFERENCES variants (id) ON DELETE CASCADE,
    on_hand    INTEGER NOT NULL CHECK (on_hand >= 0)
) STRICT;
