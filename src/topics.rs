//! Every topic name the hub uses is built or recognised here, and nowhere else.

use crate::home::Thing;
use crate::readings::ReadingKind;

/// A sensor node's id: `[a-z0-9_-]{1,64}`.
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What an incoming topic under the base means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `<base>/nodes/<id>/<kind>`
    Reading { node_id: String, kind: ReadingKind },
    /// `<base>/nodes/<id>/status`
    NodeStatus { node_id: String },
    /// `<base>/<thing>/set`
    Command(Thing),
    /// Topics the hub publishes itself (states, status, errors, predictions...): nothing to do.
    Own,
    /// `<base>/nodes/<id>/...` with an id that breaks the rule.
    BadNodeId(String),
    /// Anything else under the base.
    Unknown,
    /// Not under the base at all.
    Foreign,
}

/// Builds and parses the hub's topics for one base prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(base: &str) -> Topics {
        Topics {
            base: base.to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The filter the hub's engine subscribes to.
    pub fn all(&self) -> String {
        format!("{}/#", self.base)
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    pub fn error(&self) -> String {
        format!("{}/error", self.base)
    }

    pub fn node_error(&self, node_id: &str) -> String {
        format!("{}/nodes/{node_id}/error", self.base)
    }

    pub fn node_status(&self, node_id: &str) -> String {
        format!("{}/nodes/{node_id}/status", self.base)
    }

    pub fn node_reading(&self, node_id: &str, kind: ReadingKind) -> String {
        format!("{}/nodes/{node_id}/{}", self.base, kind.as_str())
    }

    pub fn set(&self, thing: Thing) -> String {
        format!("{}/{}/set", self.base, thing.as_str())
    }

    /// Retained state of a thing; `climate` is a state without a `/set`.
    pub fn state(&self, thing: Thing) -> String {
        format!("{}/{}/state", self.base, thing.as_str())
    }

    pub fn prediction(&self, target: &str) -> String {
        format!("{}/prediction/{target}", self.base)
    }

    /// The target of a prediction topic (`<base>/prediction/<target>`).
    pub fn prediction_target<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix("/prediction/")
            .filter(|t| !t.is_empty() && !t.contains('/'))
    }

    pub fn suggestion(&self) -> String {
        format!("{}/suggestion", self.base)
    }

    /// Internal marker used to know that every earlier message has been drained.
    pub fn flush_marker(&self, nonce: u64) -> String {
        format!("{}/hub/flush/{nonce:016x}", self.base)
    }

    /// Every channel address of the firmware contract, with `{node_id}` / `{target}` placeholders.
    pub fn contract_addresses(&self) -> Vec<String> {
        let node = "{node_id}";
        let mut out = vec![self.status(), self.node_status(node)];
        out.extend(ReadingKind::ALL.iter().map(|k| self.node_reading(node, *k)));
        out.push(self.node_error(node));
        out.push(self.error());
        out.extend(Thing::COMMANDABLE.iter().map(|t| self.set(*t)));
        out.extend(Thing::ALL.iter().map(|t| self.state(*t)));
        out.push(self.prediction("{target}"));
        out.push(self.suggestion());
        out
    }

    /// Classifies an incoming topic.
    pub fn route(&self, topic: &str) -> Route {
        let Some(rest) = topic
            .strip_prefix(self.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Route::Foreign;
        };
        // Up to three levels and whether there are more, without collecting them (every message).
        let mut levels = rest.split('/');
        let first = levels.next().unwrap_or_default();
        let (second, third) = (levels.next(), levels.next());
        let more = levels.next().is_some();
        match (first, second, third) {
            ("status" | "error" | "suggestion", None, _)
            | ("prediction", Some(_), None)
            | ("hub", ..) => Route::Own,
            (thing, Some("state"), None) if Thing::parse(thing).is_some() => Route::Own,
            (thing, Some("set"), None) => match Thing::parse(thing) {
                Some(t) if t.is_commandable() => Route::Command(t),
                _ => Route::Unknown,
            },
            ("nodes", Some(id), Some(leaf)) if !more => {
                if !is_valid_node_id(id) {
                    return Route::BadNodeId(id.to_owned());
                }
                let node_id = id.to_owned();
                match leaf {
                    "status" => Route::NodeStatus { node_id },
                    "error" => Route::Own,
                    other => match ReadingKind::parse(other) {
                        Some(kind) => Route::Reading { node_id, kind },
                        None => Route::Unknown,
                    },
                }
            }
            ("nodes", Some(id), _) if !is_valid_node_id(id) => Route::BadNodeId(id.to_owned()),
            _ => Route::Unknown,
        }
    }
}

