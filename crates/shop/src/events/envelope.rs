//! The event envelope (`bazaar-domain`'s CloudEvents 1.0 [`Envelope`]) of an outbox row.

pub use bazaar_domain::envelope::{Envelope, SCHEMA_VERSION};
use bazaar_store::OutboxEvent;

/// The envelope of an outbox row written on `shard`.
pub fn from_outbox(shard: &str, row: &OutboxEvent) -> Envelope {
    Envelope::new(
        shard,
        &row.event_id,
        &row.topic,
        &row.key,
        &row.payload,
        row.created_at_ms,
    )
}
