//! Users, sessions, API keys and security events, as the store keeps them.
//!
//! Personal data arrives here already sealed (`email_ct`, `phone_ct`) and indexed by a keyed
//! hash (`email_index`): the store never sees an email in clear, so no query, log line or
//! backup of a shard can leak one.

use std::fmt;
use std::str::FromStr;

use crate::id::{ApiKeyId, SessionId, UserId};

/// What a user may do, in increasing power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Customer,
    Seller,
    Admin,
}

impl Role {
    /// The role's stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Seller => "seller",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "customer" => Ok(Self::Customer),
            "seller" => Ok(Self::Seller),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("expected customer, seller or admin, found `{s}`")),
        }
    }
}

/// A user row. Personal fields are sealed by the application layer before they get here.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    /// Keyed hash of the normalised email; equal emails have equal indexes.
    pub email_index: Vec<u8>,
    pub email_ct: Vec<u8>,
    pub phone_ct: Option<Vec<u8>>,
    /// The public display name.
    pub name: String,
    pub role: Role,
    /// PHC string of the password hash.
    pub password_hash: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The answer to claiming an email in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailClaim {
    /// The email is now this user's.
    Claimed,
    /// Another user holds it.
    Taken { by: UserId, claimed_at_ms: i64 },
}

/// One refresh token, as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub token_hash: Vec<u8>,
    pub session: SessionId,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now used and its successor stored.
    Rotated { session: SessionId, user: UserId },
    /// The token had already been used: the whole session is now revoked.
    Reused { session: SessionId, user: UserId },
    /// Unknown, expired, or its session was revoked: nothing changed.
    Rejected,
}

/// A seller API key, as stored: only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub user: UserId,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub daily_quota: i64,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A key's use of its daily quota after one more call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    /// Whether this call fits in the quota (and was counted).
    pub allowed: bool,
    /// Calls counted today, this one included if allowed.
    pub used: i64,
}

/// A security-relevant event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at_ms: i64,
    /// `user:{id}`, `anonymous` or `cli`.
    pub actor: String,
    /// `signup`, `login.success`, `login.failure`, `refresh.reuse`, `role.change`, …
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    /// Free text without personal data.
    pub detail: String,
}

impl QuotaUse {
    /// The answer to one call, from what the conditional count returned: the day's count
    /// after this call if it was counted (`None`: the quota was already spent, nothing was
    /// counted). A first call of the day is counted even against a quota below one, and then
    /// refused here.
    pub(crate) fn after_count(counted: Option<i64>, quota: i64) -> Self {
        match counted {
            Some(used) if used <= quota => Self {
                allowed: true,
                used,
            },
            _ => Self {
                allowed: false,
                used: quota,
            },
        }
    }
}

/// Why a session was ended by a presented token that had already been exchanged.
pub(crate) const REUSE_REASON: &str = "refresh token reuse";

/// A presented refresh token as stored, with its session's state, read under the locks of
/// the token and session rows (or the single writer) so the decision below cannot be raced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PresentedToken {
    pub(crate) session: SessionId,
    pub(crate) user: UserId,
    pub(crate) expires_at_ms: i64,
    pub(crate) used: bool,
    pub(crate) session_revoked: bool,
}

/// What presenting a refresh token must do; the backend only carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshStep {
    /// Change nothing and answer [`RefreshOutcome::Rejected`].
    Reject,
    /// Revoke the whole session (reason [`REUSE_REASON`]) and answer
    /// [`RefreshOutcome::Reused`].
    RevokeFamily,
    /// Mark the token used, store its successor and answer [`RefreshOutcome::Rotated`].
    Rotate,
}

impl PresentedToken {
    /// The rotation rules: a revoked session's tokens are dead; a token used before means it
    /// was stolen (or replayed), so its whole family ends, the holder's newer token included;
    /// an expired token, or a successor for another session, is refused.
    pub(crate) fn step(&self, next_session: SessionId, now_ms: i64) -> RefreshStep {
        if self.session_revoked {
            RefreshStep::Reject
        } else if self.used {
            RefreshStep::RevokeFamily
        } else if self.expires_at_ms <= now_ms || next_session != self.session {
            RefreshStep::Reject
        } else {
            RefreshStep::Rotate
        }
    }

    /// The answer for `step` carried out on this token.
    pub(crate) fn outcome(&self, step: RefreshStep) -> RefreshOutcome {
        let (session, user) = (self.session, self.user);
        match step {
            RefreshStep::Reject => RefreshOutcome::Rejected,
            RefreshStep::RevokeFamily => RefreshOutcome::Reused { session, user },
            RefreshStep::Rotate => RefreshOutcome::Rotated { session, user },
        }
    }
}

/// `user.role_changed` if an update replaces the stored role `from` with another one.
pub(crate) fn role_change(user: UserId, from: Role, to: Role) -> Option<crate::events::NewEvent> {
    (from != to).then(|| crate::events::user_role_changed(user, from, to))
}
