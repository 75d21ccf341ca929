-- The embedded queue. See crates/queue/src/sqlite.rs for the model: one row per message,
-- a cursor per group, and a delivery row per message a group has looked at but not settled.

-- Every published message, once. `seq` is AUTOINCREMENT so that a pruned highest seq is never
-- handed out again: a group's cursor may already be past it.
CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    key             TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    published_at_ms INTEGER NOT NULL,
    -- published_at_ms + delay: not delivered before.
    visible_at_ms   INTEGER NOT NULL,
    -- The message's delay as published (NULL for none), so that deliveries round-trip it.
    delay_ms        INTEGER
);

CREATE TABLE groups (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    lease_ms      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    -- Every message with seq <= cursor has a delivery row of this group or is settled by it
    -- (or was published before the group was declared); messages beyond it are untouched.
    cursor        INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- A message a group has reached and not settled: leased to a receiver (state 1, due_ms is
-- the lease's end) or waiting (state 0: a retry, a delay, or a key held by an earlier
-- message; due_ms is when it may go). Acknowledging deletes the row.
CREATE TABLE deliveries (
    grp        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    -- The message's key, copied so that the order check is one index probe.
    key        TEXT    NOT NULL,
    state      INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    due_ms     INTEGER NOT NULL,
    -- The lease's token (in the receipt); NULL while waiting.
    token      INTEGER,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;

-- "Is an earlier message of this key unsettled in this group?"
CREATE INDEX deliveries_key ON deliveries (grp, key, seq);
-- "What may go now?"
CREATE INDEX deliveries_due ON deliveries (grp, due_ms);

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    grp        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    dead_at_ms INTEGER NOT NULL
);

-- Pruning keeps a message while a dead letter refers to it.
CREATE INDEX dead_letters_seq ON dead_letters (seq);
