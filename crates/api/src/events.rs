//! The dead-letter queue over REST (`/admin/dlq`, admins only), and the request-path half of
//! synchronous side effects.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bazaar_queue::DeadLetter;
use bazaar_shop::events::SyncEffects;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::gate::Acting;
use crate::params::{NoQuery, Path, QueryParams};
use crate::problem::{ApiError, Problem};
use crate::wire::Page;

/// The dead-letter routes, with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, delete_dead_letter))
        .routes(routes!(replay_dead_letter))
}

/// An event a consumer gave up on.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterBody {
    /// The dead letter's id, for show, replay and delete.
    id: String,
    /// The consumer group that gave up on it.
    consumer: String,
    /// The event's id (its CloudEvents `id`).
    event_id: String,
    /// The event's type, such as `order.paid`.
    #[serde(rename = "type")]
    event_type: String,
    /// The ordering key: the aggregate the event is about.
    key: String,
    /// Deliveries made before it was given up.
    attempts: u32,
    /// The consumer's last error, or why the queue gave up.
    last_error: String,
    /// RFC 3339.
    published_at: String,
    /// RFC 3339.
    dead_at: String,
    /// The event envelope as it was delivered (CloudEvents JSON), or a string if it was
    /// not JSON.
    #[schema(value_type = Object)]
    event: serde_json::Value,
}

fn rfc3339(at: SystemTime) -> String {
    let at = at.max(UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<DeadLetter> for DeadLetterBody {
    fn from(dead: DeadLetter) -> Self {
        let event = serde_json::from_slice(&dead.message.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&dead.message.payload).into_owned())
        });
        Self {
            id: dead.id,
            consumer: dead.group,
            event_id: dead.message.id,
            event_type: dead.message.topic,
            key: dead.message.key,
            attempts: dead.attempts,
            last_error: dead.last_error,
            published_at: rfc3339(dead.published_at),
            dead_at: rfc3339(dead.dead_at),
            event,
        }
    }
}

/// `GET /admin/dlq` parameters, for OpenAPI; they are read by [`QueryParams`].
#[derive(Debug, utoipa::IntoParams)]
#[allow(
    dead_code,
    reason = "a documentation type: only its derived OpenAPI parameters are used"
)]
pub struct DeadLetterQuery {
    /// Page size, 1–500 (default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The dead-letter queue, oldest first. Admins only.
#[utoipa::path(
    get, path = "/admin/dlq", tag = "events", params(DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = inline(Page<DeadLetterBody>)),
        (status = 400, description = "A parameter is invalid, repeated or unknown; `param` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_dead_letters(
    State(state): State<AppState>,
    Acting(actor): Acting,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Page<DeadLetterBody>>, ApiError> {
    let query = QueryParams::parse(query.as_deref().unwrap_or(""), &["limit", "cursor"])?;
    let limit = query.limit(50, 500)?;
    let after = query.get("cursor");
    let page = state.dead_letters.list(&actor, after, limit).await?;
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(|dead| dead.id.clone()))
        .flatten();
    Ok(axum::Json(Page {
        items: page.into_iter().map(DeadLetterBody::from).collect(),
        next_cursor,
    }))
}

/// One dead letter. Admins only.
#[utoipa::path(
    get, path = "/admin/dlq/{id}", tag = "events",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_dead_letter(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<axum::Json<DeadLetterBody>, ApiError> {
    Ok(axum::Json(
        state.dead_letters.get(&actor, &id).await?.into(),
    ))
}

/// Delivers a dead letter again to the consumer that gave up on it, and removes it from the
/// dead-letter queue. Admins only.
#[utoipa::path(
    post, path = "/admin/dlq/{id}/replay", tag = "events",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 202, description = "Queued for its consumer again"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn replay_dead_letter(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    state.dead_letters.replay(&actor, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Removes a dead letter for good. Admins only.
#[utoipa::path(
    delete, path = "/admin/dlq/{id}", tag = "events",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn delete_dead_letter(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    state.dead_letters.delete(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// With `events.side_effects = "sync"`: after a write request succeeds, every consumer's
/// effect is applied before the answer leaves; if one fails, the client gets 503
/// `side-effect-failed` (the change itself committed, and its event is retried).
pub async fn apply_side_effects(
    State(effects): State<SyncEffects>,
    request: Request,
    next: Next,
) -> Response {
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !write {
        return next.run(request).await;
    }
    // The handler runs in this task, so the capture sees every event its store calls write.
    let (response, written) = bazaar_store::capturing_events(next.run(request)).await;
    if written.is_empty() || !response.status().is_success() {
        return response;
    }
    match effects.apply_written(&written).await {
        Ok(()) => response,
        Err(error) => ApiError::from(error).into_response(),
    }
}
