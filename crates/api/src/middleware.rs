//! The HTTP middleware every request passes through: request ids, logs, metrics, and turning
//! bare error statuses into problem documents.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bazaar_telemetry::{LATENCY_BUCKETS, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tracing::Instrument;

use crate::problem::{PROBLEM_JSON, Problem};

/// The header that carries a request's id in both directions.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the request being handled, for handlers that want to log or return it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route template (`/products/{id}`), never the raw path: raw paths would make one
    /// time series per product and exhaust Prometheus.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The API's metric families.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
}

impl HttpMetrics {
    /// Registers the families in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS.iter().copied())
        });
        let in_flight = Gauge::default();
        let mut registry = metrics.registry();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving a request to its response headers, by route template",
            duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled now",
            in_flight.clone(),
        );
        Self {
            requests,
            duration,
            in_flight,
        }
    }
}

/// Accepts the client's `x-request-id` if it is sane (1–64 characters of `[A-Za-z0-9._-]`),
/// otherwise makes a UUIDv7; runs the request inside a span that carries it; echoes it in the
/// response; and records the request's metrics under its route template.
pub async fn observe(
    State(metrics): State<HttpMetrics>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_sane_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));

    // `client` is filled in by the gate, which knows which proxies to believe.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        %method,
        %route,
        client = tracing::field::Empty
    );
    metrics.in_flight.inc();
    let mut response = next.run(request).instrument(span.clone()).await;
    metrics.in_flight.dec();

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .duration
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

fn is_sane_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The most bytes of header fields (names and values) a request may carry before it is
/// refused with a 431 problem. hyper refuses a head over its read buffer (about 400 KiB) or
/// with more than 100 fields itself, with an empty 431 we never see; this lower limit means
/// any head between the two — far larger than any real client sends — still gets the problem
/// document every other error has.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Replaces the body of any error response that is not already a problem document — axum's
/// 404/405, the body limit's 413, the timeout's 408, a caught panic's 500 — so that every
/// error a client sees has the same shape. Headers such as `Allow` are kept. Requests whose
/// headers exceed [`MAX_HEADER_BYTES`] are answered 431 here, before anything reads them.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Problem::for_status(axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem = Problem::for_status(status).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (problem_parts, body) = problem.into_parts();
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_accepted_only_when_sane() {
        assert!(is_sane_request_id("abc-123_X.y"));
        assert!(is_sane_request_id(&"a".repeat(64)));
        for bad in [
            "",
            "has space",
            "new\nline",
            "émoji",
            &"a".repeat(65),
            "a/b",
        ] {
            assert!(!is_sane_request_id(bad), "{bad:?}");
        }
    }
}
