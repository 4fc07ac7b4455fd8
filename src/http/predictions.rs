//! REST routes of learning: the legacy prediction routes (read-only: no mode side effects), the legacy
//! notification routes for Assisted-mode suggestions, and `POST /api/v1/train`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::home::Origin;
use crate::learning::runtime::command_for;
use crate::learning::{suggestions, Target};

/// Every learning route, with and without the trailing slash.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for (path, target) in [
        ("/prediction_light", Target::Light),
        ("/prediction_tv", Target::Tv),
        ("/prediction_fan", Target::Fan),
    ] {
        let handler = move |State(app): State<AppState>| prediction(app, target);
        r = r
            .route(path, get(handler))
            .route(&format!("{path}/"), get(handler));
    }
    r.route(
        "/get_annoucement_notification/{user_id}",
        get(notifications),
    )
    .route(
        "/get_annoucement_notification/{user_id}/",
        get(notifications),
    )
    .route("/answer_predict/{id}/{answer}", get(answer))
    .route("/answer_predict/{id}/{answer}/", get(answer))
    .route("/set_notification_read/{id}", get(set_read))
    .route("/set_notification_read/{id}/", get(set_read))
}

/// A prediction from the latest readings, in every key style the legacy app and README use.
async fn prediction(app: AppState, target: Target) -> Result<Json<Value>, ApiError> {
    let inputs = app.learner.current_inputs(target);
    let p = app
        .learner
        .predict_async(target, inputs)
        .await
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why))?;
    let mut body = p.payload();
    let obj = body.as_object_mut().expect("a JSON object");
    for (class, prob) in &p.classes {
        obj.insert(format!("probability_class{class}"), json!(prob));
    }
    if target == Target::Fan {
        obj.insert("predicted_class".into(), json!(p.prediction));
        obj.insert("execution_time".into(), json!(p.seconds));
    } else {
        obj.insert("Predicted class".into(), json!(p.prediction));
        obj.insert("execution Time".into(), json!(p.seconds));
    }
    Ok(Json(body))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::learning::LearningError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The household's suggestions, newest first (one household: `user_id` is accepted and ignored).
async fn notifications(
    State(app): State<AppState>,
    Path(_user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = app.db_path.clone();
    let list = blocking(move || {
        let conn = crate::store::open_migrated(&db)?;
        suggestions::list(&conn, 100)
    })
    .await?;
    Ok(Json(Value::Array(
        list.iter().map(|s| s.legacy_notification()).collect(),
    )))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("id: `{id}` is not a suggestion id"),
        )
    })
}

/// `true` applies the suggestion (the user's decision, so it counts as a manual change); either
/// answer marks it read.
async fn answer(
    State(app): State<AppState>,
    Path((id, answer)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let accept = match answer.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => true,
        "false" | "0" | "no" => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("answer: `{answer}` is not true or false"),
            ))
        }
    };
    let db = app.db_path.clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let before = blocking(move || suggestions::mark(&db, id, Some(accept), now_ms))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no suggestion {id}")))?;
    if let Some(previous) = before.answer {
        return Ok(Json(json!({
            "status": "success",
            "message": format!("suggestion {id} was already answered ({previous})"),
        })));
    }
    if accept {
        let cmd = command_for(before.target, before.prediction).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "the suggestion cannot be applied")
        })?;
        app.engine
            .command(cmd, Origin::Rest)
            .await
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("not applied: {e}")))?;
    }
    Ok(Json(json!({
        "status": "success",
        "message": if accept { "Suggestion applied" } else { "Suggestion rejected" },
    })))
}

async fn set_read(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let db = app.db_path.clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    blocking(move || suggestions::mark(&db, id, None, now_ms))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no suggestion {id}")))?;
    Ok(Json(
        json!({"status": "success", "message": "Notification marked as read"}),
    ))
}

/// Starts a retrain of every target in the background (one at a time).
#[utoipa::path(post, path = "/api/v1/train", tag = "state",
    responses((status = 202, description = "retrain started (or queued behind the running one)"),
              (status = 401, body = super::api::ErrorBody)))]
pub async fn train(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let running = app.learner.is_retraining();
    let learner = app.learner.clone();
    tokio::spawn(async move { learner.retrain_all().await });
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "success",
            "message": if running {
                "a retrain is running; another will follow it"
            } else {
                "retrain started"
            },
        })),
    )
}
