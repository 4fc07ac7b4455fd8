//! The versioned JSON API for new clients (`/api/v1`). Routes are registered through utoipa-axum, so
//! the OpenAPI document served at `/api/v1/openapi.json` is generated from the same code and cannot drift.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{command_error, stream, ApiError, AppState};
use crate::home::{Command, HomeState, LightAction, Mode, Origin};
use crate::readings::ReadingKind;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "smarthub API",
        description = "The versioned JSON API of smarthub. State-changing routes need `Authorization: Bearer <token>` when an API token is configured.",
    ),
    tags((name = "state", description = "The home's state and commands"),
         (name = "data", description = "Stored readings and sensor nodes"),
         (name = "live", description = "Live event stream"))
)]
struct ApiDoc;

/// The `/api/v1` routes and the OpenAPI document describing them.
pub fn routes() -> (Router<AppState>, Arc<utoipa::openapi::OpenApi>) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_state))
        .routes(routes!(set_light))
        .routes(routes!(set_door))
        .routes(routes!(set_tv))
        .routes(routes!(set_fan))
        .routes(routes!(set_mode))
        .routes(routes!(get_readings))
        .routes(routes!(get_nodes))
        .routes(routes!(super::nodes::forget))
        .routes(routes!(super::predictions::train))
        .routes(routes!(stream::stream))
        .routes(routes!(openapi_json))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let doc = Arc::new(doc);
    // The document is the same for every hub in the process: built from the code, once.
    let _ = OPENAPI.set(doc.clone());
    (router, doc)
}

static OPENAPI: OnceLock<Arc<utoipa::openapi::OpenApi>> = OnceLock::new();

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "data",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    match OPENAPI.get() {
        Some(doc) => Json(doc.as_ref()).into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API document is not built yet",
        )
        .into_response(),
    }
}

/// The TV's state.
#[derive(Serialize, ToSchema)]
pub struct TvView {
    pub channel: u32,
    pub name: String,
}

/// The room climate.
#[derive(Serialize, ToSchema)]
pub struct ClimateView {
    pub temperature: f64,
    pub humidity: f64,
}

/// The whole home.
#[derive(Serialize, ToSchema)]
pub struct StateView {
    /// The light is on.
    pub light: bool,
    /// The door is open.
    pub door_open: bool,
    pub tv: TvView,
    pub fan_level: u8,
    /// `smart`, `assisted` or `user`.
    pub mode: String,
    pub climate: ClimateView,
}

impl From<HomeState> for StateView {
    fn from(s: HomeState) -> Self {
        StateView {
            light: s.light,
            door_open: s.door_open,
            tv: TvView {
                channel: s.tv_channel,
                name: s.tv_name,
            },
            fan_level: s.fan_level,
            mode: s.mode.as_str().to_owned(),
            climate: ClimateView {
                temperature: s.temperature,
                humidity: s.humidity,
            },
        }
    }
}

/// An error: `{"status": "error", "message": "<field>: <why>"}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub status: String,
    pub message: String,
}

/// The current state of the home.
#[utoipa::path(get, path = "/api/v1/state", tag = "state",
    responses((status = 200, body = StateView)))]
async fn get_state(State(app): State<AppState>) -> Json<StateView> {
    Json(app.engine.state().into())
}

async fn apply(app: &AppState, command: Command) -> Result<Json<StateView>, ApiError> {
    let state = app
        .engine
        .command(command, Origin::Rest)
        .await
        .map_err(command_error)?;
    Ok(Json(state.into()))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde's messages name the field ("missing field `state`"); keep them, prefix with "body".
        ApiError::new(StatusCode::BAD_REQUEST, format!("body: {msg}"))
    })
}

/// `{"state": "ON" | "OFF" | "TOGGLE"}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LightRequest {
    pub state: String,
}

/// Switch the light.
#[utoipa::path(post, path = "/api/v1/light", tag = "state", request_body = LightRequest,
    responses((status = 200, body = StateView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn set_light(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<StateView>, ApiError> {
    let req: LightRequest = parse_body(&body)?;
    let action = match req.state.to_ascii_uppercase().as_str() {
        "ON" => LightAction::On,
        "OFF" => LightAction::Off,
        "TOGGLE" => LightAction::Toggle,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "state: expected ON, OFF or TOGGLE",
            ))
        }
    };
    apply(&app, Command::Light(action)).await
}

