//! The gateway middleware: client addresses, authentication, rate limits, API key quotas and
//! security headers.
//!
//! Every request passes these steps in this order, each one before anything costlier:
//!
//! 1. **Client address.** The peer's address, unless the peer is a trusted proxy
//!    (`http.trusted_proxies`): then the right-most untrusted address of `Forwarded` /
//!    `X-Forwarded-For`. It keys anonymous budgets and is recorded in the request's span.
//! 2. **Routing.** The gate knows the route table ([`Routes`], built from the OpenAPI document
//!    and the few routes outside it). A method the route does not declare is answered 405 by
//!    the router whatever the credentials — they are not even looked at — and is charged to
//!    the client address like an anonymous request, so a flood of 405s is throttled too.
//! 3. **Failed-credential budget.** A request that carries a credential, from an address that
//!    has spent its `failed_auth` budget, is refused 429 *before* the credential is looked up,
//!    so a flood of bogus keys costs no store reads.
//! 4. **Authentication.** No credential is anonymous; a credential that does not verify is a
//!    401 (never silently anonymous) and is charged to the address's `failed_auth` class. A
//!    route that declares `security` answers 401 to an anonymous request here, before its
//!    handler parses the path or the body.
//! 5. **Rate limit.** `auth` for `/auth/*`, always keyed by client address (a token does not
//!    move sign-up or sign-in to another bucket); otherwise `write` for unsafe methods and
//!    `read` for safe ones, keyed by the API key, else the user, else the address. `POST
//!    /graphql` is charged by the GraphQL handler instead, by what the operation does
//!    ([`Deferred`]).
//! 6. **Quota.** An API key's call is counted against its daily quota only once the request
//!    is admitted; a request refused by the limiter costs none.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bazaar_gateway::Gatekeeper;
use bazaar_gateway::ratelimit::{Decision, LimitClass, RateLimiter};
use bazaar_shop::api_keys::{KeyUse, VerifiedKey};
use bazaar_shop::{Actor, Credential, Principal, ShopError};
use ipnet::IpNet;

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
    /// Requests whose credential fails to verify, per client address.
    pub failed_auth: LimitClass,
    /// GraphQL complexity points per `read` unit charged for a query.
    pub graphql_complexity_per_read: usize,
}

/// What the gate needs.
#[derive(Debug, Clone)]
pub struct Gate {
    pub gatekeeper: Gatekeeper,
    pub limits: RateLimits,
    /// Filled in by [`crate::router`], which knows the routes and the edge's settings.
    routes: Routes,
    proxies: TrustedProxies,
}

impl Gate {
    pub fn new(gatekeeper: Gatekeeper, limits: RateLimits) -> Self {
        Self {
            gatekeeper,
            limits,
            routes: Routes::default(),
            proxies: TrustedProxies::default(),
        }
    }

    pub(crate) fn with_edge(mut self, routes: Routes, proxies: TrustedProxies) -> Self {
        self.routes = routes;
        self.proxies = proxies;
        self
    }

    /// Charges `cost` cells of `class` to `bucket` (when limits are on), then counts the call
    /// of `api_key` against its quota — in that order, so a refused request spends no quota.
    /// A refusal is the finished response.
    pub async fn admit(
        &self,
        class: &LimitClass,
        bucket: &str,
        cost: u32,
        api_key: Option<&VerifiedKey>,
    ) -> Result<Admitted, Response> {
        let mut admitted = Admitted::default();
        if self.limits.enabled {
            match self.limits.limiter.check_n(class, bucket, cost).await {
                Ok(decision) if decision.allowed => {
                    admitted.rate = Some((class.clone(), decision));
                }
                Ok(decision) => {
                    let detail = if cost > class.burst {
                        format!(
                            "this request costs {cost} `{}` units, more than the whole budget of {}; split it",
                            class.name, class.burst
                        )
                    } else if cost > 1 {
                        format!(
                            "this request costs {cost} `{}` units, more than this client has left",
                            class.name
                        )
                    } else {
                        "the rate limit for this client is exceeded".to_owned()
                    };
                    let mut response = too_many(decision.retry_after, &detail);
                    add_rate_headers(response.headers_mut(), class, &decision);
                    return Err(response);
                }
                Err(error) => {
                    // Fail open: an unreachable limiter must not take the whole API down.
                    tracing::warn!(%error, "rate limiter unavailable; admitting the request");
                }
            }
        }
        if let Some(key) = api_key {
            match self.gatekeeper.spend(key).await {
                Ok(key_use) => admitted.key_use = Some(key_use),
                Err(error) => return Err(ApiError::from(error).into_response()),
            }
        }
        Ok(admitted)
    }
}

/// What admitting a request granted, for its response headers.
#[derive(Debug, Default)]
pub struct Admitted {
    rate: Option<(LimitClass, Decision)>,
    key_use: Option<KeyUse>,
}

