//! The `sensor` platform, and the device classes, units and state classes the hub uses. These are only
//! ever written through a [`Measure`], whose variants are combinations Home Assistant accepts; there
//! is no way to write, say, a humidity in °C.

use serde::Serialize;

/// `device_class` of a sensor, as Home Assistant spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Temperature,
    Humidity,
    Illuminance,
    Timestamp,
}

/// `unit_of_measurement`, as Home Assistant spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    #[serde(rename = "°C")]
    Celsius,
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "lx")]
    Lux,
}

/// `state_class`: how Home Assistant keeps long-term statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateClass {
    Measurement,
}

/// What a sensor measures; fixes its device class, unit and state class together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Air temperature in °C.
    Temperature,
    /// Relative humidity in %.
    Humidity,
    /// Light intensity in lux.
    Illuminance,
    /// A moment in time (an ISO 8601 string with a time zone).
    Timestamp,
    /// Free text: no device class, no unit, no statistics (a predicted class).
    Text,
}

impl Measure {
    pub fn device_class(self) -> Option<DeviceClass> {
        match self {
            Measure::Temperature => Some(DeviceClass::Temperature),
            Measure::Humidity => Some(DeviceClass::Humidity),
            Measure::Illuminance => Some(DeviceClass::Illuminance),
            Measure::Timestamp => Some(DeviceClass::Timestamp),
            Measure::Text => None,
        }
    }

    pub fn unit(self) -> Option<Unit> {
        match self {
            Measure::Temperature => Some(Unit::Celsius),
            Measure::Humidity => Some(Unit::Percent),
            Measure::Illuminance => Some(Unit::Lux),
            Measure::Timestamp | Measure::Text => None,
        }
    }

    pub fn state_class(self) -> Option<StateClass> {
        match self {
            Measure::Temperature | Measure::Humidity | Measure::Illuminance => {
                Some(StateClass::Measurement)
            }
            Measure::Timestamp | Measure::Text => None,
        }
    }
}

impl Serialize for Measure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Keys {
            #[serde(skip_serializing_if = "Option::is_none")]
            device_class: Option<DeviceClass>,
            #[serde(skip_serializing_if = "Option::is_none")]
            unit_of_measurement: Option<Unit>,
            #[serde(skip_serializing_if = "Option::is_none")]
            state_class: Option<StateClass>,
        }
        Keys {
            device_class: self.device_class(),
            unit_of_measurement: self.unit(),
            state_class: self.state_class(),
        }
        .serialize(serializer)
    }
}

/// A read-only value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sensor {
    pub state_topic: String,
    pub value_template: String,
    #[serde(flatten)]
    pub measure: Measure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_display_precision: Option<u8>,
    /// Seconds without a message after which the value shows as unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<u32>,
}

impl Sensor {
    /// A field of a JSON payload.
    pub fn json_field(state_topic: String, field: &str, measure: Measure) -> Sensor {
        Sensor {
            state_topic,
            value_template: numeric_field(field),
            measure,
            suggested_display_precision: match measure {
                Measure::Temperature | Measure::Humidity => Some(1),
                Measure::Illuminance => Some(0),
                Measure::Timestamp | Measure::Text => None,
            },
            expire_after: None,
        }
    }
}

/// Renders a numeric field, or nothing (Home Assistant then keeps the previous value) when the
/// message lacks it.
pub fn numeric_field(field: &str) -> String {
    format!(r#"{{{{ value_json.{field} if value_json.{field} is number else "" }}}}"#)
}
