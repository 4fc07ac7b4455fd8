//! The legacy backend's REST routes, in both dialects the old app and firmware use (see the legacy
//! contract): each handler parses and validates, then sends the engine the same command an MQTT `/set`
//! sends, or reads the same state. Every route answers with and without its trailing slash.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{command_error, ApiError, AppState};
use crate::home::{
    channel_name, Command, LightAction, Mode, Origin, MAX_CHANNEL, MAX_CHANNEL_NAME,
};
use crate::readings::{parse_reading, ReadingKind, Source};

/// Node id given to readings logged over the legacy HTTP routes.
pub const HTTP_NODE_ID: &str = "http";

/// Registers `path` with and without its trailing slash.
pub fn both(
    router: Router<AppState>,
    path: &str,
    methods: MethodRouter<AppState>,
) -> Router<AppState> {
    let bare = path.trim_end_matches('/');
    router
        .route(bare, methods.clone())
        .route(&format!("{bare}/"), methods)
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    r = both(r, "/switch_light", get(toggle_light).post(set_light));
    r = both(r, "/switch_door", get(toggle_door).post(set_door));
    r = both(r, "/switch_mode", get(cycle_mode).post(set_mode));
    r = both(r, "/switch_tv_channel", get(next_channel).post(set_channel));
    r = both(
        r,
        "/switch_fan_level",
        get(next_fan_level).post(set_fan_level),
    );
    r = both(r, "/get_light_state", get(light_state));
    r = both(r, "/get_door_state", get(door_state));
    r = both(r, "/get_tv_state", get(tv_state));
    r = both(r, "/get_tv_state_name", get(tv_state_name));
    r = both(r, "/get_fan_level", get(fan_level));
    r = both(r, "/get_temperature", get(temperature));
    r = both(r, "/get_mode_state", get(mode_state));
    r = both(
        r,
        "/set_temperature/{temperature}/{humidity}",
        get(set_temperature).post(set_temperature),
    );
    r = both(
        r,
        "/insert/{temperature}/{motion}/{light_intensity}/{active}",
        get(insert_light).post(insert_light),
    );
    r = both(
        r,
        "/insert_tv/{motion}/{channel}",
        get(insert_tv).post(insert_tv),
    );
    r = both(
        r,
        "/insert_wether/{room_temperature}/{room_humidity}/{motion}/{fan_level}",
        get(insert_climate).post(insert_climate),
    );
    r = both(r, "/get_weather_json", get(weather));
    r
}

fn success(message: &str) -> Json<Value> {
    Json(json!({"status": "success", "message": message}))
}

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {why}"))
}

/// The request body as a JSON object: JSON, or an HTML form (both reach Django's `request.data`).
fn body_object(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        return Ok(form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("body", "expected a JSON object"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("body", "expected a JSON object")),
        Err(e) => Err(bad("body", format!("malformed JSON ({e})"))),
    }
}

/// A boolean as the old firmware and app write them: true/false, 1/0, True/False, Yes/No, on/off.
pub fn parse_bool_word(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn bool_field(obj: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(bad(field, "missing")),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            Ok(n.as_i64() == Some(1))
        }
        Some(Value::String(s)) => {
            parse_bool_word(s).ok_or_else(|| bad(field, "expected true or false"))
        }
        Some(_) => Err(bad(field, "expected true or false")),
    }
}

/// An integer sent as a JSON number or a numeric string (the app sends the channel as "3").
fn int_field(obj: &Map<String, Value>, field: &str, max: i64) -> Result<i64, ApiError> {
    let n = match obj.get(field) {
        None | Some(Value::Null) => return Err(bad(field, "missing")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad(field, "expected a whole number"))?,
        Some(Value::String(s)) => parse_int(s).map_err(|why| bad(field, why))?,
        Some(_) => return Err(bad(field, "expected a whole number")),
    };
    if !(0..=max).contains(&n) {
        return Err(bad(field, format!("must be 0..={max}, got {n}")));
    }
    Ok(n)
}

fn parse_int(s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| format!("`{}` is not a whole number", truncate(s)))
}

/// A finite float from a path segment (`nan` and `inf` are refused).
fn parse_float(field: &str, s: &str) -> Result<f64, ApiError> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(bad(
            field,
            format!("`{}` is not a finite number", truncate(s)),
        )),
        Err(_) => Err(bad(field, format!("`{}` is not a number", truncate(s)))),
    }
}