impl Admitted {
    /// Adds `RateLimit*` and `X-Quota-*` headers.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        if let Some((class, decision)) = &self.rate {
            add_rate_headers(headers, class, decision);
        }
        if let Some(key_use) = &self.key_use {
            add_quota_headers(headers, key_use);
        }
    }
}

/// A request whose rate-limit charge and quota the handler settles, because only it knows the
/// cost (`POST /graphql`): the bucket it is charged to and the API key to count.
#[derive(Debug, Clone)]
pub struct Deferred {
    pub bucket: String,
    pub api_key: Option<VerifiedKey>,
}

/// What the gate must know of one route and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The route declares `security`: an anonymous request is refused 401 at the gate.
    pub credential: bool,
    /// The handler charges the rate limit and quota itself ([`Deferred`]).
    pub charged_by_handler: bool,
}

impl Rule {
    pub const PUBLIC: Self = Self {
        credential: false,
        charged_by_handler: false,
    };
}

/// The route table: for each route template (as [`MatchedPath`] spells it), the methods it
/// declares and their [`Rule`]s.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: HashMap<String, Vec<(Method, Rule)>>,
}

impl Routes {
    /// Every operation of the document; an operation needs a credential when it declares a
    /// `security` requirement without an empty (anonymous) alternative.
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut routes = Self::default();
        for (path, item) in &doc.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::OPTIONS, &item.options),
                (Method::HEAD, &item.head),
                (Method::PATCH, &item.patch),
                (Method::TRACE, &item.trace),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    let credential = operation.security.as_ref().is_some_and(|alternatives| {
                        !alternatives.is_empty()
                            && alternatives.iter().all(|requirement| {
                                serde_json::to_value(requirement)
                                    .ok()
                                    .and_then(|v| v.as_object().map(|o| !o.is_empty()))
                                    .unwrap_or(true)
                            })
                    });
                    routes.add(
                        path,
                        method,
                        Rule {
                            credential,
                            charged_by_handler: false,
                        },
                    );
                }
            }
        }
        routes
    }

    /// Declares `method` on `path` (a `GET` also answers `HEAD`, as the router does).
    pub fn add(&mut self, path: &str, method: Method, rule: Rule) {
        let methods = self.routes.entry(path.to_owned()).or_default();
        if method == Method::GET && !methods.iter().any(|(m, _)| m == Method::HEAD) {
            methods.push((Method::HEAD, rule));
        }
        methods.retain(|(m, _)| *m != method);
        methods.push((method, rule));
    }

    fn lookup(&self, path: Option<&str>, method: &Method) -> Lookup {
        let Some(methods) = path.and_then(|p| self.routes.get(p)) else {
            return Lookup::Unknown;
        };
        methods
            .iter()
            .find(|(m, _)| m == method)
            .map_or(Lookup::Undeclared, |(_, rule)| Lookup::Declared(*rule))
    }
}

enum Lookup {
    /// Not in the table (no route matched, or a route the table does not describe).
    Unknown,
    /// The route exists but not with this method: the router answers 405.
    Undeclared,
    Declared(Rule),
}

/// Proxies whose forwarding headers are believed (`http.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address: the peer's, unless the peer is trusted; then, walking the
    /// forwarding chain from the right (the hop nearest to us), the first address that is not
    /// a trusted proxy. Entries to its left were written by the client itself and prove nothing.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let chain = forwarded_chain(headers);
        let mut client = peer;
        for hop in chain.iter().rev() {
            // An entry that is not an address (`unknown`, an obfuscated name) ends the walk:
            // what lies beyond it cannot be attributed.
            let Some(address) = hop else {
                break;
            };
            client = address.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        Some(client)
    }
}

/// The `for` addresses of `Forwarded` (RFC 7239) if present, else of `X-Forwarded-For`, in
/// order, client first; `None` for an entry that is not an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let forwarded = values(header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_node(value.trim().trim_matches('"')))
            })
            .collect();
    }
    values(HeaderName::from_static("x-forwarded-for"))
        .iter()
        .map(|entry| parse_node(entry))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            node.strip_prefix('[')
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(ip, _)| ip.parse().ok())
        })
}

