//! The security event log: who did what to what, when, under which request.
//!
//! Events go to the directory shard's `audit_events` table. Recording is best effort: a
//! failure is logged at error level but does not fail the user's request, because refusing
//! sign-ins whenever the log is briefly unavailable would be a worse outage. (The
//! tamper-evident chain over these rows comes with the audit layer.)

use std::sync::Arc;

use bazaar_store::{AuditEvent, Store};

use crate::{Actor, now_ms};

/// Writes and reads audit events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Arc<Store>,
}

impl Audit {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Records `action` on `target` by the actor's principal.
    pub async fn record(&self, actor: &Actor, action: &str, target: &str, detail: &str) {
        self.record_as(
            actor,
            &actor.principal.audit_label(),
            action,
            target,
            detail,
        )
        .await;
    }

    /// Records an event under an explicit actor label (`cli` for command-line actions).
    pub async fn record_as(
        &self,
        actor: &Actor,
        label: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) {
        let event = AuditEvent {
            at_ms: now_ms(),
            actor: label.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            request_id: actor.request_id.clone(),
            detail: detail.to_owned(),
        };
        if let Err(error) = self.store.directory().append_audit(&event).await {
            tracing::error!(%error, action, target, "could not record audit event");
        }
    }

    /// The newest `limit` events, newest first; admins only.
    pub async fn recent_for(
        &self,
        actor: &Actor,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, crate::ShopError> {
        crate::authz::authorize(&actor.principal, crate::authz::Action::ReadAudit)?;
        self.recent(limit).await
    }

    /// The newest `limit` events, newest first, without a permission check: for the command
    /// line and tests.
    pub async fn recent(&self, limit: usize) -> Result<Vec<AuditEvent>, crate::ShopError> {
        Ok(self.store.directory().audit_events(limit).await?)
    }
}
