//! The event envelope: CloudEvents 1.0 attributes in its JSON ("structured") format.
//!
//! ```json
//! {"specversion":"1.0","id":"0193…","source":"/bazaar/shard-2","type":"order.paid",
//!  "subject":"7312…","time":"2026-12-02T10:00:00.123Z","datacontenttype":"application/json",
//!  "dataschema":"urn:bazaar:event:order.paid:1","data":{…}}
//! ```
//!
//! `id` is the outbox row's event id (a UUIDv7, unique across shards and restarts); it is
//! also the queue's deduplication id and what consumers record to skip a redelivery.
//! `subject` is the aggregate the event is about and its ordering key. `dataschema` names the
//! payload's schema and its version: a payload changes shape only under a new version.
//! The schemas are in `docs/events.md`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The version of every payload schema written today.
pub const SCHEMA_VERSION: u32 = 1;

/// One event, as it travels through the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub specversion: String,
    pub id: String,
    /// Where it was written: `/bazaar/{shard}`.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate (an order, product or user id): the ordering key.
    pub subject: String,
    /// When the change committed, RFC 3339 in UTC with milliseconds.
    pub time: String,
    pub datacontenttype: String,
    pub dataschema: String,
    pub data: serde_json::Value,
}

impl Envelope {
    /// The envelope of event `id` about `subject`, of type `topic`, written on `shard` and
    /// committed at `committed_at_ms`, with the JSON `payload` as its data.
    pub fn new(
        shard: &str,
        id: &str,
        topic: &str,
        subject: &str,
        payload: &str,
        committed_at_ms: i64,
    ) -> Self {
        let data = serde_json::from_str(payload).unwrap_or_else(|_| {
            // Payloads are written with serde_json; an unparsable one is carried as a string
            // rather than lost, and its consumers see why.
            serde_json::Value::String(payload.to_owned())
        });
        let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(committed_at_ms).unwrap_or(0));
        Self {
            specversion: "1.0".into(),
            id: id.to_owned(),
            source: format!("/bazaar/{shard}"),
            event_type: topic.to_owned(),
            subject: subject.to_owned(),
            time: humantime::format_rfc3339_millis(time).to_string(),
            datacontenttype: "application/json".into(),
            dataschema: format!("urn:bazaar:event:{topic}:{SCHEMA_VERSION}"),
            data,
        }
    }

    /// When the change committed; `None` if `time` does not parse.
    pub fn committed_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A string field of `data`, such as `product_id`.
    pub fn data_str(&self, field: &str) -> Option<&str> {
        self.data.get(field)?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_becomes_a_cloudevent_and_back() {
        let event = Envelope::new(
            "shard-2",
            "0193a3c4-0000-7000-8000-000000000001",
            "order.paid",
            "123",
            r#"{"order_id":"123"}"#,
            1_764_669_600_123,
        );
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "order.paid");
        assert_eq!(json["source"], "/bazaar/shard-2");
        assert_eq!(json["subject"], "123");
        assert_eq!(json["time"], "2025-12-02T10:00:00.123Z");
        assert_eq!(json["dataschema"], "urn:bazaar:event:order.paid:1");
        assert_eq!(json["data"]["order_id"], "123");
        let back = Envelope::from_json(&event.to_json()).unwrap();
        assert_eq!(back, event);
        assert_eq!(
            back.committed_at().unwrap(),
            UNIX_EPOCH + Duration::from_millis(1_764_669_600_123)
        );
    }

    #[test]
    fn an_unparsable_payload_is_carried_as_a_string() {
        let event = Envelope::new("shard-0", "e", "user.created", "1", "{not json", 0);
        assert_eq!(event.data, serde_json::Value::String("{not json".into()));
    }
}
