//! The `fan` platform: the fan's levels 1..=max_fan_level are Home Assistant's speed range; 0 is off.

use serde::Serialize;

use super::CommandTopic;
use crate::home::Thing;
use crate::topics::Topics;

/// The fan. Its state topic carries the level (`0`..`max`); Home Assistant derives on/off and the
/// percentage from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fan {
    #[serde(flatten)]
    pub command: CommandTopic,
    /// `ON` turns the fan on at level 1, `OFF` sets level 0.
    pub command_template: String,
    pub state_topic: String,
    pub state_value_template: String,
    pub payload_on: &'static str,
    pub payload_off: &'static str,
    #[serde(flatten)]
    pub speed: Option<FanSpeed>,
    pub optimistic: bool,
}

/// Levels as a speed range (only when there is more than one level: Home Assistant refuses a range
/// whose maximum is not above its minimum).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanSpeed {
    pub percentage_command_topic: String,
    pub percentage_state_topic: String,
    pub speed_range_min: u8,
    pub speed_range_max: u8,
}

impl Fan {
    pub fn home_fan(topics: &Topics, max_fan_level: u8) -> Fan {
        Fan {
            command: CommandTopic::new(topics.set(Thing::Fan)),
            command_template: r#"{{ "1" if value == "ON" else "0" }}"#.into(),
            state_topic: topics.state(Thing::Fan),
            state_value_template: r#"{{ "OFF" if value == "0" else "ON" }}"#.into(),
            payload_on: "ON",
            payload_off: "OFF",
            speed: (max_fan_level > 1).then(|| FanSpeed {
                percentage_command_topic: topics.set(Thing::Fan),
                percentage_state_topic: topics.state(Thing::Fan),
                speed_range_min: 1,
                speed_range_max: max_fan_level,
            }),
            optimistic: false,
        }
    }
}
