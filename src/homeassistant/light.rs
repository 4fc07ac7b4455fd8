//! The `light` platform (default schema): the home's light, on and off.

use serde::Serialize;

use super::CommandTopic;
use crate::home::Thing;
use crate::topics::Topics;

/// An on/off light whose state and commands are the hub's own `ON` / `OFF`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Light {
    #[serde(flatten)]
    pub command: CommandTopic,
    pub state_topic: String,
    pub payload_on: &'static str,
    pub payload_off: &'static str,
    /// Home Assistant shows the state the hub confirms, not the one it asked for.
    pub optimistic: bool,
}

impl Light {
    pub fn home_light(topics: &Topics) -> Light {
        Light {
            command: CommandTopic::new(topics.set(Thing::Light)),
            state_topic: topics.state(Thing::Light),
            payload_on: "ON",
            payload_off: "OFF",
            optimistic: false,
        }
    }
}
