//! The HTTP adapter (axum): health, metrics, the legacy routes the mobile app uses ([`legacy`]), the
//! versioned JSON API ([`api`]) and its live stream ([`stream`]). Handlers only parse and validate, then
//! send the engine the same commands MQTT sends, or read the same state.

pub mod api;
pub mod exports;
pub mod legacy;
mod nodes;
pub mod predictions;
pub mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::broker::count_tcp_sockets;
use crate::engine::EngineHandle;
use crate::home::CommandError;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub db_path: PathBuf,
    pub mqtt_listeners: Vec<(&'static str, SocketAddr)>,
    pub hub_id: String,
    pub max_fan_level: u8,
    /// When set, state-changing routes need `Authorization: Bearer <token>`.
    pub api_token: Option<Arc<String>>,
    pub learner: Arc<crate::learning::runtime::Learner>,
}

impl AppState {
    fn mqtt_clients(&self) -> Option<u64> {
        let ports: Vec<u16> = self.mqtt_listeners.iter().map(|(_, a)| a.port()).collect();
        count_tcp_sockets("01", &ports)
    }
}

/// An error answered as JSON `{"status": "error", "message": ...}`.
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"status": "error", "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The one mapping of command refusals to HTTP statuses.
pub fn command_error(e: CommandError) -> ApiError {
    match e {
        CommandError::Invalid { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        // The legacy app matches this exact body.
        CommandError::PinInvalid => ApiError::new(StatusCode::FORBIDDEN, "PINCODE INVALID"),
        CommandError::LockedOut { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        CommandError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Legacy GET routes that change state (the old README's dialect toggles with GET).
const STATE_CHANGING_GETS: &[&str] = &[
    "/switch_",
    "/set_temperature/",
    "/insert/",
    "/insert_tv/",
    "/insert_wether/",
    "/answer_predict/",
    "/set_notification_read/",
];

fn changes_state(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        return true;
    }
    STATE_CHANGING_GETS.iter().any(|p| path.starts_with(p))
}

/// Bearer-token check of state-changing routes, when a token is configured.
async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.api_token {
        if changes_state(request.method(), request.uri().path()) {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| {
                g.len() == token.len()
                    && g.bytes()
                        .zip(token.bytes())
                        .fold(0u8, |a, (x, y)| a | (x ^ y))
                        == 0
            });
            if !ok {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authorization: this route needs `Authorization: Bearer <token>`",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Every route of the hub.
pub fn router(state: AppState) -> Router {
    let (api, _doc) = api::routes();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(legacy::routes())
        .merge(api)
        .merge(exports::routes())
        .merge(predictions::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn healthz(State(app): State<AppState>) -> Json<serde_json::Value> {
    let m = &app.metrics;
    let degraded = m.db_degraded.load(Relaxed);
    let listeners: Vec<_> = app
        .mqtt_listeners
        .iter()
        .map(|(proto, addr)| json!({"protocol": proto, "listen": addr.to_string()}))
        .collect();
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "hub_id": app.hub_id,
        "broker": {
            "listeners": listeners,
            "clients_connected": app.mqtt_clients(),
            "messages_received": m.messages_received.load(Relaxed),
            "messages_lost": m.messages_lost.load(Relaxed),
        },
        "database": {
            "path": app.db_path.display().to_string(),
            "status": if degraded { "degraded" } else { "ok" },
            "write_failures": m.db_write_failures.load(Relaxed),
            "retry_pending": m.db_retry_pending.load(Relaxed),
            "dropped": m.readings_dropped.load(Relaxed),
        },
        "uptime_s": m.uptime_s(),
    }))
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(app.mqtt_clients()),
    )
}
