//! The HTTP surface of mock-ens, as ENS2 has it: the registration API (requires the `ApiToken`
//! header), `GET /alive`, the push callback Exchange calls (`POST /push/{token}`), and the
//! gateway's block/unblock callback (`POST /gateway/compliance`).

use crate::auth::DeviceAuth;
use crate::runtime::Runtime;
use crate::store::{DeviceState, Mode, Notification, StoreError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// `POST /devices` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The EAS device id.
    pub device_id: String,
    /// The device's user.
    pub user: String,
    /// The mailbox to watch; the user's when absent.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// How to watch it.
    pub mode: Mode,
    /// The credentials: `{"basic":{"user","password"}}`, `{"oauth":{"token"}}` or
    /// `{"certificate":{"cert_pem","key_pem"}}` (a client certificate presented on the TLS
    /// connection to the gateway, with no `Authorization` header).
    pub auth: DeviceAuth,
}

/// One device as `GET /devices/{id}` shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    /// The EAS device id.
    pub device_id: String,
    /// The device's user.
    pub user: String,
    /// The mailbox watched.
    pub mailbox: String,
    /// How it is watched.
    pub mode: Mode,
    /// Where it stands.
    pub state: DeviceState,
    /// Why, when blocked or in error.
    pub reason: Option<String>,
    /// Since when it is in this state (RFC 3339, UTC, milliseconds).
    #[serde(default)]
    pub state_since: Option<String>,
    /// The EWS subscription watching the mailbox now, once subscribed since the last start.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// What ENS would have sent to the device, oldest first.
    pub notifications: Vec<Notification>,
}

/// One device in `GET /devices`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The EAS device id.
    pub device_id: String,
    /// The device's user.
    pub user: String,
    /// How it is watched.
    pub mode: Mode,
    /// Where it stands.
    pub state: DeviceState,
    /// Why, when blocked or in error.
    pub reason: Option<String>,
    /// Whether its watch holds an EWS subscription now (subscribed since the last start).
    #[serde(default)]
    pub subscribed: bool,
}

/// The gateway's callback body (see compliance-policy's `notify` module).
#[derive(Debug, Deserialize)]
pub struct ComplianceCallback {
    /// The EAS device id.
    pub device_id: String,
    /// The user, when the gateway knows it.
    #[serde(default)]
    pub user: Option<String>,
    /// `blocked` or `allowed`.
    pub state: String,
    /// The gateway's reason code.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The router of the whole surface over `runtime`, requiring `api_token` on the registration
/// API.
pub fn router(runtime: Runtime, api_token: String) -> axum::Router {
    let registration = axum::Router::new()
        .route("/devices", post(register).get(list))
        .route("/devices/{device_id}", get(show).delete(unregister))
        .route_layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(api_token),
            require_api_token,
        ));
    axum::Router::new()
        .merge(registration)
        .route("/alive", get(alive))
        .route("/push/{token}", post(push))
        .route("/gateway/compliance", post(compliance))
        .with_state(runtime)
}

async fn require_api_token(
    State(token): State<std::sync::Arc<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get("apitoken")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if bool::from(presented.ct_eq(token.as_bytes())) {
        next.run(request).await
    } else {
        tracing::warn!(path = %request.uri().path(), "registration API call without a valid ApiToken");
        problem(StatusCode::UNAUTHORIZED, "missing or wrong ApiToken header")
    }
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn store_failed(error: StoreError) -> Response {
    tracing::error!(%error, "store failed");
    problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn alive() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn register(State(runtime): State<Runtime>, body: axum::body::Bytes) -> Response {
    let mut json = serde_json::Deserializer::from_slice(&body);
    let registration: Registration = match serde_path_to_error::deserialize(&mut json) {
        Ok(registration) => registration,
        Err(error) => {
            // The path names the offending key (`mode`, `auth.basic.password`).
            return problem(
                StatusCode::BAD_REQUEST,
                format!("registration body: {}: {}", error.path(), error.inner()),
            );
        }
    };
    if !valid_device_id(&registration.device_id) {
        return problem(
            StatusCode::BAD_REQUEST,
            "device_id must be 1 to 64 letters, digits, '-' or '_'",
        );
    }
    if registration.user.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "user must not be empty");
    }
    if let Some(message) = registration.auth.problem() {
        return problem(StatusCode::BAD_REQUEST, message);
    }
    match runtime.register(registration).await {
        Ok((device, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(summary(&runtime, &device))).into_response()
        }
        Err(error) => store_failed(error),
    }
}

fn summary(runtime: &Runtime, device: &crate::store::StoredDevice) -> DeviceSummary {
    DeviceSummary {
        device_id: device.device_id.clone(),
        user: device.user.clone(),
        mode: device.mode,
        state: device.state,
        reason: device.reason.clone(),
        subscribed: runtime.subscription_id(&device.device_id).is_some(),
    }
}

async fn list(State(runtime): State<Runtime>) -> Response {
    match runtime.store().all().await {
        Ok(devices) => Json(
            devices
                .iter()
                .map(|device| summary(&runtime, device))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(error) => store_failed(error),
    }
}

async fn show(State(runtime): State<Runtime>, Path(device_id): Path<String>) -> Response {
    let device_id = device_id.to_ascii_uppercase();
    let device = match runtime.store().get(&device_id).await {
        Ok(Some(device)) => device,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such device"),
        Err(error) => return store_failed(error),
    };
    match runtime.store().notifications(&device_id).await {
        Ok(notifications) => Json(DeviceView {
            device_id: device.device_id,
            user: device.user,
            mailbox: device.mailbox,
            mode: device.mode,
            state: device.state,
            reason: device.reason,
            state_since: device.state_since,
            subscription_id: runtime.subscription_id(&device_id),
            notifications,
        })
        .into_response(),
        Err(error) => store_failed(error),
    }
}

async fn unregister(State(runtime): State<Runtime>, Path(device_id): Path<String>) -> Response {
    match runtime.unregister(&device_id.to_ascii_uppercase()).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "no such device"),
        Err(error) => store_failed(error),
    }
}

async fn compliance(State(runtime): State<Runtime>, body: axum::body::Bytes) -> Response {
    let callback: ComplianceCallback = match serde_json::from_slice(&body) {
        Ok(callback) => callback,
        Err(error) => {
            tracing::warn!(%error, "unreadable compliance callback");
            return problem(
                StatusCode::BAD_REQUEST,
                format!("compliance callback body: {error}"),
            );
        }
    };
    let device_id = callback.device_id.to_ascii_uppercase();
    let outcome = match callback.state.as_str() {
        "blocked" => {
            runtime
                .block(&device_id, callback.reason.as_deref().unwrap_or("blocked"))
                .await
        }
        "allowed" => runtime.allow(&device_id).await,
        other => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("state must be blocked or allowed, not {other:?}"),
            );
        }
    };
    match outcome {
        // A device ENS does not know is not an error for the gateway: nothing to stop.
        Ok(known) => {
            tracing::info!(device.id = %device_id, state = %callback.state, known, "gateway compliance callback");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => store_failed(error),
    }
}

async fn push(
    State(runtime): State<Runtime>,
    Path(token): Path<String>,
    request: axum::extract::Request,
) -> Response {
    runtime.push(&token, request).await
}
