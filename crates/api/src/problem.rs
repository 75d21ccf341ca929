//! RFC 9457 problem details: the one shape every HTTP error takes.
//!
//! Each error kind has a stable `type` (`/problems/{kind}`, documented in `docs/errors.md`)
//! that clients can branch on; `title` is its fixed human summary and `detail` says what
//! went wrong this time. Internal errors are logged once here, with the request's span, and
//! the client sees only that something failed and the request id to quote.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bazaar_shop::ShopError;
use bazaar_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::wire::MoneyBody;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document as sent on the wire (and read back from a stored checkout response).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URI reference naming the kind of problem, e.g. `/problems/invalid-parameter`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind, the same for every occurrence.
    pub title: String,
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The query or path parameter, or the body field, that was rejected, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The variant that is out of stock (`out-of-stock` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
    /// The order checking the cart out (`checkout-in-progress` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The cart's total now, to send as `expected_total` after review (`price-changed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<MoneyBody>,
}

/// The error responses every catalog write can give, for OpenAPI: `responses(..., WriteProblems)`.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(
    dead_code,
    reason = "a documentation type: only its derived OpenAPI responses are used"
)]
pub enum WriteProblems {
    #[response(
        status = 401,
        description = "Not signed in, or the credential is invalid, expired or revoked",
        content_type = "application/problem+json"
    )]
    Unauthenticated(Problem),
    #[response(
        status = 403,
        description = "Not the product's seller or an admin",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "No such product (or variant of it)",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 412,
        description = "It changed since the If-Match ETag was read",
        content_type = "application/problem+json"
    )]
    PreconditionFailed(Problem),
    #[response(
        status = 422,
        description = "A body field is invalid; `param` names it",
        content_type = "application/problem+json"
    )]
    InvalidField(Problem),
}

