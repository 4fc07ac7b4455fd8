//! The HTTP adapter (axum): health, metrics, and the REST routes. Handlers only parse and validate, then
//! send the engine the same commands MQTT sends, or read the same state.

pub mod predictions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::broker::count_tcp_sockets;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub db_path: PathBuf,
    pub mqtt_listeners: Vec<(&'static str, SocketAddr)>,
    pub hub_id: String,
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
        (
            self.status,
            Json(json!({"status": "error", "message": self.message})),
        )
            .into_response()
    }
}

/// Every route of the hub.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(predictions::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