/// `{"state": "OPEN", "pin_code": "1234"}` or `{"state": "CLOSE"}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoorRequest {
    pub state: String,
    pub pin_code: Option<String>,
}

/// Open (with the PIN) or close the door.
#[utoipa::path(post, path = "/api/v1/door", tag = "state", request_body = DoorRequest,
    responses((status = 200, body = StateView), (status = 400, body = ErrorBody),
              (status = 403, description = "wrong PIN", body = ErrorBody),
              (status = 429, description = "locked out after too many wrong PINs", body = ErrorBody)))]
async fn set_door(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<StateView>, ApiError> {
    let req: DoorRequest = parse_body(&body)?;
    let command = match req.state.to_ascii_uppercase().as_str() {
        "CLOSE" => Command::DoorClose,
        "OPEN" => match req.pin_code {
            Some(pin) => Command::DoorOpen { pin },
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "pin_code: required to open the door",
                ))
            }
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "state: expected OPEN or CLOSE",
            ))
        }
    };
    apply(&app, command).await
}

/// `{"channel": 3, "name": "spacetoon"}` (`channel` 0 switches the TV off; `name` optional)
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TvRequest {
    pub channel: i64,
    pub name: Option<String>,
}

/// Set the TV channel.
#[utoipa::path(post, path = "/api/v1/tv", tag = "state", request_body = TvRequest,
    responses((status = 200, body = StateView), (status = 400, body = ErrorBody)))]
async fn set_tv(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<StateView>, ApiError> {
    let req: TvRequest = parse_body(&body)?;
    let max = crate::home::MAX_CHANNEL;
    if !(0..=i64::from(max)).contains(&req.channel) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("channel: must be 0..={max}, got {}", req.channel),
        ));
    }
    if req
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > crate::home::MAX_CHANNEL_NAME)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("name: at most {} characters", crate::home::MAX_CHANNEL_NAME),
        ));
    }
    apply(
        &app,
        Command::Tv {
            channel: req.channel as u32,
            name: req.name,
        },
    )
    .await
}

/// `{"level": 2}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FanRequest {
    pub level: i64,
}

/// Set the fan level (0..=max_fan_level).
#[utoipa::path(post, path = "/api/v1/fan", tag = "state", request_body = FanRequest,
    responses((status = 200, body = StateView), (status = 400, body = ErrorBody)))]
async fn set_fan(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<StateView>, ApiError> {
    let req: FanRequest = parse_body(&body)?;
    let max = app.max_fan_level;
    if !(0..=i64::from(max)).contains(&req.level) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("level: must be 0..={max}, got {}", req.level),
        ));
    }
    apply(&app, Command::Fan(req.level as u8)).await
}

/// `{"mode": "smart" | "assisted" | "user"}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    pub mode: String,
}

/// Set the automation mode.
#[utoipa::path(post, path = "/api/v1/mode", tag = "state", request_body = ModeRequest,
    responses((status = 200, body = StateView), (status = 400, body = ErrorBody)))]
async fn set_mode(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<StateView>, ApiError> {
    let req: ModeRequest = parse_body(&body)?;
    let mode = Mode::parse(&req.mode).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "mode: expected smart, assisted or user",
        )
    })?;
    apply(&app, Command::Mode(mode)).await
}

/// Paging and filtering of stored readings.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// Only readings measured at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only readings measured before this time (RFC 3339).
    pub until: Option<String>,
    /// Rows per page, 1..=1000 (default 100).
    pub limit: Option<u32>,
    /// Cursor: only rows with a larger id (pass the previous page's `next_after_id`).
    pub after_id: Option<i64>,
}

/// One page of readings, ascending by id.
#[derive(Serialize, ToSchema)]
pub struct ReadingsPage {
    /// Each row's columns by name.
    #[schema(value_type = Vec<Object>)]
    pub readings: Vec<Map<String, Value>>,
    /// Pass as `after_id` for the next page; null on the last page.
    pub next_after_id: Option<i64>,
}