/// Home Assistant's discovery topics under its (configurable) discovery prefix.
#[derive(Debug, Clone)]
pub struct DiscoveryTopics {
    prefix: String,
}

impl DiscoveryTopics {
    pub fn new(prefix: &str) -> DiscoveryTopics {
        DiscoveryTopics {
            prefix: prefix.to_owned(),
        }
    }

    /// Where Home Assistant says `online` / `offline` (its birth and last will).
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// `<prefix>/<component>/<object_id>/config`: a retained entity config; empty deletes it.
    pub fn config(&self, component: &str, object_id: &str) -> String {
        format!("{}/{component}/{object_id}/config", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = Topics::new("smarthub");
        assert_eq!(
            t.route("smarthub/nodes/kitchen-1/light"),
            Route::Reading {
                node_id: "kitchen-1".into(),
                kind: ReadingKind::Light
            }
        );
        assert_eq!(t.route("smarthub/light/set"), Route::Command(Thing::Light));
        assert_eq!(t.route("smarthub/climate/set"), Route::Unknown);
        assert_eq!(t.route("smarthub/light/state"), Route::Own);
        assert_eq!(
            t.route("smarthub/nodes/Kitchen/light"),
            Route::BadNodeId("Kitchen".into())
        );
        assert_eq!(t.route("smarthub/nodes/k/oven"), Route::Unknown);
        assert_eq!(t.route("smarthub/whatever"), Route::Unknown);
        assert_eq!(t.route("other/x"), Route::Foreign);
        assert_eq!(t.route("smarthubx/light/set"), Route::Foreign);
        let cases = [
            ("smarthub/status", Route::Own),
            ("smarthub/status/x", Route::Unknown),
            ("smarthub/prediction/light", Route::Own),
            ("smarthub/prediction", Route::Unknown),
            ("smarthub/prediction/a/b", Route::Unknown),
            ("smarthub/hub", Route::Own),
            ("smarthub/hub/flush/1/2", Route::Own),
            ("smarthub/light/state/x", Route::Unknown),
            ("smarthub/light/set/x", Route::Unknown),
            ("smarthub/nodes/k/light/extra", Route::Unknown),
            ("smarthub/nodes/K/light/extra", Route::BadNodeId("K".into())),
            ("smarthub/nodes/K", Route::BadNodeId("K".into())),
            ("smarthub/nodes/k", Route::Unknown),
            ("smarthub/nodes", Route::Unknown),
            ("smarthub/nodes/k/error", Route::Own),
            (
                "smarthub/nodes/k/status",
                Route::NodeStatus {
                    node_id: "k".into(),
                },
            ),
            ("smarthub/", Route::Unknown),
        ];
        for (topic, route) in cases {
            assert_eq!(t.route(topic), route, "{topic}");
        }
    }

    #[test]
    fn node_ids() {
        assert!(is_valid_node_id("a_b-9"));
        assert!(!is_valid_node_id(""));
        assert!(!is_valid_node_id(&"a".repeat(65)));
        assert!(!is_valid_node_id("a b"));
        assert!(!is_valid_node_id("A"));
    }
}
