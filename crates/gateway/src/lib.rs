//! Bazaar's gateway: what every request passes before the application sees it.
//!
//! # Layout
//!
//! * [`tokens`] — short-lived access tokens (JWT, HS256 pinned, `kid`-named keys that rotate).
//! * [`ratelimit`] — GCRA rate limiting behind the [`ratelimit::RateLimiter`] trait, in memory
//!   (governor) or in Redis (one Lua script) so several API processes share one budget.
//!
//! Authentication itself — turning a bearer token or API key into a
//! [`bazaar_shop::Principal`] — joins these with the shop's accounts and API keys in
//! [`authenticate`]; the HTTP plumbing (headers, middleware) stays in the `api` crate.

pub mod ratelimit;
pub mod tokens;

use bazaar_shop::api_keys::{KeyUse, VerifiedKey};
use bazaar_shop::{Accounts, ApiKeys, Principal, ShopError};

use tokens::AccessTokens;

/// The result of authenticating a request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    /// Set when an API key was used: the key, whose call is counted against its quota by
    /// [`Gatekeeper::spend`] once the request is admitted.
    pub api_key: Option<VerifiedKey>,
}

/// Everything needed to authenticate requests. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    pub tokens: AccessTokens,
    pub accounts: Accounts,
    pub api_keys: ApiKeys,
}

impl Gatekeeper {
    /// Authenticates the credential of a request: `bearer` is the value after `Bearer ` in
    /// `Authorization`, `api_key` the `X-Api-Key` header. No credential is anonymous; a
    /// credential that does not verify is an error, never silently anonymous.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Authenticated, ShopError> {
        let key = api_key.or(bearer.filter(|b| ApiKeys::looks_like_key(b)));
        if let Some(key) = key {
            let verified = self.api_keys.verify(key).await?;
            return Ok(Authenticated {
                principal: verified.principal.clone(),
                api_key: Some(verified),
            });
        }
        let Some(token) = bearer else {
            return Ok(Authenticated {
                principal: Principal::Anonymous,
                api_key: None,
            });
        };
        const REFUSED: &str = "the access token is invalid, expired or revoked";
        let claims = self.tokens.verify(token).map_err(|error| {
            tracing::debug!(%error, "access token refused");
            ShopError::Unauthenticated(REFUSED)
        })?;
        // Revocation is strong: a signed-out session's tokens stop working at once.
        let principal = self
            .accounts
            .session_principal(claims.user()?, claims.session()?)
            .await?
            .ok_or(ShopError::Unauthenticated(REFUSED))?;
        Ok(Authenticated {
            principal,
            api_key: None,
        })
    }

    /// Counts an admitted request of an API key against the key's daily quota.
    pub async fn spend(&self, key: &VerifiedKey) -> Result<KeyUse, ShopError> {
        self.api_keys.spend(key).await
    }
}
