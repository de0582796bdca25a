//! The query API, as an axum [`Router`] to merge into the admin API, behind the same admin
//! token.
//!
//! | Method | Path            | Answer |
//! |--------|-----------------|--------|
//! | `GET`  | `/audit`        | `{"entries":[…],"next_cursor":N\|null}`, newest first |
//! | `GET`  | `/audit/export` | the same entries as JSON lines (`application/x-ndjson`), streamed, newest first |
//!
//! Both take `device`, `user` (any case), `since`, `until` (RFC 3339, inclusive), `limit` and
//! `cursor` (the `next_cursor` of the page before: entries older than it). `/audit` answers at
//! most `limit` entries (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]: a larger one is
//! lowered); `/audit/export` streams every match unless a `limit` is given. An unknown or
//! malformed parameter is a `400` naming it; a missing or wrong token a `401`, exactly as for
//! the rest of the admin API (the check is [`AdminState::protect`]'s).
//!
//! ```
//! use audit_trail::entry::{Event, Record};
//! use audit_trail::store::Store;
//! use axum::body::Body;
//! use compliance_policy::admin::AdminState;
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::Compliance;
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(&dir.path().join("audit.redb")).unwrap();
//! store.append("seg-1", vec![Record::now(Event::GatewayStopped)]).unwrap();
//! let admin = AdminState::new(Compliance::new(PolicySettings::default()), |_: &[u8]| {
//!     Err("no events".to_string())
//! })
//! .with_admin_token("an-admin-token-of-16+");
//! let app = audit_trail::api::router(store, &admin);
//!
//! let request = Request::get("/audit?limit=10").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!
//! let request = Request::get("/audit?limit=10")
//!     .header("authorization", "Bearer an-admin-token-of-16+")
//!     .body(Body::empty())
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(page["entries"][0]["kind"], "gateway-stopped");
//! assert_eq!(page["next_cursor"], serde_json::Value::Null);
//! # }
//! ```

use crate::AuditError;
#[cfg(doc)]
use crate::store::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::store::{Page, Query, Store};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use compliance_policy::admin::AdminState;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use std::convert::Infallible;
use tokio::sync::mpsc;

/// Entries read from the store per step of an export.
const EXPORT_PAGE: usize = 500;

/// The query API over `store`, every route behind `admin`'s token check; see the
/// [module docs](self).
pub fn router(store: Store, admin: &AdminState) -> Router {
    let routes = Router::new()
        .route("/audit", get(list))
        .route("/audit/export", get(export))
        .with_state(store);
    admin.protect(routes)
}

/// An error answer: `{"error": message}`, as the rest of the admin API answers.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn internal(error: &AuditError) -> Self {
        tracing::error!(error = %crate::error_chain(error), "reading the audit trail failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "reading the audit trail failed".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// The query string as a [`Query`], strictly: an unknown or malformed parameter is refused.
/// `limit` stays 0 when not given.
fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut query = Query::default();
    let time = |key: &str, value: &str| {
        humantime::parse_rfc3339_weak(value).map_err(|error| {
            ApiError::bad_request(format!(
                "{key} must be an RFC 3339 time such as 2026-01-31T12:00:00Z: {error}"
            ))
        })
    };
    let number = |key: &str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer")))
    };
    let name = |key: &str, value: &str| {
        let value = value.trim();
        if value.is_empty() || value.len() > 512 || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "{key} must be 1 to 512 characters without control characters"
            )));
        }
        Ok(value.to_owned())
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "device" => query.device = Some(name("device", &value)?),
            "user" => query.user = Some(name("user", &value)?),
            "since" => query.since = Some(time("since", &value)?),
            "until" => query.until = Some(time("until", &value)?),
            "limit" => {
                let limit = number("limit", &value)?;
                if limit == 0 {
                    return Err(ApiError::bad_request("limit must be at least 1"));
                }
                query.limit = usize::try_from(limit).unwrap_or(usize::MAX);
            }
            "cursor" => query.cursor = Some(number("cursor", &value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`"
                )));
            }
        }
    }
    Ok(query)
}

async fn read(store: Store, query: Query) -> Result<Page, ApiError> {
    tokio::task::spawn_blocking(move || store.query(&query))
        .await
        .map_err(|error| ApiError::internal(&AuditError::Task(error.to_string())))?
        .map_err(|error| ApiError::internal(&error))
}

async fn list(State(store): State<Store>, RawQuery(raw): RawQuery) -> Result<Json<Page>, ApiError> {
    let query = parse_query(raw.as_deref())?;
    Ok(Json(read(store, query).await?))
}

async fn export(State(store): State<Store>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let mut query = parse_query(raw.as_deref())?;
    let mut remaining = match query.limit {
        0 => usize::MAX,
        limit => limit,
    };
    // Fail before the status is sent if the store cannot be read at all.
    query.limit = remaining.min(EXPORT_PAGE);
    let first = read(store.clone(), query.clone()).await?;
    let (lines, receiver) = mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let mut page = first;
        loop {
            let mut chunk = Vec::with_capacity(page.entries.len() * 256);
            for entry in &page.entries {
                // An entry always serializes: it was read from its JSON.
                if serde_json::to_writer(&mut chunk, entry).is_ok() {
                    chunk.push(b'\n');
                }
            }
            remaining = remaining.saturating_sub(page.entries.len());
            if lines.blocking_send(Bytes::from(chunk)).is_err() {
                return; // the client went away
            }
            let Some(cursor) = page.next_cursor.filter(|_| remaining > 0) else {
                return;
            };
            query.cursor = Some(cursor);
            query.limit = remaining.min(EXPORT_PAGE);
            page = match store.query(&query) {
                Ok(page) => page,
                Err(error) => {
                    // The status is sent: all that is left is to end the stream short.
                    tracing::error!(error = %crate::error_chain(&error), "audit export cut short");
                    return;
                }
            };
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, Infallible>(chunk), receiver))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_parsed_strictly() {
        let query = parse_query(Some(
            "device=easdev1&user=Alice%40test.local&since=2026-01-01T00:00:00Z&limit=5&cursor=9",
        ))
        .unwrap();
        assert_eq!(query.device.as_deref(), Some("easdev1"));
        assert_eq!(query.user.as_deref(), Some("Alice@test.local"));
        assert!(query.since.is_some() && query.until.is_none());
        assert_eq!((query.limit, query.cursor), (5, Some(9)));
        assert!(parse_query(Some("limit=0")).is_err());
        assert!(parse_query(Some("since=yesterday")).is_err());
        assert!(parse_query(Some("cursor=-1")).is_err());
        assert!(parse_query(Some("order=asc")).is_err());
        assert!(parse_query(Some("device=")).is_err());
        assert_eq!(parse_query(None).unwrap(), Query::default());
    }
}