fn parse_bool_path(field: &str, s: &str) -> Result<bool, ApiError> {
    parse_bool_word(s).ok_or_else(|| {
        bad(
            field,
            format!("`{}` is not one of 1/0, true/false, yes/no", truncate(s)),
        )
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

async fn run(app: &AppState, command: Command) -> Result<crate::home::HomeState, ApiError> {
    app.engine
        .command(command, Origin::Rest)
        .await
        .map_err(command_error)
}

async fn toggle_light(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    run(&app, Command::Light(LightAction::Toggle)).await?;
    Ok(success("Light switched successfully"))
}

async fn set_light(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let obj = body_object(&headers, &body)?;
    let on = bool_field(&obj, "iss")?;
    run(
        &app,
        Command::Light(if on {
            LightAction::On
        } else {
            LightAction::Off
        }),
    )
    .await?;
    Ok(success("Light switched successfully"))
}

#[derive(serde::Deserialize)]
struct PinQuery {
    pin_code: Option<String>,
}

async fn toggle_door(
    State(app): State<AppState>,
    Query(q): Query<PinQuery>,
) -> Result<Json<Value>, ApiError> {
    let command = if app.engine.state().door_open {
        Command::DoorClose
    } else {
        match q.pin_code {
            Some(pin) => Command::DoorOpen { pin },
            None => {
                return Err(bad(
                    "pin_code",
                    "required to open the door (?pin_code=....)",
                ))
            }
        }
    };
    run(&app, command).await?;
    Ok(success("Door switched successfully"))
}

async fn set_door(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let obj = body_object(&headers, &body)?;
    let pin = match obj.get("pin_code") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bad("pin_code", "expected a string")),
    };
    let command = if pin.as_deref() == Some("close") || !bool_field(&obj, "state")? {
        Command::DoorClose
    } else {
        match pin {
            Some(pin) => Command::DoorOpen { pin },
            None => return Err(bad("pin_code", "required to open the door")),
        }
    };
    run(&app, command).await?;
    Ok(success("Door switched successfully"))
}

async fn cycle_mode(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    run(&app, Command::ModeNext).await?;
    Ok(success("Mode switched successfully"))
}

async fn set_mode(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let obj = body_object(&headers, &body)?;
    let mode = match obj.get("mode_name") {
        None | Some(Value::Null) => return Err(bad("mode_name", "missing")),
        Some(Value::String(s)) => Mode::parse(s).ok_or_else(|| {
            bad(
                "mode_name",
                format!(
                    "`{}`: expected Smart Mode, Assisted Mode or User Mode",
                    truncate(s)
                ),
            )
        })?,
        Some(_) => return Err(bad("mode_name", "expected a string")),
    };
    run(&app, Command::Mode(mode)).await?;
    Ok(success("Mode switched successfully"))
}

async fn next_channel(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    run(&app, Command::TvNext).await?;
    Ok(success("TV channel switched successfully"))
}

async fn set_channel(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let obj = body_object(&headers, &body)?;
    let channel = int_field(&obj, "channel", MAX_CHANNEL as i64)? as u32;
    let name = match obj.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_CHANNEL_NAME => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(bad(
                "name",
                format!("at most {MAX_CHANNEL_NAME} characters"),
            ))
        }
        Some(_) => return Err(bad("name", "expected a string")),
    };
    run(&app, Command::Tv { channel, name }).await?;
    Ok(success("TV channel switched successfully"))
}

async fn next_fan_level(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    run(&app, Command::FanNext).await?;
    Ok(success("Fan level switched successfully"))
}

async fn set_fan_level(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let obj = body_object(&headers, &body)?;
    let level = int_field(&obj, "fanLevel", i64::from(app.max_fan_level))? as u8;
    run(&app, Command::Fan(level)).await?;
    Ok(success("Fan level switched successfully"))
}

async fn light_state(State(app): State<AppState>) -> Json<bool> {
    Json(app.engine.state().light)
}

async fn door_state(State(app): State<AppState>) -> Json<bool> {
    Json(app.engine.state().door_open)
}

