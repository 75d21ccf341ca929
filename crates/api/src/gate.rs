//! The gateway middleware: authentication, rate limits, API key quotas and security headers.
//!
//! Every request is authenticated first — no credential is anonymous; a credential that does
//! not verify is a 401, never silently anonymous — and the resulting [`Actor`] is put in the
//! request's extensions for handlers to take. Then the request is charged to a rate-limit
//! class (`auth` for `/auth/*`, `write` for unsafe methods, `read` otherwise) under the most
//! specific key known: the API key, else the user, else the client IP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bazaar_gateway::Gatekeeper;
use bazaar_gateway::ratelimit::{Decision, LimitClass, RateLimiter};
use bazaar_shop::api_keys::KeyUse;
use bazaar_shop::{Actor, Credential, Principal};

use crate::middleware::RequestId;
use crate::problem::ApiError;

/// Rate-limit settings of the edge.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub enabled: bool,
    pub limiter: Arc<dyn RateLimiter>,
    pub read: LimitClass,
    pub write: LimitClass,
    pub auth: LimitClass,
    /// Sign-in attempts per account, whatever the client address.
    pub login_account: LimitClass,
}

/// What the gate needs.
#[derive(Debug, Clone)]
pub struct Gate {
    pub gatekeeper: Gatekeeper,
    pub limits: RateLimits,
}

/// Authenticates, rate-limits and stamps security headers.
pub async fn gate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let headers = request.headers();
    let bearer = bearer_token(headers);
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let authenticated = match (bearer.as_deref(), api_key) {
        (None, None) => Ok(None),
        (bearer, api_key) => gate
            .gatekeeper
            .authenticate(bearer, api_key)
            .await
            .map(Some),
    };
    let (principal, key_use) = match authenticated {
        Ok(Some(auth)) => (auth.principal, auth.key_use),
        Ok(None) => (Principal::Anonymous, None),
        Err(error) => return secure(ApiError::from(error).into_response()),
    };

    let limited = if gate.limits.enabled {
        let class = class_of(&gate.limits, request.method(), request.uri().path());
        let key = match &principal {
            Principal::User {
                credential: Credential::ApiKey(key),
                ..
            } => format!("key:{key}"),
            Principal::User { id, .. } => format!("user:{id}"),
            Principal::Anonymous => format!("ip:{}", client_ip(&request)),
        };
        match gate.limits.limiter.check(class, &key).await {
            Ok(decision) => Some((class.clone(), decision)),
            Err(error) => {
                // Fail open: an unreachable limiter must not take the whole API down.
                tracing::warn!(%error, "rate limiter unavailable; admitting the request");
                None
            }
        }
    } else {
        None
    };
    if let Some((class, decision)) = &limited
        && !decision.allowed
    {
        let mut response = too_many(
            decision.retry_after,
            "the rate limit for this client is exceeded",
        );
        add_rate_headers(response.headers_mut(), class, decision);
        return secure(response);
    }

    request.extensions_mut().insert(Actor {
        principal,
        request_id,
    });
    let mut response = next.run(request).await;
    if let Some((class, decision)) = &limited {
        add_rate_headers(response.headers_mut(), class, decision);
    }
    if let Some(key_use) = &key_use {
        add_quota_headers(response.headers_mut(), key_use);
    }
    secure(response)
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn class_of<'a>(limits: &'a RateLimits, method: &Method, path: &str) -> &'a LimitClass {
    if path.starts_with("/auth/") {
        &limits.auth
    } else if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        &limits.read
    } else {
        &limits.write
    }
}

fn client_ip(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |info| info.0.ip().to_string())
}

/// A 429 problem with `Retry-After` in whole seconds (rounded up).
pub fn too_many(retry_after: Duration, detail: &str) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = ApiError::TooManyRequests(detail.to_owned()).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// `RateLimit-Policy` and `RateLimit` as the IETF httpapi draft writes them:
/// `"read";q=200;w=1` and `"read";r=199;t=1`.
pub fn add_rate_headers(headers: &mut HeaderMap, class: &LimitClass, decision: &Decision) {
    let window = class.period.as_secs().max(1);
    let policy = format!("\"{}\";q={};w={window}", class.name, class.burst);
    let reset = decision.reset.as_secs() + u64::from(decision.reset.subsec_nanos() > 0);
    let state = format!("\"{}\";r={};t={reset}", class.name, decision.remaining);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn add_quota_headers(headers: &mut HeaderMap, key_use: &KeyUse) {
    headers.insert("x-quota-limit", HeaderValue::from(key_use.limit));
    headers.insert(
        "x-quota-remaining",
        HeaderValue::from(key_use.remaining.max(0)),
    );
    headers.insert("x-quota-reset", HeaderValue::from(key_use.reset_in_secs));
}

/// Headers every response carries. JSON responses also forbid any active content; HTML pages
/// (the docs and the playground) load their own scripts and keep a looser policy.
fn secure(mut response: Response) -> Response {
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    response
}

/// The acting principal and request id, for handlers: `Acting(actor): Acting`.
#[derive(Debug, Clone)]
pub struct Acting(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .map(Acting)
            .ok_or_else(|| {
                ApiError::Internal("the gate middleware did not run for this route".into())
            })
    }
}
