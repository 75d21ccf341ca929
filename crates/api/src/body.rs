//! `JsonBody<T>`: axum's JSON extractor with its rejections turned into problem documents
//! that name what was wrong — 415 for another media type, 400 for broken JSON, 422 naming
//! the field for well-formed JSON of the wrong shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType {
                expected: "application/json",
            }),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::MalformedBody(e.body_text())),
            Err(JsonRejection::JsonDataError(e)) => {
                let text = e.body_text();
                // serde_path_to_error phrases it "<path>: <reason>"; the path is the field.
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                let field = detail
                    .split_once(": ")
                    .map(|(path, _)| path)
                    .filter(|p| !p.contains(' '))
                    .unwrap_or("body");
                let field = if field == "." { "body" } else { field };
                let missing = detail
                    .split("missing field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next());
                Err(ApiError::InvalidField {
                    field: missing.unwrap_or(field).to_owned(),
                    detail: detail.to_owned(),
                })
            }
            Err(other) if other.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(other) => Err(ApiError::MalformedBody(other.body_text())),
        }
    }
}
