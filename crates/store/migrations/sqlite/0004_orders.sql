-- Carts, orders, stock reservations, idempotency records and the outbox.
--
-- A buyer's cart, orders and idempotency records live on the buyer's shard; a reservation
-- lives beside the stock it holds, on the product's shard. The order row is the truth about
-- a checkout; reservations on other shards follow it (see the `settled` column).

CREATE TABLE cart_items (
    user_id    INTEGER NOT NULL,
    variant_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, variant_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE orders (
    id              INTEGER PRIMARY KEY,         -- time-ordered: newest = highest
    buyer_id        INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN
                        ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'expired', 'refunded')),
    total_amount    INTEGER NOT NULL CHECK (total_amount >= 0),
    currency        TEXT    NOT NULL CHECK (length(currency) = 3),
    address_ct      BLOB    NOT NULL,            -- the shipping address, sealed (personal data)
    idempotency_key TEXT,
    payment_ref     TEXT,
    reason          TEXT,                        -- why it was cancelled, when it was
    -- 0 while the reservations on product shards do not yet match `status` (held -> committed
    -- once paid, -> released once cancelled, expired or refunded); the settler makes them so.
    settled         INTEGER NOT NULL DEFAULT 0 CHECK (settled IN (0, 1)),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX orders_by_buyer ON orders (buyer_id, id);
CREATE INDEX orders_unsettled ON orders (updated_at) WHERE settled = 0;

CREATE TABLE order_lines (
    order_id    INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    variant_id  INTEGER NOT NULL,
    product_id  INTEGER NOT NULL,
    seller_id   INTEGER,                         -- NULL for the house catalog
    name        TEXT    NOT NULL,
    sku         TEXT    NOT NULL,
    unit_amount INTEGER NOT NULL CHECK (unit_amount >= 0),
    currency    TEXT    NOT NULL CHECK (length(currency) = 3),
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    shipped_at  INTEGER,
    PRIMARY KEY (order_id, variant_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX order_lines_by_seller ON order_lines (seller_id, order_id);

-- Stock held for an order line. `held` has been taken from `stock.on_hand`; `committed` was
-- sold; `released` went back to stock. For every variant:
--   on_hand + held + committed = stock put in (never a unit counted twice or lost).
CREATE TABLE reservations (
    order_id   INTEGER NOT NULL,
    variant_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    buyer_id   INTEGER NOT NULL,                 -- finds the order's shard
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    state      TEXT    NOT NULL CHECK (state IN ('held', 'committed', 'released')),
    expires_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, variant_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX reservations_held_by_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE INDEX reservations_by_variant ON reservations (variant_id, state);

-- One row per (buyer, Idempotency-Key): the first request claims it, later ones replay its
-- response (or wait while it runs).
CREATE TABLE idempotency (
    user_id      INTEGER NOT NULL,
    key          TEXT    NOT NULL,
    request_hash BLOB    NOT NULL,
    order_id     INTEGER,
    status       INTEGER,                        -- NULL while the first request runs
    body         BLOB,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT, WITHOUT ROWID;

CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);

-- Events written in the same transaction as the change they report, for the queue layer to
-- relay. `published_at` is set by the relay.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    payload      TEXT    NOT NULL,               -- JSON
    created_at   INTEGER NOT NULL,
    published_at INTEGER
) STRICT;

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