async fn tv_state(State(app): State<AppState>) -> Json<u32> {
    Json(app.engine.state().tv_channel)
}

async fn tv_state_name(State(app): State<AppState>) -> Response {
    let state = app.engine.state();
    let name = if state.tv_channel == 0 {
        String::new()
    } else if state.tv_name.is_empty() {
        channel_name(state.tv_channel).to_owned()
    } else {
        state.tv_name
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], name).into_response()
}

async fn fan_level(State(app): State<AppState>) -> Json<u8> {
    Json(app.engine.state().fan_level)
}

async fn temperature(State(app): State<AppState>) -> Json<Value> {
    let s = app.engine.state();
    Json(json!({"temp": s.temperature, "humidity": s.humidity}))
}

async fn mode_state(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"name": app.engine.state().mode.legacy_name()}))
}

fn text(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn set_temperature(
    State(app): State<AppState>,
    Path((temperature, humidity)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let temperature = parse_float("temperature", &temperature)?;
    let humidity = parse_float("humidity", &humidity)?;
    run(
        &app,
        Command::Climate {
            temperature,
            humidity,
        },
    )
    .await?;
    Ok(text("Data inserted successfully!"))
}

/// Runs a legacy reading through the same parser and engine path as an MQTT reading.
async fn insert(app: &AppState, kind: ReadingKind, payload: Value) -> Result<(), ApiError> {
    let parsed = parse_reading(kind, payload.to_string().as_bytes())
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.message))?;
    app.engine
        .reading(HTTP_NODE_ID, parsed, Source::Http)
        .await
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.message))
}

async fn insert_light(
    State(app): State<AppState>,
    Path((temperature, motion, intensity, active)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let payload = json!({
        "temperature": parse_float("temperature", &temperature)?,
        "motion": parse_bool_path("motion_detection", &motion)?,
        "light_intensity": parse_float("light_intensity", &intensity)?,
        "active": parse_bool_path("active", &active)?,
    });
    insert(&app, ReadingKind::Light, payload).await?;
    Ok(text("Data inserted successfully!"))
}

async fn insert_tv(
    State(app): State<AppState>,
    Path((motion, channel)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let channel = parse_int(&channel).map_err(|why| bad("channelOn", why))?;
    if !(0..=MAX_CHANNEL as i64).contains(&channel) {
        return Err(bad(
            "channelOn",
            format!("must be 0..={MAX_CHANNEL}, got {channel}"),
        ));
    }
    let payload = json!({
        "motion": parse_bool_path("motionDetection", &motion)?,
        "channel": channel,
    });
    insert(&app, ReadingKind::Tv, payload).await?;
    Ok(text("Data TV inserted successfully!"))
}

async fn insert_climate(
    State(app): State<AppState>,
    Path((temperature, humidity, motion, fan)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let fan = parse_int(&fan).map_err(|why| bad("fanLevel", why))?;
    let max = i64::from(crate::readings::MAX_FAN_LABEL);
    if !(0..=max).contains(&fan) {
        return Err(bad("fanLevel", format!("must be 0..={max}, got {fan}")));
    }
    let payload = json!({
        "temperature": parse_float("room_temperature", &temperature)?,
        "humidity": parse_float("room_humidity", &humidity)?,
        "motion": parse_bool_path("motionDetection", &motion)?,
        "fan_level": fan,
    });
    insert(&app, ReadingKind::Climate, payload).await?;
    Ok(text("Data wether inserted successfully!"))
}

/// The old code passed OpenWeatherMap through with a key committed in its source; smarthub has no
/// weather provider configured, so it says so instead of calling anyone.
async fn weather() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no weather provider is configured; outside weather is left empty",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_words() {
        for (w, v) in [
            ("Yes", true),
            ("no", false),
            ("TRUE", true),
            ("0", false),
            ("1", true),
        ] {
            assert_eq!(parse_bool_word(w), Some(v), "{w}");
        }
        assert_eq!(parse_bool_word("maybe"), None);
    }

    #[test]
    fn floats_refuse_nan_and_inf() {
        assert!(parse_float("t", "nan").is_err());
        assert!(parse_float("t", "inf").is_err());
        assert!(parse_float("t", "-Infinity").is_err());
        assert_eq!(parse_float("t", "23.5").ok(), Some(23.5));
    }
}
