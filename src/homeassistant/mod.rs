//! Home Assistant MQTT discovery: the hub, each sensor node and the predictions appear in Home Assistant
//! by themselves. One file per Home Assistant platform ([`light`], [`lock`], [`fan`], [`select`],
//! [`sensor`], [`binary_sensor`]) holds that platform's typed config; [`catalog`] decides which entities
//! exist; [`runtime`] publishes them (retained, on `<prefix>/<component>/<unique_id>/config`), answers
//! Home Assistant's `online`, follows nodes as they appear, expire or are forgotten, and remembers in
//! SQLite what it announced so that what no longer exists is removed (an empty retained config).
//!
//! Home Assistant only ever talks to the hub through the hub's own topics: its commands go to the
//! `/set` topics, the same command path as MQTT clients and REST; its states are the retained `/state`
//! topics. Templates in the configs translate between Home Assistant's words and ours.

pub mod binary_sensor;
pub mod catalog;
pub mod fan;
pub mod light;
pub mod lock;
pub mod runtime;
pub mod select;
pub mod sensor;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use catalog::Catalog;
pub use runtime::{start, HomeAssistantError, Parts};

use crate::topics::DiscoveryTopics;

/// The Home Assistant MQTT platforms the hub uses (the `<component>` of a discovery topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Light,
    Lock,
    Fan,
    Select,
    Sensor,
    BinarySensor,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Light => "light",
            Component::Lock => "lock",
            Component::Fan => "fan",
            Component::Select => "select",
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
        }
    }
}

/// A platform's own part of an entity config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Platform {
    Light(light::Light),
    Lock(lock::Lock),
    Fan(fan::Fan),
    Select(select::Select),
    Sensor(sensor::Sensor),
    BinarySensor(binary_sensor::BinarySensor),
}

impl Platform {
    pub fn component(&self) -> Component {
        match self {
            Platform::Light(_) => Component::Light,
            Platform::Lock(_) => Component::Lock,
            Platform::Fan(_) => Component::Fan,
            Platform::Select(_) => Component::Select,
            Platform::Sensor(_) => Component::Sensor,
            Platform::BinarySensor(_) => Component::BinarySensor,
        }
    }
}

/// A command topic. Home Assistant must never retain a command (a retained `/set` would run again on
/// every reconnect), so `retain` is always false and cannot be set otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandTopic {
    command_topic: String,
    qos: u8,
    retain: bool,
}

impl CommandTopic {
    pub fn new(topic: String) -> CommandTopic {
        CommandTopic {
            command_topic: topic,
            qos: 1,
            retain: false,
        }
    }

    pub fn topic(&self) -> &str {
        &self.command_topic
    }
}

/// One topic whose `online` / `offline` makes an entity available or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Availability {
    pub topic: String,
    pub payload_available: &'static str,
    pub payload_not_available: &'static str,
}

impl Availability {
    pub fn online_offline(topic: String) -> Availability {
        Availability {
            topic,
            payload_available: "online",
            payload_not_available: "offline",
        }
    }
}

/// How several availability topics combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AvailabilityMode {
    /// Available only when every topic says `online` (a node's entities need the hub and the node).
    All,
}

/// Entities that are not the home's own controls or sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityCategory {
    Diagnostic,
}

/// The device an entity belongs to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub identifiers: Vec<String>,
    pub name: String,
    pub manufacturer: &'static str,
    pub model: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sw_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_device: Option<String>,
}

/// Who published the config (shown in Home Assistant's MQTT info and logs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OriginInfo {
    pub name: &'static str,
    pub sw_version: &'static str,
}

impl OriginInfo {
    pub fn smarthub() -> OriginInfo {
        OriginInfo {
            name: "smarthub",
            sw_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// A whole discovery config, serialised with Home Assistant's full key names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    pub name: String,
    /// `smarthub_<hub_id>_<thing>`: stable across restarts and renames.
    pub unique_id: String,
    /// `<component>.<object_id>`: the suggested entity id for Home Assistant 2025.10 and later.
    pub default_entity_id: String,
    /// The same suggestion for older Home Assistant (newer versions ignore it).
    pub object_id: String,
    #[serde(flatten)]
    pub platform: Platform,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_category: Option<EntityCategory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_attributes_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_attributes_template: Option<String>,
    pub availability: Vec<Availability>,
    pub availability_mode: AvailabilityMode,
    pub device: Device,
    pub origin: OriginInfo,
    /// The sensor node whose device this entity belongs to (not part of the config).
    #[serde(skip)]
    pub node_id: Option<String>,
}

impl Entity {
    pub fn component(&self) -> Component {
        self.platform.component()
    }

    /// `<prefix>/<component>/<unique_id>/config`.
    pub fn config_topic(&self, discovery: &DiscoveryTopics) -> String {
        discovery.config(self.component().as_str(), &self.unique_id)
    }

    /// The retained config payload.
    pub fn payload(&self) -> String {
        serde_json::to_string(self).expect("discovery configs are plain data")
    }
}