pub fn parse_time(field: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    match value {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{field}: not an RFC 3339 time ({e})"),
                )
            }),
    }
}

fn rfc3339(ms: i64) -> Value {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// Stored readings of one kind (`light`, `tv` or `climate`).
#[utoipa::path(get, path = "/api/v1/readings/{kind}", tag = "data",
    params(("kind" = String, Path, description = "light, tv or climate"), ReadingsQuery),
    responses((status = 200, body = ReadingsPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_readings(
    State(app): State<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<ReadingsQuery>,
) -> Result<Json<ReadingsPage>, ApiError> {
    let kind = ReadingKind::parse(&kind).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("kind: `{kind}` is not light, tv or climate"),
        )
    })?;
    let since = parse_time("since", &q.since)?.unwrap_or(i64::MIN);
    let until = parse_time("until", &q.until)?.unwrap_or(i64::MAX);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit: must be 1..=1000",
        ));
    }
    let after = q.after_id.unwrap_or(0);
    let db = app.db_path.clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Map<String, Value>>, crate::store::StoreError> {
        let conn = crate::store::open_reader(&db)?;
        let sql = format!(
            "SELECT * FROM {} WHERE id > ?1 AND measured_ms >= ?2 AND measured_ms < ?3 ORDER BY id LIMIT ?4",
            crate::store::table(kind)
        );
        let mut stmt = conn.prepare(&sql)?;
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let rows = stmt.query_map(rusqlite::params![after, since, until, limit], |row| {
            let mut map = Map::new();
            for (i, name) in names.iter().enumerate() {
                let v: SqlValue = row.get(i)?;
                let json = match (name.as_str(), v) {
                    ("measured_ms", SqlValue::Integer(ms)) => {
                        map.insert("measured_at".into(), rfc3339(ms));
                        Value::from(ms)
                    }
                    ("received_ms", SqlValue::Integer(ms)) => {
                        map.insert("received_at".into(), rfc3339(ms));
                        Value::from(ms)
                    }
                    ("motion" | "backdated" | "active", SqlValue::Integer(b)) => Value::Bool(b != 0),
                    (_, SqlValue::Integer(n)) => Value::from(n),
                    (_, SqlValue::Real(x)) => Value::from(x),
                    (_, SqlValue::Text(s)) => Value::String(s),
                    (_, SqlValue::Null) => Value::Null,
                    (_, SqlValue::Blob(_)) => Value::Null,
                };
                map.insert(name.clone(), json);
            }
            Ok(map)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")))?;
    let next_after_id = if rows.len() == limit as usize {
        rows.last()
            .and_then(|r| r.get("id"))
            .and_then(Value::as_i64)
    } else {
        None
    };
    Ok(Json(ReadingsPage {
        readings: rows,
        next_after_id,
    }))
}

/// A sensor node the hub has seen.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    /// Kinds of reading it sent (`light`, `tv`, `climate`).
    pub kinds: Vec<String>,
    pub first_seen: Value,
    pub last_seen: Value,
    /// Its last `online` / `offline` status, if it sent one.
    pub status: Option<String>,
    /// Readings accepted from it.
    pub messages: i64,
    /// Messages refused.
    pub rejections: i64,
}

/// Every node seen: kinds, last seen, status, message and rejection counts.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "data",
    responses((status = 200, body = Vec<NodeView>)))]
async fn get_nodes(State(app): State<AppState>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let db = app.db_path.clone();
    let nodes = tokio::task::spawn_blocking(move || -> Result<Vec<NodeView>, crate::store::StoreError> {
        let conn = crate::store::open_reader(&db)?;
        let mut stmt = conn.prepare(
            "SELECT node_id, kinds, first_seen_ms, last_seen_ms, status, messages, rejections FROM nodes ORDER BY node_id",
        )?;
        let rows = stmt.query_map([], |r| {
            let kinds: String = r.get(1)?;
            Ok(NodeView {
                node_id: r.get(0)?,
                kinds: kinds.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                first_seen: rfc3339(r.get(2)?),
                last_seen: rfc3339(r.get(3)?),
                status: r.get(4)?,
                messages: r.get(5)?,
                rejections: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")))?;
    Ok(Json(nodes))
}
