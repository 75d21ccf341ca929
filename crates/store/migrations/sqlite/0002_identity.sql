-- Identity, ownership and security events.
--
-- Users and everything they own (sessions, refresh tokens, API keys) live on the shard that
-- owns the user id. The email directory and the audit log are small global tables and live
-- on the directory shard (shard-0); the tables exist on every shard so that every shard has
-- one schema.

-- Who may write a product: NULL for the house catalog (admins only), else the seller's id.
-- `version` counts edits by sellers and admins; it is what If-Match preconditions compare.
ALTER TABLE products ADD COLUMN seller_id INTEGER;
ALTER TABLE products ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
CREATE INDEX products_by_seller ON products (seller_id, id);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    email_index   BLOB    NOT NULL,     -- keyed hash of the normalised email (blind index)
    email_ct      BLOB    NOT NULL,     -- the email, sealed with an AEAD key named inside
    phone_ct      BLOB,                 -- the phone number, sealed likewise
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('customer', 'seller', 'admin')),
    password_hash TEXT    NOT NULL,     -- PHC string (argon2id)
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- Uniqueness of emails across shards: one row per normalised email, claimed before the user
-- row is written. The primary key makes the claim atomic.
CREATE TABLE email_directory (
    email_index BLOB    PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    claimed_at  INTEGER NOT NULL
) STRICT;

-- A session is a family of refresh tokens descended from one login.
CREATE TABLE sessions (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
) STRICT;

CREATE TABLE refresh_tokens (
    token_hash BLOB    PRIMARY KEY,     -- SHA-256 of the token; the token itself is never stored
    session_id INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER                  -- set when rotated; a second use is a reuse
) STRICT;

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    secret_hash BLOB    NOT NULL,       -- SHA-256 of the secret part
    daily_quota INTEGER NOT NULL CHECK (daily_quota > 0),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_keys_by_user ON api_keys (user_id, id);

CREATE TABLE api_key_usage (
    key_id INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day    INTEGER NOT NULL,            -- days since the Unix epoch, UTC
    used   INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
) STRICT;

CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,        -- ms since the Unix epoch, UTC
    actor      TEXT    NOT NULL,        -- `user:{id}`, `anonymous`, `cli`
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    request_id TEXT,
    detail     TEXT    NOT NULL DEFAULT ''
) STRICT;
