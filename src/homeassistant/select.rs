//! The `select` platform: the TV channel (by name) and the automation mode.

use serde::Serialize;

use super::CommandTopic;
use crate::home::{channel_name, Mode, Thing};
use crate::topics::Topics;

/// A choice among fixed options.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Select {
    #[serde(flatten)]
    pub command: CommandTopic,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_template: Option<String>,
    pub state_topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_template: Option<String>,
    pub options: Vec<String>,
    pub optimistic: bool,
}

/// What the TV select calls channel 0.
pub const TV_OFF: &str = "Off";

/// The TV's options: `Off` then every named channel, with their numbers.
pub fn tv_channels() -> Vec<(u32, String)> {
    let named = (1..).map_while(|c| {
        let name = channel_name(c);
        (!name.is_empty()).then(|| (c, name.to_owned()))
    });
    std::iter::once((0, TV_OFF.to_owned()))
        .chain(named)
        .collect()
}

impl Select {
    /// The TV channel by name. The state's channel number picks the option (a custom name sent with a
    /// channel still shows that channel's option); a channel without a name shows as unknown.
    pub fn tv(topics: &Topics) -> Select {
        let channels = tv_channels();
        let by_number: serde_json::Map<String, serde_json::Value> = channels
            .iter()
            .map(|(n, name)| (n.to_string(), name.clone().into()))
            .collect();
        let by_name: serde_json::Map<String, serde_json::Value> = channels
            .iter()
            .map(|(n, name)| (name.clone(), (*n).into()))
            .collect();
        // A JSON object is also a Jinja dict literal; serde_json does the quoting.
        let by_number = serde_json::Value::Object(by_number);
        let by_name = serde_json::Value::Object(by_name);
        Select {
            command: CommandTopic::new(topics.set(Thing::Tv)),
            command_template: Some(format!("{{{{ {by_name}[value] }}}}")),
            state_topic: topics.state(Thing::Tv),
            value_template: Some(format!(
                r#"{{{{ {by_number}[value_json.channel | string] | default("None") }}}}"#
            )),
            options: channels.into_iter().map(|(_, name)| name).collect(),
            optimistic: false,
        }
    }

    /// The automation mode: the hub's own words are the options.
    pub fn mode(topics: &Topics) -> Select {
        Select {
            command: CommandTopic::new(topics.set(Thing::Mode)),
            command_template: None,
            state_topic: topics.state(Thing::Mode),
            value_template: None,
            options: [Mode::Smart, Mode::Assisted, Mode::User]
                .iter()
                .map(|m| m.as_str().to_owned())
                .collect(),
            optimistic: false,
        }
    }
}