/// The client address the gate settled on, for handlers and logs.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Authenticates, rate-limits and stamps security headers.
pub async fn gate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let client = gate.proxies.client(peer, request.headers());
    let ip_bucket = client.map_or_else(|| "ip:unknown".to_owned(), |ip| format!("ip:{ip}"));
    if let Some(client) = client {
        tracing::Span::current().record("client", tracing::field::display(client));
    }
    request.extensions_mut().insert(ClientAddr(client));

    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let rule = match gate.routes.lookup(matched.as_deref(), request.method()) {
        // The router answers 405 (with `Allow`); credentials are not looked at, and the request
        // is charged as an anonymous one.
        Lookup::Undeclared => None,
        Lookup::Unknown => Some(Rule::PUBLIC),
        Lookup::Declared(rule) => Some(rule),
    };

    let headers = request.headers();
    let bearer = bearer_token(headers);
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let carries_credential = rule.is_some() && (bearer.is_some() || api_key.is_some());
    let limits = &gate.limits;
    if carries_credential
        && limits.enabled
        && let Some(refused) = failed_auth_spent(limits, &ip_bucket).await
    {
        return secure(refused);
    }
    let authenticated = if carries_credential {
        gate.gatekeeper
            .authenticate(bearer.as_deref(), api_key)
            .await
            .map(Some)
    } else {
        Ok(None)
    };
    let (principal, api_key) = match authenticated {
        Ok(Some(auth)) => (auth.principal, auth.api_key),
        Ok(None) => (Principal::Anonymous, None),
        Err(error) => {
            if limits.enabled && matches!(error, ShopError::Unauthenticated(_)) {
                match limits.limiter.check(&limits.failed_auth, &ip_bucket).await {
                    Ok(decision) if !decision.allowed => {
                        return secure(failed_auth_refusal(limits, &decision));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "rate limiter unavailable; not charging a failed credential");
                    }
                }
            }
            return secure(ApiError::from(error).into_response());
        }
    };
    let rule = rule.unwrap_or(Rule::PUBLIC);
    if rule.credential && principal == Principal::Anonymous {
        return secure(
            ApiError::from(ShopError::Unauthenticated(
                "sign in first: send `Authorization: Bearer <access token>` or an API key",
            ))
            .into_response(),
        );
    }

    let path = request.uri().path();
    let bucket = if path.starts_with("/auth/") {
        ip_bucket
    } else {
        match &principal {
            Principal::User {
                credential: Credential::ApiKey(key),
                ..
            } => format!("key:{key}"),
            Principal::User { id, .. } => format!("user:{id}"),
            Principal::Anonymous => ip_bucket,
        }
    };
    let admitted = if rule.charged_by_handler {
        request.extensions_mut().insert(Deferred {
            bucket,
            api_key: api_key.clone(),
        });
        Admitted::default()
    } else {
        let class = class_of(limits, request.method(), path);
        match gate.admit(class, &bucket, 1, api_key.as_ref()).await {
            Ok(admitted) => admitted,
            Err(refused) => return secure(refused),
        }
    };

    request.extensions_mut().insert(Actor {
        principal,
        request_id,
    });
    let mut response = next.run(request).await;
    admitted.stamp(response.headers_mut());
    secure(response)
}

/// A 429 if `bucket` has no failed-credential budget left; spends nothing.
async fn failed_auth_spent(limits: &RateLimits, bucket: &str) -> Option<Response> {
    match limits.limiter.peek(&limits.failed_auth, bucket).await {
        Ok(decision) if !decision.allowed => Some(failed_auth_refusal(limits, &decision)),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%error, "rate limiter unavailable; admitting the request");
            None
        }
    }
}

fn failed_auth_refusal(limits: &RateLimits, decision: &Decision) -> Response {
    let mut response = too_many(
        decision.retry_after,
        "too many requests with invalid credentials from this client; wait and retry",
    );
    add_rate_headers(response.headers_mut(), &limits.failed_auth, decision);
    response
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
/// (the docs and the GraphQL IDE) load their own scripts and keep a looser policy.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn client(trusted: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        trusted
            .client(Some(peer.parse().unwrap()), &map)
            .unwrap()
            .to_string()
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_peer() {
        let none = proxies(&[]);
        let xff = [("x-forwarded-for", "203.0.113.1")];
        assert_eq!(client(&none, "192.0.2.9", &xff), "192.0.2.9");
        let some = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&some, "192.0.2.9", &xff), "192.0.2.9");
        assert_eq!(client(&some, "10.0.0.1", &xff), "203.0.113.1");
        assert_eq!(client(&some, "10.0.0.1", &[]), "10.0.0.1");
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let chain = [
            ("x-forwarded-for", "198.51.100.1, 203.0.113.5"),
            ("x-forwarded-for", "10.2.2.2"),
        ];
        assert_eq!(client(&trusted, "10.0.0.1", &chain), "203.0.113.5");
        // Every hop trusted: the left-most is the best we know.
        let inner = [("x-forwarded-for", "10.9.9.9, 10.2.2.2")];
        assert_eq!(client(&trusted, "10.0.0.1", &inner), "10.9.9.9");
        // An entry that is not an address stops the walk at the hop after it.
        let unknown = [("x-forwarded-for", "203.0.113.5, unknown, 10.2.2.2")];
        assert_eq!(client(&trusted, "10.0.0.1", &unknown), "10.2.2.2");
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let both = [
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("x-forwarded-for", "203.0.113.5"),
        ];
        assert_eq!(client(&trusted, "10.0.0.1", &both), "2001:db8:cafe::17");
        let v4_port = [("forwarded", "For=\"192.0.2.43:47011\"")];
        assert_eq!(client(&trusted, "10.0.0.1", &v4_port), "192.0.2.43");
        // An IPv4 peer seen as a mapped IPv6 address is still the trusted IPv4 proxy.
        assert_eq!(client(&trusted, "::ffff:10.0.0.1", &v4_port), "192.0.2.43");
    }
}
