//! Accounts over REST: sign-up, sign-in, refresh, sign-out, profiles, API keys and the audit
//! log. Permission checks happen in the shop's services, never here.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bazaar_shop::accounts::{ProfilePatch, Session, Signup, UserView};
use bazaar_store::{ApiKeyId, Role, UserId};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::body::JsonBody;
use crate::gate::{Acting, add_rate_headers, too_many};
use crate::params::{NoQuery, Path, QueryParams};
use crate::problem::{ApiError, Problem};
use crate::wire::{
    ApiKeyBody, AuditEventBody, NewApiKeyBody, Page, PublicUserBody, TokensBody, UserBody,
};

/// The identity routes, with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(get_me, update_me))
        .routes(routes!(get_user, change_role))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(audit_events))
}

/// `POST /auth/signup`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    #[schema(example = "ada@example.com")]
    email: String,
    /// At least 12 characters; common and repetitive passwords are refused.
    password: String,
    name: String,
    /// `customer` (default) or `seller`.
    role: Option<String>,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

/// `POST /auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `PATCH /users/me`: fields to change; a `null` phone removes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    phone: Option<Option<String>>,
}

/// `PATCH /users/{id}`: an admin changes a role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `customer`, `seller` or `admin`.
    role: String,
}

/// `POST /api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// A label to tell keys apart, e.g. `inventory-sync`.
    name: String,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn tokens(state: &AppState, session: &Session, user: Option<UserBody>) -> TokensBody {
    TokensBody {
        user,
        access_token: state.gate.gatekeeper.tokens.issue(session),
        refresh_token: session.refresh_token.clone(),
        token_type: "Bearer",
        expires_in: state.gate.gatekeeper.tokens.ttl().as_secs(),
    }
}

