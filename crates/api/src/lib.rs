//! Bazaar's wire layer: the only crate that knows HTTP, JSON and GraphQL.
//!
//! # Layout
//!
//! * [`router`] assembles every route and the middleware stack.
//! * [`rest`] — the catalog resources, [`identity`] — accounts, users, API keys and the audit
//!   log, [`orders`] — the cart, checkout and orders; each handler carries its OpenAPI description, and `utoipa-axum` builds the router
//!   and the document from the same list, so a route cannot exist without being documented.
//! * [`gate`] — authentication, rate limits, quotas and security headers for every request.
//! * [`graphql`] — schema, batched loaders and the `/graphql` endpoint; `cost` charges each
//!   operation by what it does before it runs; [`ide`] — GraphiQL (compiled in, no CDN) at
//!   `GET /graphql` and the SDL at `/graphql/schema`.
//! * [`wire`] — JSON shapes mapped from domain types.
//! * [`params`] — path and query parameters, read alike on every route.
//! * [`problem`] — RFC 9457 errors; [`middleware`] — request ids, logs, metrics and problem
//!   bodies for errors raised outside handlers.
//!
//! # Middleware, outermost first
//!
//! `observe` (request id, span, metrics) → `problem_for_bare_errors` → CORS → `gate`
//! (client address, route and method, authentication, rate limits, quotas, security headers)
//! → panic catcher → timeout → body-size limit → the route.

pub mod body;
mod cost;
pub mod events;
pub mod gate;
pub mod graphql;
pub mod ide;
pub mod identity;
pub mod middleware;
pub mod orders;
pub mod params;
pub mod problem;
pub mod rest;
pub mod search;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bazaar_shop::events::{DeadLetterOps, SyncEffects};
use bazaar_shop::search::IndexState;
use bazaar_shop::{Accounts, ApiKeys, Catalog, Orders, Search};
use bazaar_telemetry::Metrics;
use bazaar_worker::WorkerBoard;
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use gate::Gate;
use graphql::{BazaarSchema, GraphqlLimits};
use middleware::HttpMetrics;

/// What every handler can reach. Cloned for every request, so everything inside is shared
/// behind an `Arc` (the gate holds keys and limit classes that would otherwise be copied).
#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
    pub accounts: Accounts,
    pub api_keys: ApiKeys,
    pub orders: Orders,
    pub search: Search,
    pub gate: Arc<Gate>,
    pub metrics: Metrics,
    pub schema: BazaarSchema,
    /// The background workers' statuses, shown by `/readyz`.
    pub workers: WorkerBoard,
    pub dead_letters: DeadLetterOps,
}

/// The application services the API serves.
#[derive(Debug, Clone)]
pub struct Services {
    pub catalog: Catalog,
    pub accounts: Accounts,
    pub api_keys: ApiKeys,
    pub orders: Orders,
    pub search: Search,
    pub gate: Gate,
    /// The dead-letter queue's operations (`/admin/dlq`).
    pub dead_letters: DeadLetterOps,
    /// Set when side effects run on the request path (`events.side_effects = "sync"`).
    pub sync_effects: Option<SyncEffects>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

/// Limits of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Origins browsers may call the API from (CORS); empty allows none.
    pub cors_origins: Vec<String>,
    /// A request still running after this is answered with 408.
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit: usize,
    pub graphql: GraphqlLimits,
    /// The background workers' statuses, for `/readyz`.
    pub workers: WorkerBoard,
    /// Peers whose `Forwarded` / `X-Forwarded-For` name the client; empty trusts none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(30),
            body_limit: 1024 * 1024,
            graphql: GraphqlLimits::default(),
            workers: WorkerBoard::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bazaar",
        description = "The Bazaar marketplace API. Errors are RFC 9457 problem documents \
                       (`application/problem+json`); ids are decimal strings; money is \
                       integer minor units with an ISO 4217 currency code."
    ),
    tags(
        (name = "catalog", description = "Products and their variants"),
        (name = "auth", description = "Sign-up, sign-in, token refresh and sign-out"),
        (name = "users", description = "Profiles"),
        (name = "api-keys", description = "Sellers' API keys"),
        (name = "audit", description = "Security events"),
        (name = "orders", description = "The cart, checkout and orders"),
        (name = "events", description = "The dead-letter queue of events consumers gave up on"),
    ),
    components(schemas(problem::Problem)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Declares the two credentials: a bearer JWT and a seller API key.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

/// Declares that every route of `router` needs a credential — a bearer JWT or an API key,
/// either of which the gate accepts — on each operation that names none of its own. Without
/// the declaration Swagger UI's "Try it out" sends no credential and the route can only
/// answer 401. Used for routers none of whose routes serve anonymous callers (a cart,
/// a checkout and an order always belong to someone); routers that mix public and signed-in
/// routes declare it route by route with `security(...)`. `tests/http/permissions.rs` holds
/// the document to what the server answers.
fn signed_in(mut router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    use utoipa::openapi::security::SecurityRequirement;
    for item in router.get_openapi_mut().paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security.get_or_insert_with(|| {
                vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("api_key", Vec::<String>::new()),
                ]
            });
        }
    }
    router
}

