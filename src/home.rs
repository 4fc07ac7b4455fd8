//! The home's state (light, door, TV, fan, mode, room climate), the commands that change it, and the
//! text forms those take on MQTT. REST, MQTT and Home Assistant all produce the same [`Command`].

use serde::Serialize;

use crate::readings::{Reason, Rejection};

/// A thing of the home whose state the hub keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Thing {
    Light,
    Door,
    Tv,
    Fan,
    Mode,
    Climate,
}

impl Thing {
    pub const ALL: [Thing; 6] = [
        Thing::Light,
        Thing::Door,
        Thing::Tv,
        Thing::Fan,
        Thing::Mode,
        Thing::Climate,
    ];
    /// Things with a `/set` topic.
    pub const COMMANDABLE: [Thing; 5] = [
        Thing::Light,
        Thing::Door,
        Thing::Tv,
        Thing::Fan,
        Thing::Mode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Thing::Light => "light",
            Thing::Door => "door",
            Thing::Tv => "tv",
            Thing::Fan => "fan",
            Thing::Mode => "mode",
            Thing::Climate => "climate",
        }
    }

    pub fn parse(s: &str) -> Option<Thing> {
        Thing::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_commandable(self) -> bool {
        self != Thing::Climate
    }
}

/// The household's automation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Smart,
    Assisted,
    User,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Smart => "smart",
            Mode::Assisted => "assisted",
            Mode::User => "user",
        }
    }

    /// The name the legacy app shows (`Smart Mode`).
    pub fn legacy_name(self) -> &'static str {
        match self {
            Mode::Smart => "Smart Mode",
            Mode::Assisted => "Assisted Mode",
            Mode::User => "User Mode",
        }
    }

    /// `smart`, `Smart Mode`, `SMART` ... (case-insensitive, nothing else).
    pub fn parse(s: &str) -> Option<Mode> {
        let lower = s.to_ascii_lowercase();
        let word = lower.strip_suffix(" mode").unwrap_or(&lower);
        match word {
            "smart" => Some(Mode::Smart),
            "assisted" => Some(Mode::Assisted),
            "user" => Some(Mode::User),
            _ => None,
        }
    }

    /// The legacy `GET /switch_mode/` cycle: User → Smart → Assisted → User.
    pub fn next(self) -> Mode {
        match self {
            Mode::User => Mode::Smart,
            Mode::Smart => Mode::Assisted,
            Mode::Assisted => Mode::User,
        }
    }
}

/// Who asked for a change. Automatic changes are remembered so training can leave them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Rest,
    Mqtt,
    HomeAssistant,
    Auto,
    Node,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Rest => "rest",
            Origin::Mqtt => "mqtt",
            Origin::HomeAssistant => "homeassistant",
            Origin::Auto => "auto",
            Origin::Node => "node",
        }
    }
}

/// The TV channel names the legacy app knows.
pub fn channel_name(channel: u32) -> &'static str {
    match channel {
        1 => "MBC3",
        2 => "nickelodeon",
        3 => "spacetoon",
        4 => "boomerang",
        5 => "Cartoon Network",
        6 => "JEEM",
        _ => "",
    }
}

/// Longest TV channel name a client may set.
pub const MAX_CHANNEL_NAME: usize = 30;
/// Highest TV channel number accepted.
pub const MAX_CHANNEL: u32 = 999;

/// The whole state of the home.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HomeState {
    pub light: bool,
    pub door_open: bool,
    pub tv_channel: u32,
    pub tv_name: String,
    pub fan_level: u8,
    pub mode: Mode,
    pub temperature: f64,
    pub humidity: f64,
    /// Whether each thing's current value was set by the hub's own automation.
    #[serde(skip)]
    pub auto_set: [bool; 6],
}

impl Default for HomeState {
    fn default() -> Self {
        HomeState {
            light: false,
            door_open: false,
            tv_channel: 0,
            tv_name: String::new(),
            fan_level: 0,
            mode: Mode::User,
            temperature: 0.0,
            humidity: 0.0,
            auto_set: [false; 6],
        }
    }
}

#[derive(Serialize)]
struct TvPayload<'a> {
    channel: u32,
    name: &'a str,
}

#[derive(Serialize)]
struct ClimatePayload {
    humidity: f64,
    temperature: f64,
}

