-- Events for the outbox relay and its consumers.
--
-- Every outbox row gets a globally unique `event_id` (a UUIDv7 string made by the store at
-- insert): the relay publishes it as the message's deduplication id, and consumers record it
-- to apply an event at most once. Rows written before this migration get a random id.
ALTER TABLE outbox ADD COLUMN event_id TEXT;
UPDATE outbox SET event_id = lower(hex(randomblob(16))) WHERE event_id IS NULL;
CREATE UNIQUE INDEX outbox_event_id ON outbox (event_id);

-- ALTER TABLE cannot add a NOT NULL column without a constant default; the trigger is that
-- constraint, so a writer that forgets the id fails instead of writing an event no consumer
-- can deduplicate.
CREATE TRIGGER outbox_event_id_required BEFORE INSERT ON outbox
WHEN NEW.event_id IS NULL
BEGIN
    SELECT RAISE(ABORT, 'outbox.event_id is required');
END;

-- What pruning scans: published rows by publication time.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Named leases held by one process at a time (the relay holds `outbox-relay` on each shard,
-- so one process publishes a shard's rows and their order per key is kept). Taken when free,
-- expired or already the holder's, with one conditional write.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL                  -- ms since the Unix epoch, UTC
) STRICT;

-- Events a consumer has applied, so a redelivered event is applied once (directory shard).
CREATE TABLE processed_events (
    consumer   TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX processed_events_by_time ON processed_events (applied_at);

-- Events counted per topic by the tally consumer, in the transaction that records them.
CREATE TABLE event_tally (
    topic TEXT    PRIMARY KEY,
    count INTEGER NOT NULL CHECK (count >= 0)
) STRICT;