/// The REST routes and the OpenAPI 3.1 document describing exactly them.
fn rest_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(rest::router())
        .merge(search::router())
        .merge(identity::router())
        .merge(signed_in(orders::router()))
        .merge(events::router())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    (routes, doc)
}

/// The OpenAPI 3.1 document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    rest_routes().1
}

/// The whole HTTP application.
pub fn router(services: Services, metrics: Metrics, config: ApiConfig) -> Router {
    let http_metrics = HttpMetrics::register(&metrics);
    let (rest, doc) = rest_routes();
    let gate = Arc::new(services.gate.with_edge(
        gate_routes(&doc),
        gate::TrustedProxies::new(config.trusted_proxies.clone()),
    ));
    let state = AppState {
        catalog: services.catalog,
        accounts: services.accounts,
        api_keys: services.api_keys,
        orders: services.orders,
        search: services.search,
        gate: gate.clone(),
        metrics,
        schema: graphql::schema(config.graphql),
        workers: config.workers.clone(),
        dead_letters: services.dead_letters,
    };
    let sync_effects = services.sync_effects;

    let router = Router::new()
        .merge(rest)
        .route("/graphql", get(ide::page).post(graphql::execute))
        .route("/graphql/schema", get(ide::schema))
        .route("/graphql/assets/{fingerprint}/{name}", get(ide::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .with_state(state);
    // Inside the gate and the timeout: a refused request runs no side effects, and a slow
    // one is bounded like the handler it follows.
    let router = match sync_effects {
        Some(effects) => router.layer(axum::middleware::from_fn_with_state(
            effects,
            events::apply_side_effects,
        )),
        None => router,
    };
    router
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(gate, gate::gate))
        .layer(cors(&config.cors_origins))
        .layer(axum::middleware::from_fn(
            middleware::problem_for_bare_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            middleware::observe,
        ))
}

/// What the gate knows of the routes: the REST routes as the OpenAPI document declares them,
/// and the routes outside it (which [`router`] adds beside them), all public.
fn gate_routes(doc: &utoipa::openapi::OpenApi) -> gate::Routes {
    use gate::Rule;
    let mut routes = gate::Routes::from_openapi(doc);
    routes.add("/graphql", Method::GET, Rule::PUBLIC);
    // A GraphQL operation is charged by what it does, which only the handler can tell.
    routes.add(
        "/graphql",
        Method::POST,
        Rule {
            credential: false,
            charged_by_handler: true,
        },
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        routes.add(path, Method::GET, Rule::PUBLIC);
    }
    routes
}

/// Browsers may call the API only from the configured origins.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    let name = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            name("x-api-key"),
            name("x-request-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            name("x-request-id"),
            name("ratelimit"),
            name("ratelimit-policy"),
            name("x-quota-limit"),
            name("x-quota-remaining"),
            name("x-quota-reset"),
        ])
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /readyz`: the store and the background workers.
#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    /// The search index: `ready`, or `rebuilding` with how far it got and why.
    search: SearchBody,
    workers: Vec<WorkerBody>,
}

/// The search index as `/readyz` reports it. While it is rebuilt the process serves, and
/// search answers from the index it has (empty if there was none).
#[derive(Debug, Serialize)]
struct SearchBody {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    indexed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

impl From<IndexState> for SearchBody {
    fn from(state: IndexState) -> Self {
        match state {
            IndexState::Ready => Self {
                state: "ready",
                reason: None,
                indexed: None,
                total: None,
            },
            IndexState::Rebuilding {
                reason,
                indexed,
                total,
            } => Self {
                state: "rebuilding",
                reason: Some(reason),
                indexed: Some(indexed),
                total: Some(total),
            },
        }
    }
}

/// A background worker as `/readyz` reports it.
#[derive(Debug, Serialize)]
struct WorkerBody {
    name: &'static str,
    /// `idle`, `running`, `draining` or `stopped`.
    state: &'static str,
    runs: u64,
    errors: u64,
    /// RFC 3339, when its last successful pass ended.
    last_success: Option<String>,
    /// Why its last pass failed, when it did.
    last_error: Option<String>,
}

/// `GET /healthz`: the process is alive and serving HTTP.
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// `GET /readyz`: every shard answers a query; the detail lists each background worker.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.catalog.store().ping().await {
        Ok(()) => axum::Json(Readiness {
            status: "ready",
            search: state.search.state().into(),
            workers: state
                .workers
                .statuses()
                .into_iter()
                .map(|w| WorkerBody {
                    name: w.name,
                    state: w.state.as_str(),
                    runs: w.runs,
                    errors: w.errors,
                    last_success: w.last_success_ms.map(wire::rfc3339),
                    last_error: w.last_error,
                })
                .collect(),
        })
        .into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            let mut problem = problem::Problem::for_status(StatusCode::SERVICE_UNAVAILABLE);
            problem.detail = format!("a shard did not answer: {error}");
            problem.into_response()
        }
    }
}

/// `GET /metrics`: everything registered, in the OpenMetrics text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, bazaar_telemetry::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}
