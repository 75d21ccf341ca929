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

-- A message a group has reached and not settled. Of one key's rows in a group exactly one is
-- active; the others are held (due_ms = the largest integer), and when the active row goes
-- the held row with the lowest seq takes its place:
--   leased:  state 1, due_ms = the lease's end, token = the lease's (in the receipt);
--   waiting: state 0, due_ms = when it may go (a retry's delay, the message's own delay);
--   held:    state 0, due_ms = 9223372036854775807.
-- Acknowledging deletes the row and makes the key's next row active (due_ms = ready_ms).
CREATE TABLE deliveries (
    grp        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    -- The message's key, copied so that the order checks are index probes.
    key        TEXT    NOT NULL,
    state      INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    due_ms     INTEGER NOT NULL,
    -- When a held row may go once it is active: its message's visible_at_ms.
    ready_ms   INTEGER NOT NULL,
    token      INTEGER,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;

-- "Does this key have a row in this group?", "Which is its next?"
CREATE INDEX deliveries_key ON deliveries (grp, key, seq);
-- "What may go now?" Held rows sort last.
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
