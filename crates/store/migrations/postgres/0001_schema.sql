-- The whole schema of one PostgreSQL shard: the same tables, columns and constraints as the
-- SQLite backend's migrations 0001-0007, written once for a fresh database. Ids are the
-- store's 63-bit ids (BIGINT), times are ms since the Unix epoch (BIGINT), blobs are BYTEA.
--
-- Placement is the ring's, exactly as in SQLite: a product, its variants, stock and
-- reservations on the product's shard; a user, what the user owns, the cart, orders and
-- idempotency records on the user's shard; the email directory, audit log, id generator
-- leases, processed events and the tally on the directory shard (shard-0). Every shard has
-- every table, so every shard has one schema.
--
-- Text that is ordered or paged by (event ids, topics) is `COLLATE "C"`: byte order, as in
-- SQLite, whatever the server's locale.

-- Which shard of which layout this database is, so it is never opened with a ring that would
-- look for its rows elsewhere.
CREATE TABLE shard_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE products (
    id           BIGINT PRIMARY KEY,             -- time-ordered 63-bit id: newest = highest
    name         TEXT   NOT NULL,
    description  TEXT   NOT NULL,
    brand        TEXT   NOT NULL,
    category     TEXT   NOT NULL,
    price_amount BIGINT NOT NULL CHECK (price_amount >= 0), -- lowest variant price, minor units
    currency     TEXT   NOT NULL CHECK (length(currency) = 3),
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    -- Who may write it: NULL for the house catalog (admins only), else the seller's id.
    seller_id    BIGINT,
    -- Edits by sellers and admins; what If-Match preconditions compare.
    version      BIGINT NOT NULL DEFAULT 1,
    -- Written in batches by the view counter's write-back buffer, never per request.
    view_count   BIGINT NOT NULL DEFAULT 0 CHECK (view_count >= 0)
);

-- One index per sort order, with and without the category filter, each ending in the id so
-- that a cursor (sort key, id) resumes with an index seek.
CREATE INDEX products_by_price ON products (price_amount, id);
CREATE INDEX products_by_category ON products (category, id);
CREATE INDEX products_by_category_price ON products (category, price_amount, id);
CREATE INDEX products_by_seller ON products (seller_id, id);

CREATE TABLE variants (
    id           BIGINT PRIMARY KEY,
    product_id   BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    sku          TEXT   NOT NULL,
    color        TEXT   NOT NULL,
    size         TEXT   NOT NULL,
    price_amount BIGINT NOT NULL CHECK (price_amount >= 0),
    currency     TEXT   NOT NULL CHECK (length(currency) = 3)
);

CREATE INDEX variants_by_product ON variants (product_id, id);

-- Stock is its own table: the one row checkout writes under contention. The CHECK makes
-- "never below zero" the database's promise, not only the application's.
CREATE TABLE stock (
    variant_id BIGINT PRIMARY KEY REFERENCES variants (id) ON DELETE CASCADE,
    on_hand    BIGINT NOT NULL CHECK (on_hand >= 0)
);

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    email_index   BYTEA  NOT NULL,   -- keyed hash of the normalised email (blind index)
    email_ct      BYTEA  NOT NULL,   -- the email, sealed with an AEAD key named inside
    phone_ct      BYTEA,             -- the phone number, sealed likewise
    name          TEXT   NOT NULL,
    role          TEXT   NOT NULL CHECK (role IN ('customer', 'seller', 'admin')),
    password_hash TEXT   NOT NULL,   -- PHC string (argon2id)
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Uniqueness of emails across shards (directory shard): one row per normalised email, claimed
-- before the user row is written. The primary key makes the claim atomic.
CREATE TABLE email_directory (
    email_index BYTEA  PRIMARY KEY,
    user_id     BIGINT NOT NULL,
    claimed_at  BIGINT NOT NULL
);

-- A session is a family of refresh tokens descended from one login.
CREATE TABLE sessions (
    id             BIGINT PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);

CREATE TABLE refresh_tokens (
    token_hash BYTEA  PRIMARY KEY,   -- SHA-256 of the token; the token itself is never stored
    session_id BIGINT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT                -- set when rotated; a second use is a reuse
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE api_keys (
    id          BIGINT PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT   NOT NULL,
    secret_hash BYTEA  NOT NULL,     -- SHA-256 of the secret part
    daily_quota BIGINT NOT NULL CHECK (daily_quota > 0),
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_by_user ON api_keys (user_id, id);

CREATE TABLE api_key_usage (
    key_id BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day    BIGINT NOT NULL,          -- days since the Unix epoch, UTC
    used   BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);

CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT   NOT NULL,      -- `user:{id}`, `anonymous`, `cli`
    action     TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    request_id TEXT,
    detail     TEXT   NOT NULL DEFAULT ''
);

CREATE TABLE cart_items (
    user_id    BIGINT NOT NULL,
    variant_id BIGINT NOT NULL,
    product_id BIGINT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, variant_id)
);

