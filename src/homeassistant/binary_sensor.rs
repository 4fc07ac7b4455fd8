//! The `binary_sensor` platform: a node's motion.

use serde::Serialize;

/// `device_class` of a binary sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryClass {
    Motion,
}

/// An on/off value read from a JSON boolean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BinarySensor {
    pub state_topic: String,
    pub value_template: String,
    pub payload_on: &'static str,
    pub payload_off: &'static str,
    pub device_class: BinaryClass,
}

impl BinarySensor {
    /// `field` of a JSON payload; a message without it changes nothing.
    pub fn json_flag(state_topic: String, field: &str, device_class: BinaryClass) -> BinarySensor {
        BinarySensor {
            state_topic,
            value_template: format!(
                r#"{{{{ ("ON" if value_json.{field} else "OFF") if value_json.{field} is boolean else "" }}}}"#
            ),
            payload_on: "ON",
            payload_off: "OFF",
            device_class,
        }
    }
}
