//! Which entities exist: the hub's (light, door, fan, TV, mode, room climate, predictions) and, per
//! sensor node, those its reading kinds carry (motion, temperature, light intensity, humidity).

use std::net::SocketAddr;

use super::binary_sensor::{BinaryClass, BinarySensor};
use super::fan::Fan;
use super::light::Light;
use super::lock::Lock;
use super::select::Select;
use super::sensor::{Measure, Sensor};
use super::{Availability, AvailabilityMode, Device, Entity, EntityCategory, OriginInfo, Platform};
use crate::home::Thing;
use crate::readings::ReadingKind;
use crate::topics::Topics;

/// The prediction targets the learning part publishes on `<base>/prediction/<target>`, with the
/// name Home Assistant shows.
pub const PREDICTION_TARGETS: [(&str, &str); 3] =
    [("light", "Light"), ("tv", "TV"), ("fan", "Fan")];

/// Builds every entity config of one hub.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub hub_id: String,
    pub topics: Topics,
    /// The device's "Visit" link.
    pub hub_url: Option<String>,
    pub max_fan_level: u8,
    /// 0: predictions never expire.
    pub prediction_expire_after_s: u32,
}

/// A measurement a node's reading carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeValue {
    Motion,
    Temperature,
    Illuminance,
    Humidity,
}

impl NodeValue {
    fn key(self) -> &'static str {
        match self {
            NodeValue::Motion => "motion",
            NodeValue::Temperature => "temperature",
            NodeValue::Illuminance => "illuminance",
            NodeValue::Humidity => "humidity",
        }
    }

    fn name(self) -> &'static str {
        match self {
            NodeValue::Motion => "Motion",
            NodeValue::Temperature => "Temperature",
            NodeValue::Illuminance => "Light intensity",
            NodeValue::Humidity => "Humidity",
        }
    }

    /// The reading's JSON field.
    fn field(self) -> &'static str {
        match self {
            NodeValue::Motion => "motion",
            NodeValue::Temperature => "temperature",
            NodeValue::Illuminance => "light_intensity",
            NodeValue::Humidity => "humidity",
        }
    }

    /// What each kind of reading carries (the firmware contract's required fields).
    fn of(kind: ReadingKind) -> &'static [NodeValue] {
        match kind {
            ReadingKind::Light => &[
                NodeValue::Motion,
                NodeValue::Temperature,
                NodeValue::Illuminance,
            ],
            ReadingKind::Tv => &[NodeValue::Motion],
            ReadingKind::Climate => &[
                NodeValue::Motion,
                NodeValue::Temperature,
                NodeValue::Humidity,
            ],
        }
    }
}

/// An entity id part from a node id (Home Assistant's entity ids use `_`, not `-`).
fn slug(s: &str) -> String {
    s.replace('-', "_")
}

/// The URL of the hub's HTTP API: the configured one, else the listen address (the host name when it
/// listens on every address), else none.
pub fn hub_url(configured: &str, http: SocketAddr) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.trim_end_matches('/').to_owned());
    }
    if !http.ip().is_unspecified() {
        return Some(format!("http://{http}"));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let host = host.trim();
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    plain.then(|| format!("http://{host}:{}", http.port()))
}

impl Catalog {
    fn unique_id(&self, thing: &str) -> String {
        format!("smarthub_{}_{thing}", self.hub_id)
    }

    fn hub_identifier(&self) -> String {
        format!("smarthub_{}", self.hub_id)
    }

    fn hub_device(&self) -> Device {
        Device {
            identifiers: vec![self.hub_identifier()],
            name: "smarthub".into(),
            manufacturer: "smarthub",
            model: "smarthub hub",
            sw_version: Some(env!("CARGO_PKG_VERSION")),
            configuration_url: self.hub_url.clone(),
            via_device: None,
        }
    }

    fn node_device(&self, node_id: &str, kinds: &[ReadingKind]) -> Device {
        Device {
            identifiers: vec![format!("smarthub_{}_node_{node_id}", self.hub_id)],
            name: node_id.to_owned(),
            manufacturer: "smarthub",
            model: match kinds {
                [ReadingKind::Light] => "light sensor node",
                [ReadingKind::Tv] => "TV sensor node",
                [ReadingKind::Climate] => "climate sensor node",
                _ => "sensor node",
            },
            sw_version: None,
            configuration_url: None,
            via_device: Some(self.hub_identifier()),
        }
    }

    /// An entity of the hub device, available while the hub says `online`.
    fn hub_entity(&self, thing: &str, object: &str, name: &str, platform: Platform) -> Entity {
        let object_id = format!("smarthub_{object}");
        Entity {
            name: name.into(),
            unique_id: self.unique_id(thing),
            default_entity_id: format!("{}.{object_id}", platform.component().as_str()),
            object_id,
            platform,
            icon: None,
            entity_category: None,
            json_attributes_topic: None,
            json_attributes_template: None,
            availability: vec![Availability::online_offline(self.topics.status())],
            availability_mode: AvailabilityMode::All,
            device: self.hub_device(),
            origin: OriginInfo::smarthub(),
            node_id: None,
        }
    }