-- One row per buyer's cart: a version bumped by every change to its lines, and the pending
-- order that has claimed it for checkout. Every change to a cart's lines first bumps this row
-- with a conditional write, which also takes its row lock: concurrent edits of one cart queue
-- behind each other under READ COMMITTED as they do behind SQLite's single writer.
CREATE TABLE carts (
    user_id        BIGINT PRIMARY KEY,
    version        BIGINT NOT NULL DEFAULT 0,
    checkout_order BIGINT            -- the pending order checking this cart out
);

CREATE TABLE orders (
    id              BIGINT PRIMARY KEY,         -- time-ordered: newest = highest
    buyer_id        BIGINT NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN
                        ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'expired', 'refunded')),
    total_amount    BIGINT NOT NULL CHECK (total_amount >= 0),
    currency        TEXT   NOT NULL CHECK (length(currency) = 3),
    address_ct      BYTEA  NOT NULL,            -- the shipping address, sealed (personal data)
    idempotency_key TEXT,
    payment_ref     TEXT,
    reason          TEXT,                       -- why it was cancelled, when it was
    -- false while the reservations on product shards do not yet match `status`; the settler
    -- makes them so.
    settled         BOOLEAN NOT NULL DEFAULT false,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX orders_by_buyer ON orders (buyer_id, id);
CREATE INDEX orders_unsettled ON orders (updated_at) WHERE NOT settled;

CREATE TABLE order_lines (
    order_id    BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    variant_id  BIGINT NOT NULL,
    product_id  BIGINT NOT NULL,
    seller_id   BIGINT,                         -- NULL for the house catalog
    name        TEXT   NOT NULL,
    sku         TEXT   NOT NULL,
    unit_amount BIGINT NOT NULL CHECK (unit_amount >= 0),
    currency    TEXT   NOT NULL CHECK (length(currency) = 3),
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    shipped_at  BIGINT,
    PRIMARY KEY (order_id, variant_id)
);

CREATE INDEX order_lines_by_seller ON order_lines (seller_id, order_id);

-- Stock held for an order line. For every variant:
--   on_hand + held + committed = stock put in (never a unit counted twice or lost).
CREATE TABLE reservations (
    order_id   BIGINT NOT NULL,
    variant_id BIGINT NOT NULL,
    product_id BIGINT NOT NULL,
    buyer_id   BIGINT NOT NULL,                 -- finds the order's shard
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    state      TEXT   NOT NULL CHECK (state IN ('held', 'committed', 'released')),
    expires_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, variant_id)
);

CREATE INDEX reservations_held_by_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_by_variant ON reservations (variant_id, state);

-- One row per (buyer, Idempotency-Key): the first request claims it, later ones replay its
-- response (or wait while it runs).
CREATE TABLE idempotency (
    user_id      BIGINT NOT NULL,
    key          TEXT   NOT NULL,
    request_hash BYTEA  NOT NULL,
    order_id     BIGINT,
    status       BIGINT,                        -- NULL while the first request runs
    body         BYTEA,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);

-- Events written in the same transaction as the change they report, for the relay. Ids come
-- from a sequence drawn before commit, so a lower id can commit after a higher one: the relay
-- reads unpublished rows without an id cursor (see `EventShard::unpublished_events`).
CREATE TABLE outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT   COLLATE "C" NOT NULL UNIQUE, -- UUIDv7, the message's deduplication id
    topic        TEXT   COLLATE "C" NOT NULL,
    key          TEXT   NOT NULL,
    payload      TEXT   NOT NULL,               -- JSON
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Id generator numbers leased to running processes (directory shard only).
CREATE TABLE node_leases (
    generator  BIGINT PRIMARY KEY CHECK (generator BETWEEN 0 AND 1023),
    holder     TEXT   NOT NULL,                 -- "<host>/<pid>/<random>"
    expires_at BIGINT NOT NULL
);

-- Named leases held by one process at a time (the relay's `outbox-relay` per shard).
CREATE TABLE leases (
    name       TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Events a consumer has applied, so a redelivered event is applied once (directory shard).
CREATE TABLE processed_events (
    consumer   TEXT   COLLATE "C" NOT NULL,
    event_id   TEXT   COLLATE "C" NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX processed_events_by_time ON processed_events (applied_at);

-- Events counted per topic by the tally consumer, in the transaction that records them.
CREATE TABLE event_tally (
    topic TEXT   COLLATE "C" PRIMARY KEY,
    count BIGINT NOT NULL CHECK (count >= 0)
);