fn to_json(value: &impl Serialize) -> String {
    // Serialising plain numbers and strings into a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

impl HomeState {
    /// The retained MQTT payload of a thing's state topic (also what the database keeps).
    pub fn payload(&self, thing: Thing) -> String {
        match thing {
            Thing::Light => if self.light { "ON" } else { "OFF" }.into(),
            Thing::Door => if self.door_open { "OPEN" } else { "CLOSED" }.into(),
            // Typed rather than `json!`: the same bytes (keys in the order `json!`'s sorted map gives
            // them) without building a `serde_json::Value` for every climate reading.
            Thing::Tv => to_json(&TvPayload {
                channel: self.tv_channel,
                name: &self.tv_name,
            }),
            Thing::Fan => self.fan_level.to_string(),
            Thing::Mode => self.mode.as_str().into(),
            Thing::Climate => to_json(&ClimatePayload {
                humidity: self.humidity,
                temperature: self.temperature,
            }),
        }
    }

    /// Restores one thing from its stored payload; false when the payload is not understood.
    pub fn restore(&mut self, thing: Thing, payload: &str) -> bool {
        match thing {
            Thing::Light => match payload {
                "ON" => self.light = true,
                "OFF" => self.light = false,
                _ => return false,
            },
            Thing::Door => match payload {
                "OPEN" => self.door_open = true,
                "CLOSED" => self.door_open = false,
                _ => return false,
            },
            Thing::Tv => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
                    return false;
                };
                let (Some(ch), Some(name)) = (v["channel"].as_u64(), v["name"].as_str()) else {
                    return false;
                };
                self.tv_channel = ch.min(MAX_CHANNEL as u64) as u32;
                self.tv_name = name.chars().take(MAX_CHANNEL_NAME).collect();
            }
            Thing::Fan => match payload.parse::<u8>() {
                Ok(v) if v <= 10 => self.fan_level = v,
                _ => return false,
            },
            Thing::Mode => match Mode::parse(payload) {
                Some(m) => self.mode = m,
                None => return false,
            },
            Thing::Climate => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
                    return false;
                };
                let (Some(t), Some(h)) = (v["temperature"].as_f64(), v["humidity"].as_f64()) else {
                    return false;
                };
                self.temperature = t;
                self.humidity = h;
            }
        }
        true
    }

    pub fn is_auto(&self, thing: Thing) -> bool {
        self.auto_set[thing as usize]
    }
}

/// What to do with the light.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LightAction {
    On,
    Off,
    Toggle,
}

/// A change asked of the home. Every adapter (MQTT, REST, Home Assistant, automation) builds these.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Light(LightAction),
    /// Open needs the PIN; close never does.
    DoorOpen {
        pin: String,
    },
    DoorClose,
    Tv {
        channel: u32,
        name: Option<String>,
    },
    /// Next channel, wrapping to 0 after the last named one.
    TvNext,
    Fan(u8),
    /// Next level, wrapping to 0 after `max_fan_level`.
    FanNext,
    Mode(Mode),
    ModeNext,
    Climate {
        temperature: f64,
        humidity: f64,
    },
}

impl Command {
    pub fn thing(&self) -> Thing {
        match self {
            Command::Light(_) => Thing::Light,
            Command::DoorOpen { .. } | Command::DoorClose => Thing::Door,
            Command::Tv { .. } | Command::TvNext => Thing::Tv,
            Command::Fan(_) | Command::FanNext => Thing::Fan,
            Command::Mode(_) | Command::ModeNext => Thing::Mode,
            Command::Climate { .. } => Thing::Climate,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error("PINCODE INVALID")]
    PinInvalid,
    #[error("door: opening is locked for {retry_after_s} s after too many wrong PINs")]
    LockedOut { retry_after_s: u64 },
    #[error("the hub is shutting down")]
    Unavailable,
}

impl CommandError {
    pub fn invalid(field: &str, why: impl Into<String>) -> CommandError {
        CommandError::Invalid {
            field: field.into(),
            why: why.into(),
        }
    }

