-- Id generator numbers leased to running processes (directory shard only). Every process
-- stamps the ids it mints with its generator number (`crate::id`), so two processes writing
-- to one store must hold different numbers: each claims the lowest free one at start-up,
-- renews it while it runs, gives it back at stop, and a lease left by a process that died is
-- reclaimed once it expires.
CREATE TABLE node_leases (
    generator  INTEGER PRIMARY KEY CHECK (generator BETWEEN 0 AND 1023),
    holder     TEXT    NOT NULL,                 -- who holds it: "<host>/<pid>/<random>"
    expires_at INTEGER NOT NULL
) STRICT;
