//! The `lock` platform: the door. Locked means closed. Unlocking opens the door and needs the PIN as
//! Home Assistant's code; locking closes it and needs none.

use serde::Serialize;

use super::CommandTopic;
use crate::home::{Thing, PIN_LEN};
use crate::topics::Topics;

/// The door as a lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lock {
    #[serde(flatten)]
    pub command: CommandTopic,
    /// Turns Home Assistant's `LOCK` / `UNLOCK` (+ code) into the hub's `CLOSE` /
    /// `{"state": "OPEN", "pin_code": ...}`.
    pub command_template: String,
    pub state_topic: String,
    /// Turns the hub's `CLOSED` / `OPEN` into Home Assistant's `LOCKED` / `UNLOCKED`.
    pub value_template: String,
    pub payload_lock: &'static str,
    pub payload_unlock: &'static str,
    pub state_locked: &'static str,
    pub state_unlocked: &'static str,
    /// The code Home Assistant asks for: the PIN, or nothing (closing needs no PIN; opening without
    /// one is refused by the hub like any other PIN-less open).
    pub code_format: String,
    pub optimistic: bool,
}

impl Lock {
    pub fn door(topics: &Topics) -> Lock {
        Lock {
            command: CommandTopic::new(topics.set(Thing::Door)),
            // `tojson` escapes whatever the user typed as the code into a JSON string.
            command_template: concat!(
                r#"{% if value == "UNLOCK" %}"#,
                r#"{% if code %}{{ {"state": "OPEN", "pin_code": code} | tojson }}{% else %}OPEN{% endif %}"#,
                r#"{% else %}CLOSE{% endif %}"#
            )
            .into(),
            state_topic: topics.state(Thing::Door),
            value_template: concat!(
                r#"{{ "LOCKED" if value == "CLOSED" else "UNLOCKED" if value == "OPEN" "#,
                r#"else "None" }}"#
            )
            .into(),
            payload_lock: "LOCK",
            payload_unlock: "UNLOCK",
            state_locked: "LOCKED",
            state_unlocked: "UNLOCKED",
            code_format: format!("^(.{{{PIN_LEN}}})?$"),
            optimistic: false,
        }
    }
}