    /// The rejection reason counted for MQTT refusals.
    pub fn reason(&self) -> Reason {
        match self {
            CommandError::Invalid { .. } => Reason::OutOfRange,
            CommandError::PinInvalid | CommandError::LockedOut { .. } => Reason::Unauthorized,
            CommandError::Unavailable => Reason::Malformed,
        }
    }
}

/// Validates a temperature / humidity pair (physical ranges of the firmware contract).
pub fn check_climate(temperature: f64, humidity: f64) -> Result<(), CommandError> {
    if !temperature.is_finite() || !(-50.0..=100.0).contains(&temperature) {
        return Err(CommandError::invalid(
            "temperature",
            "must be a number from -50 to 100 (°C)",
        ));
    }
    if !humidity.is_finite() || !(0.0..=100.0).contains(&humidity) {
        return Err(CommandError::invalid(
            "humidity",
            "must be a number from 0 to 100 (%)",
        ));
    }
    Ok(())
}

/// Parses the payload of `<base>/<thing>/set` (the firmware contract's command forms).
pub fn parse_set_payload(
    thing: Thing,
    payload: &[u8],
    max_fan_level: u8,
) -> Result<Command, Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Rejection::new(Reason::Malformed, "payload is not UTF-8 text"))?;
    match thing {
        Thing::Light => match text.to_ascii_uppercase().as_str() {
            "ON" => Ok(Command::Light(LightAction::On)),
            "OFF" => Ok(Command::Light(LightAction::Off)),
            "TOGGLE" => Ok(Command::Light(LightAction::Toggle)),
            _ => Err(Rejection::new(
                Reason::Malformed,
                "light: expected ON, OFF or TOGGLE",
            )),
        },
        Thing::Door => parse_door(text),
        Thing::Tv => parse_tv(text),
        Thing::Fan => {
            let level: i64 = plain_integer(text).ok_or_else(|| {
                Rejection::new(
                    Reason::Malformed,
                    format!("fan: expected an integer level 0..={max_fan_level}"),
                )
            })?;
            if !(0..=max_fan_level as i64).contains(&level) {
                return Err(Rejection::new(
                    Reason::OutOfRange,
                    format!("fan: level {level} is outside 0..={max_fan_level}"),
                ));
            }
            Ok(Command::Fan(level as u8))
        }
        Thing::Mode => Mode::parse(text).map(Command::Mode).ok_or_else(|| {
            Rejection::new(Reason::Malformed, "mode: expected smart, assisted or user")
        }),
        Thing::Climate => Err(Rejection::new(
            Reason::UnknownTopic,
            "climate has no /set topic: nodes report it",
        )),
    }
}

fn parse_door(text: &str) -> Result<Command, Rejection> {
    if text.eq_ignore_ascii_case("CLOSE") {
        return Ok(Command::DoorClose);
    }
    if text.eq_ignore_ascii_case("OPEN") {
        return Err(Rejection::new(
            Reason::Unauthorized,
            "door: opening needs {\"state\": \"OPEN\", \"pin_code\": \"....\"}",
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            "door: expected CLOSE or a JSON object {\"state\": \"OPEN\"|\"CLOSE\", \"pin_code\": \"....\"}",
        )
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| Rejection::new(Reason::InvalidField, "door: expected a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| *k != "state" && *k != "pin_code") {
        return Err(Rejection::new(
            Reason::InvalidField,
            format!("{k}: unknown field"),
        ));
    }
    let state = obj
        .get("state")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Rejection::new(Reason::InvalidField, "state: missing or not a string"))?;
    if state.eq_ignore_ascii_case("CLOSE") {
        return Ok(Command::DoorClose);
    }
    if !state.eq_ignore_ascii_case("OPEN") {
        return Err(Rejection::new(
            Reason::InvalidField,
            "state: expected OPEN or CLOSE",
        ));
    }
    match obj.get("pin_code").and_then(|v| v.as_str()) {
        Some(pin) if pin.chars().count() == PIN_LEN => Ok(Command::DoorOpen {
            pin: pin.to_owned(),
        }),
        Some(_) => Err(Rejection::new(
            Reason::InvalidField,
            format!("pin_code: must be a string of {PIN_LEN} characters"),
        )),
        None => Err(Rejection::new(
            Reason::Unauthorized,
            "pin_code: required to open the door",
        )),
    }
}

fn parse_tv(text: &str) -> Result<Command, Rejection> {
    if text.eq_ignore_ascii_case("OFF") {
        return Ok(Command::Tv {
            channel: 0,
            name: None,
        });
    }
    if let Some(n) = plain_integer(text) {
        return tv_channel(n).map(|channel| Command::Tv {
            channel,
            name: None,
        });
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            "tv: expected OFF, a channel number or {\"channel\": 3, \"name\": \"spacetoon\"}",
        )
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| Rejection::new(Reason::InvalidField, "tv: expected a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| *k != "channel" && *k != "name") {
        return Err(Rejection::new(
            Reason::InvalidField,
            format!("{k}: unknown field"),
        ));
    }
    let channel = match obj.get("channel") {
        Some(v) => match v.as_i64() {
            Some(n) => tv_channel(n)?,
            None => {
                return Err(Rejection::new(
                    Reason::InvalidField,
                    "channel: expected an integer",
                ))
            }
        },
        None => return Err(Rejection::new(Reason::InvalidField, "channel: missing")),
    };
    let name = match obj.get("name") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_CHANNEL_NAME => {
            Some(s.clone())
        }
        Some(serde_json::Value::String(_)) => {
            return Err(Rejection::new(
                Reason::OutOfRange,
                format!("name: at most {MAX_CHANNEL_NAME} characters"),
            ))
        }
        Some(_) => {
            return Err(Rejection::new(
                Reason::InvalidField,
                "name: expected a string",
            ))
        }
    };
    Ok(Command::Tv { channel, name })
}