/// An error a handler returns; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a parameter is malformed or out of range.
    #[error("invalid parameter `{param}`: {detail}")]
    InvalidParam { param: String, detail: String },
    /// 400: the request body cannot be understood.
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    /// 401: no valid credentials; the response carries `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but the role or ownership does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the addressed resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// 412: the resource changed since the `If-Match` tag was read.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 422: a field of the body is invalid; `field` names it.
    #[error("invalid `{field}`: {detail}")]
    InvalidField { field: String, detail: String },
    /// 429: a rate limit is exceeded (the caller adds `Retry-After`).
    #[error("{0}")]
    TooManyRequests(String),
    /// 429: an API key's daily quota is spent.
    #[error("{detail}")]
    QuotaExhausted {
        detail: String,
        limit: i64,
        reset_in_secs: u64,
    },
    /// 413: the body exceeds the configured limit.
    #[error("the request body exceeds the server's body size limit")]
    PayloadTooLarge,
    /// 415: the body is not in a media type the endpoint accepts.
    #[error("expected a request body of type `{expected}`")]
    UnsupportedMediaType { expected: &'static str },
    /// 409: not enough stock of `variant` for a checkout.
    #[error("{detail}")]
    OutOfStock { detail: String, variant: String },
    /// 402: the payment was declined.
    #[error("{0}")]
    PaymentDeclined(String),
    /// 503: the payment provider failed or did not answer; nothing was charged.
    #[error("{0}")]
    PaymentUnavailable(String),
    /// 503: the write's rows are being moved to a new shard and it was held as long as a
    /// move may hold one; nothing was written, and trying again shortly is safe.
    #[error("{0}")]
    ShardMoving(String),
    /// 422: an `Idempotency-Key` reused with a different request.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// 409: the first request with this `Idempotency-Key` is still running.
    #[error("{0}")]
    IdempotencyInProgress(String),
    /// 409: the order's status does not allow the change.
    #[error("{0}")]
    InvalidTransition(String),
    /// 409: another checkout of the same cart is running.
    #[error("{detail}")]
    CheckoutInProgress { detail: String, order: String },
    /// 409: the cart changed while the checkout priced it.
    #[error("{0}")]
    CartChanged(String),
    /// 409: the cart no longer totals what the client expected; nothing was charged.
    #[error("{detail}")]
    PriceChanged { detail: String, total: MoneyBody },
    /// 503: the change committed, but a synchronous side effect failed (it is retried in
    /// the background).
    #[error("{0}")]
    SideEffectFailed(String),
    /// 500: anything unexpected; the detail is logged, never sent.
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A rejected parameter.
    pub fn param(param: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::InvalidParam {
            param: param.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        match error {
            // The one variant whose source is kept for the log rather than flattened.
            ShopError::Store(e @ StoreError::Conflict { .. }) => Self::Conflict(e.to_string()),
            ShopError::Store(e @ StoreError::Moving(_)) => Self::ShardMoving(e.to_string()),
            ShopError::Store(e) => Self::Internal(Box::new(e)),
            other => Self::of(&other),
        }
    }
}

impl ApiError {
    /// The API error for a borrowed shop error (internal ones keep only their message).
    pub fn of(error: &ShopError) -> Self {
        let message = error.to_string();
        match error {
            ShopError::InvalidParam { param, reason } => Self::param(*param, reason),
            ShopError::InvalidField { field, reason } => Self::InvalidField {
                field: field.clone(),
                detail: reason.clone(),
            },
            ShopError::Unauthenticated(_) => Self::Unauthenticated(message),
            ShopError::Forbidden(_) => Self::Forbidden(message),
            ShopError::NotFound(_) => Self::NotFound(message),
            ShopError::Conflict(_) => Self::Conflict(message),
            ShopError::PreconditionFailed => Self::PreconditionFailed(message),
            ShopError::QuotaExhausted {
                limit,
                reset_in_secs,
            } => Self::QuotaExhausted {
                detail: message,
                limit: *limit,
                reset_in_secs: *reset_in_secs,
            },
            ShopError::OutOfStock { variant, .. } => Self::OutOfStock {
                detail: message,
                variant: variant.to_string(),
            },
            ShopError::PaymentDeclined(_) => Self::PaymentDeclined(message),
            ShopError::PaymentUnavailable(_) => Self::PaymentUnavailable(message),
            ShopError::IdempotencyKeyReused => Self::IdempotencyKeyReused(message),
            ShopError::IdempotencyInProgress => Self::IdempotencyInProgress(message),
            ShopError::InvalidTransition { .. } => Self::InvalidTransition(message),
            ShopError::CheckoutInProgress { order } => Self::CheckoutInProgress {
                detail: message,
                order: order.to_string(),
            },
            ShopError::CartChanged => Self::CartChanged(message),
            ShopError::PriceChanged { total, .. } => Self::PriceChanged {
                detail: message,
                total: (*total).into(),
            },
            // A write refused for conflicting with stored data is the client's to resolve.
            ShopError::Store(StoreError::Conflict { .. }) => Self::Conflict(message),
            ShopError::Store(StoreError::Moving(_)) => Self::ShardMoving(message),
            ShopError::SideEffect { .. } => Self::SideEffectFailed(message),
            ShopError::Store(_)
            | ShopError::Queue(_)
            | ShopError::Corrupt(_)
            | ShopError::Load(_)
            | ShopError::Search(_) => Self::Internal(message.into()),
        }
    }

    /// The problem document, status and extra headers this error is answered with.
    pub fn into_problem(self) -> (Problem, axum::http::HeaderMap) {
        let (status, kind, title) = match &self {
            Self::InvalidParam { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            Self::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            Self::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            Self::InvalidField { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                "Invalid field",
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            Self::QuotaExhausted { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exhausted",
                "Quota exhausted",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Self::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::OutOfStock { .. } => (StatusCode::CONFLICT, "out-of-stock", "Out of stock"),
            Self::PaymentDeclined(_) => (
                StatusCode::PAYMENT_REQUIRED,
                "payment-declined",
                "Payment declined",
            ),
            Self::PaymentUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "payment-unavailable",
                "Payment unavailable",
            ),
            Self::ShardMoving(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shard-moving",
                "Shard move in progress",
            ),
            Self::SideEffectFailed(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "side-effect-failed",
                "Side effect failed",
            ),
            Self::IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            Self::IdempotencyInProgress(_) => (
                StatusCode::CONFLICT,
                "idempotency-in-progress",
                "Request in progress",
            ),
            Self::InvalidTransition(_) => (
                StatusCode::CONFLICT,
                "invalid-transition",
                "Invalid order transition",
            ),
            Self::CheckoutInProgress { .. } => (
                StatusCode::CONFLICT,
                "checkout-in-progress",
                "Checkout in progress",
            ),
            Self::CartChanged(_) => (StatusCode::CONFLICT, "cart-changed", "Cart changed"),
            Self::PriceChanged { .. } => (StatusCode::CONFLICT, "price-changed", "Price changed"),
            Self::Internal(source) => {
                tracing::error!(error = %source, source = ?source.source(), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error",
                )
            }
        };
        let mut extra = axum::http::HeaderMap::new();
        match &self {
            Self::Unauthenticated(_) => {
                extra.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bazaar\""),
                );
            }
            Self::QuotaExhausted {
                limit,
                reset_in_secs,
                ..
            } => {
                extra.insert(header::RETRY_AFTER, HeaderValue::from(*reset_in_secs));
                extra.insert("x-quota-limit", HeaderValue::from(*limit));
                extra.insert("x-quota-remaining", HeaderValue::from(0));
                extra.insert("x-quota-reset", HeaderValue::from(*reset_in_secs));
            }
            Self::ShardMoving(_) => {
                extra.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        let mut problem = Problem {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: String::new(),
            param: None,
            variant_id: None,
            order_id: None,
            total: None,
        };
        problem.detail = match self {
            Self::InvalidParam { param, detail } => {
                problem.param = Some(param);
                detail
            }
            Self::InvalidField { field, detail } => {
                problem.param = Some(field);
                detail
            }
            Self::OutOfStock { detail, variant } => {
                problem.variant_id = Some(variant);
                detail
            }
            Self::CheckoutInProgress { detail, order } => {
                problem.order_id = Some(order);
                detail
            }
            Self::PriceChanged { detail, total } => {
                problem.total = Some(total);
                detail
            }
            Self::Internal(_) => INTERNAL_DETAIL.to_owned(),
            other => other.to_string(),
        };
        (problem, extra)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (problem, extra) = self.into_problem();
        let mut response = problem.into_response();
        response.headers_mut().extend(extra);
        response
    }
}

/// What a client learns about an internal error.
const INTERNAL_DETAIL: &str =
    "the server failed to answer; quote the x-request-id header when reporting it";

impl Problem {
    /// The problem for a bare `status` produced outside our handlers (routing, body limits,
    /// timeouts, panics), with its stable kind and title.
    pub fn for_status(status: StatusCode) -> Self {
        let (kind, title, detail) = match status.as_u16() {
            404 => ("not-found", "Not found", "no route matches this path"),
            405 => (
                "method-not-allowed",
                "Method not allowed",
                "see the Allow header for the methods this path accepts",
            ),
            408 => (
                "request-timeout",
                "Request timed out",
                "the request took longer than the server's request timeout",
            ),
            413 => (
                "payload-too-large",
                "Request body too large",
                "the request body exceeds the server's body size limit",
            ),
            431 => (
                "request-header-fields-too-large",
                "Request header fields too large",
                "the request's headers exceed the server's limit",
            ),
            415 => (
                "unsupported-media-type",
                "Unsupported media type",
                "the request body's content type is not accepted here",
            ),
            429 => (
                "too-many-requests",
                "Too many requests",
                "slow down; see the Retry-After header",
            ),
            500 => ("internal", "Internal server error", INTERNAL_DETAIL),
            503 => (
                "unavailable",
                "Service unavailable",
                "the service cannot answer now; retry later",
            ),
            400 => (
                "bad-request",
                "Bad request",
                "the request could not be understood",
            ),
            _ if status.is_server_error() => ("internal", "Internal server error", INTERNAL_DETAIL),
            _ => (
                "bad-request",
                status.canonical_reason().unwrap_or("Bad request"),
                "the request could not be understood",
            ),
        };
        Self {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: if detail.is_empty() {
                title.to_owned()
            } else {
                detail.to_owned()
            },
            param: None,
            variant_id: None,
            order_id: None,
            total: None,
        }
    }

    /// The `code` a GraphQL error carries in its extensions for this problem — derived from
    /// the same document REST answers with, so both speak of one error alike.
    pub fn graphql_code(&self) -> &'static str {
        match (self.kind.trim_start_matches("/problems/"), self.status) {
            ("out-of-stock", _) => "OUT_OF_STOCK",
            ("payment-declined", _) => "PAYMENT_DECLINED",
            ("payment-unavailable", _) => "PAYMENT_UNAVAILABLE",
            ("invalid-transition", _) => "INVALID_TRANSITION",
            ("quota-exhausted", _) => "QUOTA_EXHAUSTED",
            ("checkout-in-progress", _) => "CHECKOUT_IN_PROGRESS",
            ("price-changed", _) => "PRICE_CHANGED",
            (_, 400 | 413 | 415 | 422) => "BAD_USER_INPUT",
            (_, 401) => "UNAUTHENTICATED",
            (_, 403) => "FORBIDDEN",
            (_, 404) => "NOT_FOUND",
            (_, 409) => "CONFLICT",
            (_, 412) => "PRECONDITION_FAILED",
            (_, 429) => "TOO_MANY_REQUESTS",
            _ => "INTERNAL",
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}
