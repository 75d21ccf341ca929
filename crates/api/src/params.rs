//! Path and query parameters, parsed the same way on every route.
//!
//! [`Path<T>`] is axum's path extractor with its rejections turned into
//! `/problems/invalid-parameter` naming the segment (a percent-encoding that decodes to
//! invalid UTF-8 would otherwise be a bare 400). [`QueryParams`] is the one reading of a query
//! string: every parameter at most once, and only those the route knows — so a typo such as
//! `?limt=5` is refused instead of silently ignored.

use std::collections::BTreeMap;

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// Path parameters of type `T` (a `String`, or a tuple of them), used instead of
/// `axum::extract::Path` so a malformed segment is a problem document naming it.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

fn path_problem(rejection: PathRejection) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        // The route declares no parameters for a handler that wants some: our bug.
        return ApiError::Internal(rejection.body_text().into());
    };
    let detail = failed.body_text();
    match failed.into_kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => ApiError::param(
            key,
            "the segment's percent-encoding does not decode to UTF-8 text",
        ),
        ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
            ApiError::param(key, detail)
        }
        _ => ApiError::param("path", detail),
    }
}

/// A query string read once: each parameter given at most once and known to the route.
#[derive(Debug, Default)]
pub struct QueryParams {
    values: BTreeMap<String, String>,
}

impl QueryParams {
    /// Decodes `raw` (the query string without `?`), refusing a malformed string, a parameter
    /// given twice (which of two limits would the client mean?) and any name not in `known`.
    pub fn parse(raw: &str, known: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| ApiError::param("query", format!("malformed query string: {e}")))?;
        let mut values = BTreeMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::param(name, unknown(known)));
            }
            if values.contains_key(&name) {
                return Err(ApiError::param(name, "given more than once"));
            }
            values.insert(name, value);
        }
        Ok(Self { values })
    }

    /// The value of `name`, if it was given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The page size `limit`: 1 to `max`, `default` when not given.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::param("limit", format!("expected 1 to {max}, found `{raw}`"))
                }),
        }
    }

    /// The parameters given, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn unknown(known: &[&str]) -> String {
    match known {
        [] => "unknown parameter; this route takes no query parameters".to_owned(),
        [one] => format!("unknown parameter; expected {one}"),
        [init @ .., last] => format!("unknown parameter; expected {} or {last}", init.join(", ")),
    }
}

/// The query string of a route that takes no parameters, refused if it carries any.
#[derive(Debug)]
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        QueryParams::parse(raw.as_deref().unwrap_or(""), &[])?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str, known: &[&str]) -> (String, String) {
        match QueryParams::parse(raw, known) {
            Err(ApiError::InvalidParam { param, detail }) => (param, detail),
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn repeated_unknown_and_malformed_parameters_are_named() {
        assert_eq!(
            refused("limit=1&limit=2", &["limit"]),
            ("limit".into(), "given more than once".into())
        );
        assert_eq!(
            refused("foo=bar", &["scope", "cursor", "limit"]),
            (
                "foo".into(),
                "unknown parameter; expected scope, cursor or limit".into()
            )
        );
        assert_eq!(refused("x=1", &[]).0, "x");
        let ok = QueryParams::parse("limit=5&scope=all", &["scope", "limit"]).unwrap();
        assert_eq!(ok.get("limit"), Some("5"));
        assert_eq!(ok.get("cursor"), None);
        // An empty query string and a bare `?` are no parameters at all.
        assert!(QueryParams::parse("", &[]).is_ok());
    }
}
