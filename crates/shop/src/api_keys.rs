//! Seller API keys: long-lived credentials for programs, each with a daily call quota.
//!
//! A key reads `bzk_{user id}_{key id}_{secret}`. The ids route it to the owner's shard
//! without any directory; the 256-bit hex secret is shown once, at creation, and only its
//! SHA-256 is stored. A key acts with its owner's current role, and stops working if the
//! owner is no longer a seller or admin.

use std::sync::Arc;

use bazaar_store::prelude::*;
use bazaar_store::{ApiKeyId, ApiKeyRecord, IdGenerator, Role, Store, UserId};

use crate::authz::{Action, Credential, Principal, authorize};
use crate::crypto::{random_secret, same_hash, token_hash};
use crate::error::ShopError;
use crate::{Actor, now_ms};

const PREFIX: &str = "bzk_";

/// A key as its owner sees it in listings: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub name: String,
    pub daily_quota: i64,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A key that authenticated, with its quota after this call.
#[derive(Debug, Clone)]
pub struct KeyUse {
    pub principal: Principal,
    pub limit: i64,
    pub remaining: i64,
    /// Seconds until the quota resets (00:00 UTC).
    pub reset_in_secs: u64,
}

/// The API key service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    store: Arc<Store>,
    ids: Arc<IdGenerator>,
    audit: crate::audit::Audit,
    daily_quota: i64,
}

impl ApiKeys {
    pub fn new(store: Arc<Store>, ids: Arc<IdGenerator>, daily_quota: i64) -> Self {
        let audit = crate::audit::Audit::new(store.clone());
        Self {
            store,
            ids,
            audit,
            daily_quota,
        }
    }

    /// Creates a key for the signed-in seller; returns it with the full secret, which is never
    /// shown again.
    pub async fn create(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<(ApiKeyInfo, String), ShopError> {
        authorize(&actor.principal, Action::ManageApiKeys)?;
        let user = actor.principal.user_id()?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(ShopError::field(
                "name",
                "expected 1 to 64 printable characters",
            ));
        }
        let id = self.ids.api_key_id();
        let secret = random_secret(32);
        let record = ApiKeyRecord {
            id,
            user,
            name: name.to_owned(),
            secret_hash: token_hash(&secret),
            daily_quota: self.daily_quota,
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        self.store.for_user(user).insert_api_key(&record).await?;
        self.audit
            .record(actor, "api_key.create", &format!("api_key:{id}"), "")
            .await;
        Ok((info(&record), format!("{PREFIX}{user}_{id}_{secret}")))
    }

    /// The signed-in seller's keys, revoked ones included.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<ApiKeyInfo>, ShopError> {
        authorize(&actor.principal, Action::ManageApiKeys)?;
        let user = actor.principal.user_id()?;
        Ok(self
            .store
            .for_user(user)
            .api_keys_of(user)
            .await?
            .iter()
            .map(info)
            .collect())
    }

    /// Revokes one of the signed-in seller's keys.
    pub async fn revoke(&self, actor: &Actor, id: ApiKeyId) -> Result<(), ShopError> {
        authorize(&actor.principal, Action::ManageApiKeys)?;
        let user = actor.principal.user_id()?;
        if !self
            .store
            .for_user(user)
            .revoke_api_key(user, id, now_ms())
            .await?
        {
            return Err(ShopError::NotFound(format!(
                "you have no active API key {id}"
            )));
        }
        self.audit
            .record(actor, "api_key.revoke", &format!("api_key:{id}"), "")
            .await;
        Ok(())
    }

    /// Whether `raw` looks like an API key (rather than a JWT).
    pub fn looks_like_key(raw: &str) -> bool {
        raw.starts_with(PREFIX)
    }

    /// Authenticates a presented key and counts the call against its daily quota.
    pub async fn authenticate(&self, raw: &str) -> Result<KeyUse, ShopError> {
        let key = self.verify(raw).await?;
        self.spend(&key).await
    }

    /// Checks a presented key — it exists, is not revoked, its secret matches, its owner is a
    /// seller or admin — without counting the call: the gate counts it with [`Self::spend`]
    /// only once the request is admitted, so a request the rate limiter refuses costs no quota.
    pub async fn verify(&self, raw: &str) -> Result<VerifiedKey, ShopError> {
        const REFUSED: &str = "the API key is invalid or revoked";
        let mut parts = raw.strip_prefix(PREFIX).unwrap_or("").splitn(3, '_');
        let (Some(user), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ShopError::Unauthenticated(REFUSED));
        };
        let (Ok(user), Ok(key)) = (user.parse::<UserId>(), key.parse::<ApiKeyId>()) else {
            return Err(ShopError::Unauthenticated(REFUSED));
        };
        let shard = self.store.for_user(user);
        let Some(record) = shard.api_key(key).await? else {
            return Err(ShopError::Unauthenticated(REFUSED));
        };
        if record.user != user
            || record.revoked_at_ms.is_some()
            || !same_hash(&record.secret_hash, &token_hash(secret))
        {
            return Err(ShopError::Unauthenticated(REFUSED));
        }
        let role = match shard.user(user).await? {
            Some(owner) if matches!(owner.role, Role::Seller | Role::Admin) => owner.role,
            _ => return Err(ShopError::Unauthenticated(REFUSED)),
        };
        Ok(VerifiedKey {
            principal: Principal::User {
                id: user,
                role,
                credential: Credential::ApiKey(key),
            },
            user,
            key,
            daily_quota: record.daily_quota,
        })
    }

    /// Counts one call of a verified key against its daily quota.
    pub async fn spend(&self, verified: &VerifiedKey) -> Result<KeyUse, ShopError> {
        let now = now_ms();
        let day = now.div_euclid(86_400_000);
        let reset_in_secs = u64::try_from((day + 1) * 86_400_000 - now)
            .unwrap_or(0)
            .div_ceil(1000);
        let used = self
            .store
            .for_user(verified.user)
            .consume_quota(verified.key, day, verified.daily_quota)
            .await?;
        if !used.allowed {
            return Err(ShopError::QuotaExhausted {
                limit: verified.daily_quota,
                reset_in_secs,
            });
        }
        Ok(KeyUse {
            principal: verified.principal.clone(),
            limit: verified.daily_quota,
            remaining: verified.daily_quota - used.used,
            reset_in_secs,
        })
    }
}

/// A key whose secret and owner checked out, its call not yet counted.
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    pub principal: Principal,
    user: UserId,
    key: ApiKeyId,
    daily_quota: i64,
}

fn info(record: &ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: record.id,
        name: record.name.clone(),
        daily_quota: record.daily_quota,
        created_at_ms: record.created_at_ms,
        revoked_at_ms: record.revoked_at_ms,
    }
}