/// Length of the door PIN.
pub const PIN_LEN: usize = 4;

/// A decimal integer written plainly: optional `-`, no `+`, no leading zeros, at most 4 digits.
fn plain_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if plain {
        text.parse().ok()
    } else {
        None
    }
}

fn tv_channel(n: i64) -> Result<u32, Rejection> {
    if (0..=MAX_CHANNEL as i64).contains(&n) {
        Ok(n as u32)
    } else {
        Err(Rejection::new(
            Reason::OutOfRange,
            format!("channel: {n} is outside 0..={MAX_CHANNEL}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retained payloads are what Home Assistant, the app and the database already hold: the typed
    /// serialisation must give the bytes `json!` gave.
    #[test]
    fn payloads_match_the_json_macro() {
        for (t, h) in [(21.5, 40.0), (-3.25, 0.1), (0.0, 100.0), (f64::NAN, 1e-7)] {
            let s = HomeState {
                temperature: t,
                humidity: h,
                ..HomeState::default()
            };
            assert_eq!(
                s.payload(Thing::Climate),
                serde_json::json!({"temperature": t, "humidity": h}).to_string()
            );
        }
        for (channel, name) in [(0, ""), (3, "BBC \"One\" ü"), (6, "a\nb")] {
            let s = HomeState {
                tv_channel: channel,
                tv_name: name.into(),
                ..HomeState::default()
            };
            assert_eq!(
                s.payload(Thing::Tv),
                serde_json::json!({"channel": channel, "name": name}).to_string()
            );
        }
    }

    #[test]
    fn modes_parse_both_dialects() {
        assert_eq!(Mode::parse("Smart Mode"), Some(Mode::Smart));
        assert_eq!(Mode::parse("ASSISTED"), Some(Mode::Assisted));
        assert_eq!(Mode::parse("user"), Some(Mode::User));
        assert_eq!(Mode::parse("party"), None);
    }

    #[test]
    fn state_payloads_round_trip() {
        let mut s = HomeState {
            light: true,
            door_open: true,
            tv_channel: 3,
            tv_name: "spacetoon".into(),
            fan_level: 2,
            mode: Mode::Assisted,
            temperature: 23.5,
            humidity: 40.0,
            ..HomeState::default()
        };
        let mut back = HomeState::default();
        for t in Thing::ALL {
            assert!(back.restore(t, &s.payload(t)), "{t:?}");
        }
        s.auto_set = back.auto_set;
        assert_eq!(s, back);
    }

    #[test]
    fn set_payloads() {
        assert_eq!(
            parse_set_payload(Thing::Light, b"toggle", 3),
            Ok(Command::Light(LightAction::Toggle))
        );
        assert_eq!(parse_set_payload(Thing::Fan, b"3", 3), Ok(Command::Fan(3)));
        assert_eq!(
            parse_set_payload(Thing::Fan, b"4", 3).unwrap_err().reason,
            Reason::OutOfRange
        );
        assert_eq!(
            parse_set_payload(Thing::Tv, b"-1", 3).unwrap_err().reason,
            Reason::OutOfRange
        );
        assert_eq!(
            parse_set_payload(Thing::Tv, br#"{"channel":3,"name":"spacetoon"}"#, 3),
            Ok(Command::Tv {
                channel: 3,
                name: Some("spacetoon".into())
            })
        );
        assert_eq!(
            parse_set_payload(Thing::Door, br#"{"state":"OPEN","pin_code":"1234"}"#, 3),
            Ok(Command::DoorOpen { pin: "1234".into() })
        );
        assert_eq!(
            parse_set_payload(Thing::Door, b"OPEN", 3)
                .unwrap_err()
                .reason,
            Reason::Unauthorized
        );
    }
}