/// Responses with credentials must never be cached.
fn no_store(status: StatusCode, body: &TokensBody) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Creates an account (customer or seller) and signs it in.
#[utoipa::path(
    post, path = "/auth/signup", tag = "auth", request_body = SignupBody,
    responses(
        (status = 201, description = "Created and signed in", body = TokensBody),
        (status = 409, description = "The email is already registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (e.g. a weak password); `param` names it", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn signup(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<SignupBody>,
) -> Result<Response, ApiError> {
    let input = Signup {
        email: body.email,
        password: body.password,
        name: body.name,
        role: body.role,
    };
    let (profile, session) = state.accounts.signup(&actor, input).await?;
    Ok(no_store(
        StatusCode::CREATED,
        &tokens(&state, &session, Some(profile.into())),
    ))
}

/// Signs in with email and password.
#[utoipa::path(
    post, path = "/auth/login", tag = "auth", request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in", body = TokensBody),
        (status = 401, description = "Wrong email or password (the same answer for both)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client or on this account", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn login(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    let limits = &state.gate.limits;
    if limits.enabled {
        let key = state.accounts.login_throttle_key(&body.email);
        match limits.limiter.check(&limits.login_account, &key).await {
            Ok(decision) if !decision.allowed => {
                let mut response = too_many(
                    decision.retry_after,
                    "too many sign-in attempts on this account; wait and retry",
                );
                add_rate_headers(response.headers_mut(), &limits.login_account, &decision);
                return Ok(response);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "rate limiter unavailable; admitting the sign-in"),
        }
    }
    let (profile, session) = state
        .accounts
        .login(&actor, &body.email, &body.password)
        .await?;
    Ok(no_store(
        StatusCode::OK,
        &tokens(&state, &session, Some(profile.into())),
    ))
}

/// Exchanges a refresh token for a new access and refresh token. Each refresh token works
/// once; presenting a used one signs the whole session out.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses(
        (status = 200, description = "A new pair", body = TokensBody),
        (status = 401, description = "Invalid, expired, reused or revoked", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let session = state.accounts.refresh(&actor, &body.refresh_token).await?;
    Ok(no_store(StatusCode::OK, &tokens(&state, &session, None)))
}

/// Signs out: the session's access and refresh tokens stop working at once.
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key has no session to end", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn logout(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<StatusCode, ApiError> {
    state.accounts.logout(&actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user's full profile.
#[utoipa::path(
    get, path = "/users/me", tag = "users",
    responses(
        (status = 200, description = "Your profile", body = UserBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_me(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<axum::Json<UserBody>, ApiError> {
    Ok(axum::Json(state.accounts.me(&actor).await?.into()))
}

/// Changes the signed-in user's name or phone.
#[utoipa::path(
    patch, path = "/users/me", tag = "users", request_body = ProfileBody,
    responses(
        (status = 200, description = "The updated profile", body = UserBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn update_me(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<ProfileBody>,
) -> Result<axum::Json<UserBody>, ApiError> {
    let patch = ProfilePatch {
        name: body.name,
        phone: body.phone,
    };
    Ok(axum::Json(
        state.accounts.update_me(&actor, patch).await?.into(),
    ))
}

/// A user's details (the seed's getUserDetails): in full for the user and admins, public
/// fields for everyone else.
#[utoipa::path(
    get, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id (decimal string)")),
    responses(
        (status = 200, description = "The user: `UserBody` for the owner and admins, `PublicUserBody` otherwise", body = PublicUserBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: UserId = id.parse().map_err(|e| ApiError::param("id", e))?;
    Ok(match state.accounts.user(&actor, id).await? {
        UserView::Full(profile) => axum::Json(UserBody::from(profile)).into_response(),
        UserView::Public(profile) => axum::Json(PublicUserBody::from(profile)).into_response(),
    })
}

/// Changes a user's role. Admins only; audited.
#[utoipa::path(
    patch, path = "/users/{id}", tag = "users", request_body = RoleBody,
    params(("id" = String, Path, description = "User id (decimal string)")),
    responses(
        (status = 200, description = "The user with the new role", body = UserBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn change_role(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RoleBody>,
) -> Result<axum::Json<UserBody>, ApiError> {
    let id: UserId = id.parse().map_err(|e| ApiError::param("id", e))?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: String| ApiError::InvalidField {
            field: "role".into(),
            detail: e,
        })?;
    Ok(axum::Json(
        state.accounts.set_role(&actor, id, role).await?.into(),
    ))
}

/// The signed-in seller's API keys (without secrets).
#[utoipa::path(
    get, path = "/api-keys", tag = "api-keys",
    responses(
        (status = 200, description = "Your keys, revoked ones included: a seller has few, so one page (`next_cursor` is always null)", body = inline(Page<ApiKeyBody>)),
        (status = 400, description = "A query parameter was given; this route takes none", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a seller", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_api_keys(
    State(state): State<AppState>,
    Acting(actor): Acting,
    _: NoQuery,
) -> Result<axum::Json<Page<ApiKeyBody>>, ApiError> {
    Ok(axum::Json(Page {
        items: state
            .api_keys
            .list(&actor)
            .await?
            .into_iter()
            .map(ApiKeyBody::from)
            .collect(),
        next_cursor: None,
    }))
}

/// Creates an API key; the response is the only time its secret is shown.
#[utoipa::path(
    post, path = "/api-keys", tag = "api-keys", request_body = NewKeyBody,
    responses(
        (status = 201, description = "The key and its secret", body = NewApiKeyBody),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a seller", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_api_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    JsonBody(body): JsonBody<NewKeyBody>,
) -> Result<Response, ApiError> {
    let (key, secret) = state.api_keys.create(&actor, &body.name).await?;
    let mut response = (
        StatusCode::CREATED,
        axum::Json(NewApiKeyBody {
            key: key.into(),
            secret,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Revokes one of the signed-in seller's API keys.
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "Key id (decimal string)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a seller", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "You have no such active key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    Acting(actor): Acting,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: ApiKeyId = id.parse().map_err(|e| ApiError::param("id", e))?;
    state.api_keys.revoke(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /audit-events` parameters, for OpenAPI; they are read by [`QueryParams`].
#[derive(Debug, utoipa::IntoParams)]
#[allow(
    dead_code,
    reason = "a documentation type: only its derived OpenAPI parameters are used"
)]
pub struct AuditQuery {
    /// How many of the newest events, 1–500 (default 50).
    limit: Option<usize>,
}

/// The newest security events. Admins only.
#[utoipa::path(
    get, path = "/audit-events", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "Newest first; the newest `limit` only, so `next_cursor` is always null", body = inline(Page<AuditEventBody>)),
        (status = 400, description = "A parameter is invalid, repeated or unknown; `param` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn audit_events(
    State(state): State<AppState>,
    Acting(actor): Acting,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Page<AuditEventBody>>, ApiError> {
    let query = QueryParams::parse(query.as_deref().unwrap_or(""), &["limit"])?;
    let limit = query.limit(50, 500)?;
    let events = state.accounts.audit().recent_for(&actor, limit).await?;
    Ok(axum::Json(Page {
        items: events.into_iter().map(AuditEventBody::from).collect(),
        next_cursor: None,
    }))
}
