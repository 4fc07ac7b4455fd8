//! Sensor readings: the firmware contract's payloads, their validation, and the time features derived
//! from each reading's timestamp.

use chrono::{DateTime, Datelike, Local, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// The three kinds of reading a node can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadingKind {
    Light,
    Tv,
    Climate,
}

impl ReadingKind {
    pub const ALL: [ReadingKind; 3] = [ReadingKind::Light, ReadingKind::Tv, ReadingKind::Climate];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadingKind::Light => "light",
            ReadingKind::Tv => "tv",
            ReadingKind::Climate => "climate",
        }
    }

    pub fn parse(s: &str) -> Option<ReadingKind> {
        ReadingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why a message was refused (the `reason` label of `smarthub_messages_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Malformed,
    InvalidField,
    OutOfRange,
    UnknownTopic,
    BadNodeId,
    FutureTs,
    Unauthorized,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Malformed,
        Reason::InvalidField,
        Reason::OutOfRange,
        Reason::UnknownTopic,
        Reason::BadNodeId,
        Reason::FutureTs,
        Reason::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InvalidField => "invalid_field",
            Reason::OutOfRange => "out_of_range",
            Reason::UnknownTopic => "unknown_topic",
            Reason::BadNodeId => "bad_node_id",
            Reason::FutureTs => "future_ts",
            Reason::Unauthorized => "unauthorized",
        }
    }
}

/// A refused message: the reason code and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Mqtt,
    Http,
    Import,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mqtt => "mqtt",
            Source::Http => "http",
            Source::Import => "import",
        }
    }
}

/// Where a reading's label came from. Training can leave out `Auto` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// The node reported it.
    Node,
    /// The hub filled it from the home state, last set by a person.
    State,
    /// The hub filled it from the home state, last set by the hub's own automation.
    Auto,
}

impl LabelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Node => "node",
            LabelSource::State => "state",
            LabelSource::Auto => "auto",
        }
    }
}

/// Outside weather, when a provider is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct OutsideWeather {
    pub temperature: Option<f64>,
    pub humidity: Option<f64>,
    pub luminosity: Option<f64>,
    pub description: Option<String>,
}

/// The measured values of a reading; labels are `None` when the node did not send one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Measurement {
    Light {
        temperature: f64,
        motion: bool,
        light_intensity: f64,
        active: Option<bool>,
    },
    Tv {
        motion: bool,
        channel: Option<u32>,
    },
    Climate {
        temperature: f64,
        humidity: f64,
        motion: bool,
        fan_level: Option<u8>,
    },
}

impl Measurement {
    pub fn kind(&self) -> ReadingKind {
        match self {
            Measurement::Light { .. } => ReadingKind::Light,
            Measurement::Tv { .. } => ReadingKind::Tv,
            Measurement::Climate { .. } => ReadingKind::Climate,
        }
    }

    pub fn has_label(&self) -> bool {
        match self {
            Measurement::Light { active, .. } => active.is_some(),
            Measurement::Tv { channel, .. } => channel.is_some(),
            Measurement::Climate { fan_level, .. } => fan_level.is_some(),
        }
    }
}

/// Local-time features derived from a reading's timestamp (local = the system time zone).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimeFeatures {
    /// Seconds since local midnight.
    pub time_of_day_s: f64,
    /// ISO day of week, 1 = Monday.
    pub day_of_week: u8,
    /// 1..=12
    pub month: u8,
}

impl TimeFeatures {
    pub fn from_ms(ms: i64) -> TimeFeatures {
        let local = Local.timestamp_millis_opt(ms).single().unwrap_or_else(|| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap_or_default()
                .with_timezone(&Local)
        });
        TimeFeatures {
            time_of_day_s: local.num_seconds_from_midnight() as f64
                + local.timestamp_subsec_micros() as f64 / 1e6,
            day_of_week: local.weekday().number_from_monday() as u8,
            month: local.month() as u8,
        }
    }
}

/// One accepted reading, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub node_id: String,
    pub measurement: Measurement,
    /// When the reading was taken (its `ts`, else when it arrived), unix ms.
    pub measured_ms: i64,
    /// When the hub received it, unix ms.
    pub received_ms: i64,
    pub time: TimeFeatures,
    /// Carried an earlier `ts`: stored, but triggers nothing else.
    pub backdated: bool,
    pub source: Source,
    pub label_source: Option<LabelSource>,
    pub outside: Option<OutsideWeather>,
}

/// A parsed payload before it is stamped with its arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReading {
    pub measurement: Measurement,
    /// The node's own timestamp, unix seconds.
    pub ts: Option<i64>,
}

/// Back-dated means older than this before arrival: a node's clock and the network add some jitter.
const BACKDATED_AFTER_MS: i64 = 60_000;

impl ParsedReading {
    /// Stamps the reading with its arrival time; refuses a `ts` too far in the future.
    pub fn stamp(
        self,
        node_id: &str,
        received_ms: i64,
        max_future_skew_s: u64,
        source: Source,
    ) -> Result<Reading, Rejection> {
        let measured_ms = match self.ts {
            Some(ts) => {
                let ms = ts.saturating_mul(1000);
                if ms > received_ms + (max_future_skew_s as i64) * 1000 {
                    return Err(Rejection::new(
                        Reason::FutureTs,
                        format!("ts: {ts} is more than {max_future_skew_s} s in the future"),
                    ));
                }
                ms
            }
            None => received_ms,
        };
        let backdated = received_ms - measured_ms > BACKDATED_AFTER_MS;
        let label_source = self.measurement.has_label().then_some(LabelSource::Node);
        Ok(Reading {
            node_id: node_id.to_owned(),
            time: TimeFeatures::from_ms(measured_ms),
            measurement: self.measurement,
            measured_ms,
            received_ms,
            backdated,
            source,
            label_source,
            outside: None,
        })
    }
}

type Object = serde_json::Map<String, serde_json::Value>;

fn field_f64(obj: &Object, name: &str, range: (f64, f64), unit: &str) -> Result<f64, Rejection> {
    let v = obj
        .get(name)
        .ok_or_else(|| Rejection::new(Reason::InvalidField, format!("{name}: missing")))?;
    let x = v.as_f64().ok_or_else(|| {
        Rejection::new(Reason::InvalidField, format!("{name}: expected a number"))
    })?;
    check_f64(name, x, range, unit)
}

fn field_bool(obj: &Object, name: &str) -> Result<bool, Rejection> {
    obj.get(name)
        .ok_or_else(|| Rejection::new(Reason::InvalidField, format!("{name}: missing")))?
        .as_bool()
        .ok_or_else(|| {
            Rejection::new(
                Reason::InvalidField,
                format!("{name}: expected true or false"),
            )
        })
}

fn optional_int(obj: &Object, name: &str, max: i64) -> Result<Option<i64>, Rejection> {
    match obj.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Rejection::new(Reason::InvalidField, format!("{name}: expected an integer"))
            })?;
            check_int(name, Some(n), max)
        }
    }
}

/// Parses a node's status payload: exactly `online` or `offline`.
pub fn parse_status(payload: &[u8]) -> Result<bool, Rejection> {
    match payload {
        b"online" => Ok(true),
        b"offline" => Ok(false),
        _ => Err(Rejection::new(
            Reason::InvalidField,
            "status: expected online or offline",
        )),
    }
}

/// Highest fan level a reading may carry (old data holds 4 and 6).
pub const MAX_FAN_LABEL: u8 = 10;

/// The payloads the firmware contract allows, parsed straight into typed fields: the common case costs
/// no `serde_json::Value`. Anything these refuse (bad JSON, unknown or duplicate fields, wrong types)
/// goes through [`parse_reading_slow`], whose refusals name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LightPayload {
    temperature: f64,
    motion: bool,
    light_intensity: f64,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    ts: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TvPayload {
    motion: bool,
    #[serde(default)]
    channel: Option<i64>,
    #[serde(default)]
    ts: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClimatePayload {
    temperature: f64,
    humidity: f64,
    motion: bool,
    #[serde(default)]
    fan_level: Option<i64>,
    #[serde(default)]
    ts: Option<i64>,
}

fn check_f64(name: &str, x: f64, range: (f64, f64), unit: &str) -> Result<f64, Rejection> {
    if !(range.0..=range.1).contains(&x) {
        let max = if range.1.is_finite() {
            format!("{}", range.1)
        } else {
            "∞".into()
        };
        return Err(Rejection::new(
            Reason::OutOfRange,
            format!("{name}: {x} is outside {}..={max}{unit}", range.0),
        ));
    }
    Ok(x)
}

fn check_int(name: &str, n: Option<i64>, max: i64) -> Result<Option<i64>, Rejection> {
    match n {
        Some(n) if !(0..=max).contains(&n) => Err(Rejection::new(
            Reason::OutOfRange,
            format!("{name}: {n} is outside 0..={max}"),
        )),
        _ => Ok(n),
    }
}

const TEMPERATURE: (f64, f64) = (-50.0, 100.0);
const HUMIDITY: (f64, f64) = (0.0, 100.0);
const LIGHT_INTENSITY: (f64, f64) = (0.0, f64::INFINITY);
const MAX_TS_S: i64 = i64::MAX / 1000;

/// Parses and validates a node's reading payload (the firmware contract).
pub fn parse_reading(kind: ReadingKind, payload: &[u8]) -> Result<ParsedReading, Rejection> {
    // serde's derived structs also accept a JSON array (fields by position): only objects go fast.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return parse_reading_slow(kind, payload);
    }
    let fast = match kind {
        ReadingKind::Light => serde_json::from_slice::<LightPayload>(payload)
            .ok()
            .map(|p| {
                Ok(ParsedReading {
                    ts: check_int("ts", p.ts, MAX_TS_S)?,
                    measurement: Measurement::Light {
                        temperature: check_f64("temperature", p.temperature, TEMPERATURE, " °C")?,
                        motion: p.motion,
                        light_intensity: check_f64(
                            "light_intensity",
                            p.light_intensity,
                            LIGHT_INTENSITY,
                            " lx",
                        )?,
                        active: p.active,
                    },
                })
            }),
        ReadingKind::Tv => serde_json::from_slice::<TvPayload>(payload).ok().map(|p| {
            Ok(ParsedReading {
                ts: check_int("ts", p.ts, MAX_TS_S)?,
                measurement: Measurement::Tv {
                    motion: p.motion,
                    channel: check_int("channel", p.channel, crate::home::MAX_CHANNEL as i64)?
                        .map(|c| c as u32),
                },
            })
        }),
        ReadingKind::Climate => serde_json::from_slice::<ClimatePayload>(payload)
            .ok()
            .map(|p| {
                Ok(ParsedReading {
                    ts: check_int("ts", p.ts, MAX_TS_S)?,
                    measurement: Measurement::Climate {
                        temperature: check_f64("temperature", p.temperature, TEMPERATURE, " °C")?,
                        humidity: check_f64("humidity", p.humidity, HUMIDITY, " %")?,
                        motion: p.motion,
                        fan_level: check_int("fan_level", p.fan_level, MAX_FAN_LABEL as i64)?
                            .map(|f| f as u8),
                    },
                })
            }),
    };
    match fast {
        Some(result) => result,
        None => parse_reading_slow(kind, payload),
    }
}

/// The reference parser: through a `serde_json::Value`, so that every refusal names its field.
fn parse_reading_slow(kind: ReadingKind, payload: &[u8]) -> Result<ParsedReading, Rejection> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(Reason::Malformed, format!("payload is not valid JSON: {e}"))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| Rejection::new(Reason::Malformed, "payload must be a JSON object"))?;
    let allowed: &[&str] = match kind {
        ReadingKind::Light => &["temperature", "motion", "light_intensity", "active", "ts"],
        ReadingKind::Tv => &["motion", "channel", "ts"],
        ReadingKind::Climate => &["temperature", "humidity", "motion", "fan_level", "ts"],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Rejection::new(
            Reason::InvalidField,
            format!("{k}: unknown field (expected {})", allowed.join(", ")),
        ));
    }
    let ts = optional_int(obj, "ts", MAX_TS_S)?;
    let measurement = match kind {
        ReadingKind::Light => Measurement::Light {
            temperature: field_f64(obj, "temperature", TEMPERATURE, " °C")?,
            motion: field_bool(obj, "motion")?,
            light_intensity: field_f64(obj, "light_intensity", LIGHT_INTENSITY, " lx")?,
            active: match obj.get("active") {
                None | Some(serde_json::Value::Null) => None,
                Some(_) => Some(field_bool(obj, "active")?),
            },
        },
        ReadingKind::Tv => Measurement::Tv {
            motion: field_bool(obj, "motion")?,
            channel: optional_int(obj, "channel", crate::home::MAX_CHANNEL as i64)?
                .map(|c| c as u32),
        },
        ReadingKind::Climate => Measurement::Climate {
            temperature: field_f64(obj, "temperature", TEMPERATURE, " °C")?,
            humidity: field_f64(obj, "humidity", HUMIDITY, " %")?,
            motion: field_bool(obj, "motion")?,
            fan_level: optional_int(obj, "fan_level", MAX_FAN_LABEL as i64)?.map(|f| f as u8),
        },
    };
    Ok(ParsedReading { measurement, ts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_reading() {
        let r = parse_reading(
            ReadingKind::Light,
            br#"{"temperature": 23.4, "motion": true, "light_intensity": 300.0, "active": true}"#,
        )
        .unwrap();
        assert_eq!(
            r.measurement,
            Measurement::Light {
                temperature: 23.4,
                motion: true,
                light_intensity: 300.0,
                active: Some(true)
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: &[(ReadingKind, &[u8], Reason, &str)] = &[
            (ReadingKind::Light, b"{", Reason::Malformed, "JSON"),
            (ReadingKind::Light, b"[1]", Reason::Malformed, "object"),
            (
                ReadingKind::Light,
                br#"{"motion":true,"light_intensity":1}"#,
                Reason::InvalidField,
                "temperature",
            ),
            (
                ReadingKind::Light,
                br#"{"temperature":"hot","motion":true,"light_intensity":1}"#,
                Reason::InvalidField,
                "temperature",
            ),
            (
                ReadingKind::Light,
                br#"{"temperature":101,"motion":true,"light_intensity":1}"#,
                Reason::OutOfRange,
                "temperature",
            ),
            (
                ReadingKind::Light,
                br#"{"temperature":20,"motion":true,"light_intensity":-1}"#,
                Reason::OutOfRange,
                "light_intensity",
            ),
            (
                ReadingKind::Tv,
                br#"{"motion":true,"channel":-1}"#,
                Reason::OutOfRange,
                "channel",
            ),
            (
                ReadingKind::Climate,
                br#"{"temperature":20,"humidity":101,"motion":true}"#,
                Reason::OutOfRange,
                "humidity",
            ),
            (
                ReadingKind::Climate,
                br#"{"temperature":20,"humidity":50,"motion":true,"fan_level":11}"#,
                Reason::OutOfRange,
                "fan_level",
            ),
            (
                ReadingKind::Tv,
                br#"{"motion":true,"colour":1}"#,
                Reason::InvalidField,
                "colour",
            ),
        ];
        for (kind, payload, reason, field) in cases {
            let err = parse_reading(*kind, payload).unwrap_err();
            assert_eq!(err.reason, *reason, "{}", String::from_utf8_lossy(payload));
            assert!(err.message.contains(field), "{}", err.message);
        }
    }

    /// The typed fast path must accept and refuse exactly what the reference parser does.
    #[test]
    fn fast_path_agrees_with_the_reference_parser() {
        let payloads: &[&str] = &[
            r#"{"temperature": 23.4, "motion": true, "light_intensity": 300.0, "active": true}"#,
            r#"{"temperature": 23, "motion": false, "light_intensity": 0}"#,
            r#"{"temperature": 23, "motion": false, "light_intensity": 0, "active": null, "ts": null}"#,
            r#"{"temperature": 23, "motion": false, "light_intensity": 1e3, "ts": 1700000000}"#,
            r#"{"temperature": -50.1, "motion": false, "light_intensity": 1}"#,
            r#"{"temperature": 20, "motion": false, "light_intensity": -0.5}"#,
            r#"{"temperature": 20, "motion": 1, "light_intensity": 5}"#,
            r#"{"temperature": 20, "temperature": 21, "motion": true, "light_intensity": 5}"#,
            r#"{"temperature": 20, "motion": true, "light_intensity": 5, "ts": 1.5}"#,
            r#"{"temperature": 20, "motion": true, "light_intensity": 5, "ts": -1}"#,
            r#"{"temperature": 20, "motion": true, "light_intensity": 5, "ts": 18446744073709551615}"#,
            r#"{"temperature": 1e999, "motion": true, "light_intensity": 5}"#,
            r#"{"motion": true, "channel": 3}"#,
            r#"{"motion": true, "channel": null}"#,
            r#"{"motion": true, "channel": 99}"#,
            r#"{"motion": true, "channel": 2.0}"#,
            r#"{"motion": true, "channel": -1, "ts": -5}"#,
            r#"{"motion": true, "active": null}"#,
            r#"{"temperature": 21.5, "humidity": 40, "motion": false, "fan_level": 2}"#,
            r#"{"temperature": 21.5, "humidity": 100.5, "motion": false}"#,
            r#"{"temperature": 121.5, "humidity": 100.5, "motion": false, "fan_level": 11}"#,
            r#"{"temperature": 21.5, "humidity": 40, "motion": false, "fan_level": "2"}"#,
            r#"{"temperature": 21.5, "humidity": 40}"#,
            r#"{}"#,
            r#"[]"#,
            r#"[23.4, true, 300.0]"#,
            r#"[23.4, true, 300.0, true, 1700000000]"#,
            r#"[true]"#,
            r#"[true, 3, null]"#,
            r#"[21.5, 40, false]"#,
            "\u{c}{\"motion\": true}",
            r#"null"#,
            r#"{"temperature": 21.5"#,
            r#" {"motion": true} "#,
            r#"{"motion": true} x"#,
        ];
        for payload in payloads {
            for kind in ReadingKind::ALL {
                assert_eq!(
                    parse_reading(kind, payload.as_bytes()),
                    parse_reading_slow(kind, payload.as_bytes()),
                    "{kind:?} {payload}"
                );
            }
        }
    }

    #[test]
    fn future_ts_is_refused_and_old_ts_is_backdated() {
        let now = 1_700_000_000_000;
        let p = parse_reading(ReadingKind::Tv, br#"{"motion":true,"ts":1700000400}"#).unwrap();
        assert_eq!(
            p.stamp("n", now, 300, Source::Mqtt).unwrap_err().reason,
            Reason::FutureTs
        );
        let p = parse_reading(ReadingKind::Tv, br#"{"motion":true,"ts":1699990000}"#).unwrap();
        let r = p.stamp("n", now, 300, Source::Mqtt).unwrap();
        assert!(r.backdated);
        assert_eq!(r.measured_ms, 1_699_990_000_000);
    }
}
