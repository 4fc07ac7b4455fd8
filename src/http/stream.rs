//! `GET /api/v1/stream`: a WebSocket pushing every event the engine emits (state changes, accepted
//! readings, predictions) as JSON. Each client has a bounded buffer (the broadcast channel's); a client
//! that falls behind, or whose socket stops taking data, is dropped: it never slows the hub.

use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

/// How long one message may wait for a client's socket before the client is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Live events as JSON text messages, e.g. `{"type": "state", "thing": "light", "payload": "ON",
/// "origin": "rest"}` or `{"type": "reading", "reading": {...}}`.
#[utoipa::path(get, path = "/api/v1/stream", tag = "live",
    responses((status = 101, description = "WebSocket upgrade; then one JSON text message per event")))]
pub async fn stream(State(app): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Subscribe before the upgrade completes so nothing emitted in between is missed.
    let events = app.engine.subscribe();
    ws.on_upgrade(move |socket| forward(socket, events))
}

async fn forward(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<crate::engine::Event>,
) {
    loop {
        tokio::select! {
            event = events.recv() => {
                let event = match event {
                    Ok(e) => e,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "stream client too slow; dropping it");
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                                code: 1008,
                                reason: Utf8Bytes::from_static("too slow: events were missed"),
                            }))),
                        )
                        .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                let text = match serde_json::to_string(&event) {
                    Ok(t) => t,
                    Err(_) => continue,
                };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            incoming = socket.recv() => match incoming {
                // Clients only listen; pings are answered by axum, a close or error ends the stream.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