    /// Every entity of the hub device.
    pub fn hub_entities(&self) -> Vec<Entity> {
        let t = &self.topics;
        let mut out = vec![
            self.hub_entity(
                "light",
                "light",
                "Light",
                Platform::Light(Light::home_light(t)),
            ),
            self.hub_entity("door", "door", "Door", Platform::Lock(Lock::door(t))),
            self.hub_entity(
                "fan",
                "fan",
                "Fan",
                Platform::Fan(Fan::home_fan(t, self.max_fan_level)),
            ),
            Entity {
                icon: Some("mdi:television"),
                ..self.hub_entity(
                    "tv",
                    "tv_channel",
                    "TV channel",
                    Platform::Select(Select::tv(t)),
                )
            },
            Entity {
                icon: Some("mdi:home-automation"),
                ..self.hub_entity("mode", "mode", "Mode", Platform::Select(Select::mode(t)))
            },
            self.hub_entity(
                "temperature",
                "temperature",
                "Temperature",
                Platform::Sensor(Sensor::json_field(
                    t.state(Thing::Climate),
                    "temperature",
                    Measure::Temperature,
                )),
            ),
            self.hub_entity(
                "humidity",
                "humidity",
                "Humidity",
                Platform::Sensor(Sensor::json_field(
                    t.state(Thing::Climate),
                    "humidity",
                    Measure::Humidity,
                )),
            ),
        ];
        let expire_after =
            (self.prediction_expire_after_s > 0).then_some(self.prediction_expire_after_s);
        for (target, label) in PREDICTION_TARGETS {
            let topic = t.prediction(target);
            out.push(Entity {
                icon: Some("mdi:crystal-ball"),
                json_attributes_topic: Some(topic.clone()),
                json_attributes_template: Some(
                    concat!(
                        r#"{{ {"prediction": value_json.prediction, "#,
                        r#""probability": value_json.probabilities[value_json.prediction | string] | default(none), "#,
                        r#""model": value_json.model_used} | tojson }}"#
                    )
                    .into(),
                ),
                ..self.hub_entity(
                    &format!("prediction_{target}"),
                    &format!("{target}_prediction"),
                    &format!("{label} prediction"),
                    Platform::Sensor(Sensor {
                        state_topic: topic.clone(),
                        value_template: "{{ value_json.prediction }}".into(),
                        measure: Measure::Text,
                        suggested_display_precision: None,
                        expire_after,
                    }),
                )
            });
            out.push(Entity {
                icon: Some("mdi:brain"),
                entity_category: Some(EntityCategory::Diagnostic),
                ..self.hub_entity(
                    &format!("model_{target}"),
                    &format!("{target}_model_trained"),
                    &format!("{label} model trained"),
                    Platform::Sensor(Sensor {
                        state_topic: topic,
                        value_template: MODEL_TRAINED_TEMPLATE.into(),
                        measure: Measure::Timestamp,
                        suggested_display_precision: None,
                        expire_after: None,
                    }),
                )
            });
        }
        out
    }

    /// Every entity of a sensor node's device, for the reading kinds it has sent.
    pub fn node_entities(&self, node_id: &str, kinds: &[ReadingKind]) -> Vec<Entity> {
        let device = self.node_device(node_id, kinds);
        let several = kinds.len() > 1;
        let mut out = Vec::new();
        for &kind in kinds {
            let state_topic = self.topics.node_reading(node_id, kind);
            for &value in NodeValue::of(kind) {
                let platform = match value {
                    NodeValue::Motion => Platform::BinarySensor(BinarySensor::json_flag(
                        state_topic.clone(),
                        value.field(),
                        BinaryClass::Motion,
                    )),
                    NodeValue::Temperature => Platform::Sensor(Sensor::json_field(
                        state_topic.clone(),
                        value.field(),
                        Measure::Temperature,
                    )),
                    NodeValue::Illuminance => Platform::Sensor(Sensor::json_field(
                        state_topic.clone(),
                        value.field(),
                        Measure::Illuminance,
                    )),
                    NodeValue::Humidity => Platform::Sensor(Sensor::json_field(
                        state_topic.clone(),
                        value.field(),
                        Measure::Humidity,
                    )),
                };
                // A node that sends several kinds has, say, two motions: name them by kind.
                let (name, object_id) = if several {
                    (
                        format!("{} ({})", value.name(), kind.as_str()),
                        format!(
                            "smarthub_{}_{}_{}",
                            slug(node_id),
                            kind.as_str(),
                            value.key()
                        ),
                    )
                } else {
                    (
                        value.name().to_owned(),
                        format!("smarthub_{}_{}", slug(node_id), value.key()),
                    )
                };
                out.push(Entity {
                    name,
                    unique_id: self.unique_id(&format!(
                        "node_{node_id}_{}_{}",
                        kind.as_str(),
                        value.key()
                    )),
                    default_entity_id: format!("{}.{object_id}", platform.component().as_str()),
                    object_id,
                    platform,
                    icon: None,
                    entity_category: None,
                    json_attributes_topic: None,
                    json_attributes_template: None,
                    availability: vec![
                        Availability::online_offline(self.topics.status()),
                        Availability::online_offline(self.topics.node_status(node_id)),
                    ],
                    availability_mode: AvailabilityMode::All,
                    device: device.clone(),
                    origin: OriginInfo::smarthub(),
                    node_id: Some(node_id.to_owned()),
                });
            }
        }
        out
    }
}

/// When the model behind a prediction was trained, read from its file name
/// (`<target>-<YYYYmmddTHHMMSS>-<id>.json`, UTC). Uses Home Assistant's own `regex_findall` and
/// `strptime`; unknown when the name carries no time.
pub const MODEL_TRAINED_TEMPLATE: &str = concat!(
    r#"{% set stamp = value_json.model_used | regex_findall("[0-9]{8}T[0-9]{6}") %}"#,
    r#"{{ strptime(stamp[0] ~ "+0000", "%Y%m%dT%H%M%S%z").isoformat() if stamp else "None" }}"#
);
