//! `DELETE /api/v1/nodes/{node_id}`: forget a sensor node. Its `nodes` row goes (its readings stay, they
//! are the household's history) and Home Assistant loses its device. A node that speaks again is
//! known again.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};
use crate::store;
use crate::topics::is_valid_node_id;

/// Forget a node: its `nodes` row and its Home Assistant device go; its readings stay.
#[utoipa::path(delete, path = "/api/v1/nodes/{node_id}", tag = "data",
    params(("node_id" = String, Path, description = "the node's id")),
    responses((status = 200, description = "forgotten"), (status = 400, body = super::api::ErrorBody),
              (status = 404, body = super::api::ErrorBody)))]
pub async fn forget(
    State(app): State<AppState>,
    Path(node_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !is_valid_node_id(&node_id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "node id: use 1 to 64 of a-z, 0-9, _ and -",
        ));
    }
    let db = app.db_path.clone();
    let id = node_id.clone();
    let known = tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&db)?;
        store::node_exists(&conn, &id)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no node `{node_id}`"),
        ));
    }
    app.engine
        .forget_node(&node_id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({
        "status": "success",
        "node_id": node_id,
        "message": "node forgotten; its readings are kept",
    })))
}
