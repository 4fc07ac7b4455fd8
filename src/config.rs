//! Configuration: `broker.toml` holds rumqttd's own sections (its schema, passed through) and smarthub's
//! typed sections. rumqttd accepts unknown keys silently, so [`Config::validate`] checks its part by hand.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration built into the binary (`smarthub print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../broker.toml");

/// Top-level keys that belong to rumqttd's `Config`.
const RUMQTTD_KEYS: &[&str] = &[
    "id",
    "router",
    "v4",
    "v5",
    "ws",
    "cluster",
    "console",
    "bridge",
    "prometheus",
    "metrics",
];
const OUR_SECTIONS: &[&str] = &[
    "hub",
    "http",
    "storage",
    "door",
    "mqtt_auth",
    "homeassistant",
    "learning",
];
const ROUTER_KEYS: &[&str] = &[
    "max_connections",
    "max_outgoing_packet_count",
    "max_segment_size",
    "max_segment_count",
    "custom_segment",
    "initialized_filters",
    "shared_subscriptions_strategy",
];
const SERVER_KEYS: &[&str] = &[
    "name",
    "listen",
    "tls",
    "next_connection_delay_ms",
    "connections",
];
const CONNECTION_KEYS: &[&str] = &[
    "connection_timeout_ms",
    "max_payload_size",
    "max_inflight_count",
    "auth",
    "dynamic_filters",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// `[hub]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Prefix of every topic the hub uses. Default `smarthub`.
    pub base_topic: String,
    /// Highest fan level a command may set. Default 3.
    pub max_fan_level: u8,
    /// Readings stamped further in the future than this are refused. Default 300.
    pub max_future_skew_s: u64,
    /// Refusal log lines allowed per minute. Default 20.
    pub rejection_log_per_minute: u32,
    /// At most this many MQTT messages read from the broker and not yet committed. When the engine or
    /// SQLite falls this far behind, the hub stops reading the broker: memory stays bounded, and what
    /// overflows the broker's log is counted in `smarthub_messages_lost_total`. Default 50000.
    pub ingest_backlog: u64,
    /// How much lower the embedded broker's connection threads (rumqttd's listeners and connection
    /// tasks; its router keeps the hub's priority) run than the engine and the SQLite writer: a nice
    /// value added to theirs, 0 to 19. Under a flood the broker then reads the sockets only as fast as
    /// the hub persists what it forwards (TCP pushes back on the publishers) instead of accepting
    /// messages that overflow its log; with CPU to spare it changes nothing. Linux only (ignored
    /// elsewhere). Default 19.
    pub broker_nice: u8,
    /// When the backlog is full the hub also holds the MQTT connections back (they stop reading their
    /// sockets, so publishers wait instead of their messages overflowing the broker's log) until it
    /// has caught up; when it finishes nothing for this long (a stalled disk) it lets them go on.
    /// 0 never holds them. Default 500.
    pub ingest_pause_max_ms: u64,
}

impl Default for HubSection {
    fn default() -> Self {
        HubSection {
            base_topic: "smarthub".into(),
            max_fan_level: 3,
            max_future_skew_s: 300,
            rejection_log_per_minute: 20,
            ingest_backlog: 50_000,
            broker_nice: 19,
            ingest_pause_max_ms: 500,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the REST API. Default `0.0.0.0:8000`.
    pub listen: SocketAddr,
    /// File whose first line is the API token; empty: `$SMARTHUB_API_TOKEN`, else
    /// `$CREDENTIALS_DIRECTORY/api_token`, else no token (state-changing routes open, as the legacy app
    /// expects). Default empty.
    pub api_token_file: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:8000".parse().expect("literal address"),
            api_token_file: String::new(),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Longest a queued reading waits for its commit. Default 100.
    pub commit_interval_ms: u64,
    /// Most rows in one commit. Default 2000.
    pub commit_max_rows: usize,
    /// Rows kept for retry after a failed write. Default 200000.
    pub retry_buffer_rows: usize,
    /// Readings older than this are pruned nightly; 0 keeps everything. Default 0.
    pub retention_days: u32,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            commit_interval_ms: 100,
            commit_max_rows: 2000,
            retry_buffer_rows: 200_000,
            retention_days: 0,
        }
    }
}

/// `[door]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorSection {
    /// File whose first line is the PIN; empty: `$CREDENTIALS_DIRECTORY/door_pin`, else "1234".
    pub pin_file: String,
    /// Wrong PINs within `failure_window_s` that lock the door. Default 5.
    pub max_failures: u32,
    /// Default 300.
    pub failure_window_s: u64,
    /// How long opening stays refused. Default 300.
    pub lockout_s: u64,
}

impl Default for DoorSection {
    fn default() -> Self {
        DoorSection {
            pin_file: String::new(),
            max_failures: 5,
            failure_window_s: 300,
            lockout_s: 300,
        }
    }
}

/// `[mqtt_auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttAuthSection {
    /// File of `user:argon2-hash` lines; empty means anonymous MQTT.
    pub password_file: String,
}

/// `[homeassistant]`: MQTT discovery for Home Assistant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantSection {
    /// Announce the hub's entities to Home Assistant. Default true.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting). Default `homeassistant`.
    pub discovery_prefix: String,
    /// After Home Assistant says `online` (or after adding entities), wait this long before
    /// re-publishing. Default 3000.
    pub republish_delay_ms: u64,
    /// Plus a random extra wait of up to this much, so several hubs do not answer at once. Default 2000.
    pub republish_jitter_ms: u64,
    /// A node unseen this long is removed from Home Assistant; 0 keeps every node. Default 30.
    pub node_expiry_days: u32,
    /// The hub's URL shown as the device's "Visit" link; empty: derived from the HTTP address. Default "".
    pub hub_url: String,
    /// A prediction older than this shows as unavailable; 0 never expires. Default 3600.
    pub prediction_expire_after_s: u32,
}

impl Default for HomeAssistantSection {
    fn default() -> Self {
        HomeAssistantSection {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            republish_delay_ms: 3000,
            republish_jitter_ms: 2000,
            node_expiry_days: 30,
            hub_url: String::new(),
            prediction_expire_after_s: 3600,
        }
    }
}

/// `[learning]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningSection {
    /// When the models are retrained (cron, seconds first, local time). Default `0 0 0 * * *`.
    pub retrain_cron: String,
    /// Also predict from the latest readings on this schedule; empty: only on new readings. Default "".
    pub predict_cron: String,
    /// Fewer labelled rows than this: no model for the target. Default 30.
    pub min_rows: usize,
    /// Smart and Assisted modes act only on predictions at least this probable. Default 0.7.
    pub min_confidence: f64,
    /// Least time between two automatic actions (changes or suggestions) on one thing. Default 5.
    pub hold_minutes: u64,
    /// A manual change to a thing suspends automatic changes to it this long. Default 30.
    pub manual_override_minutes: u64,
    /// How often the registry is checked for a model promoted by `smarthub train`. Default 2000.
    pub registry_poll_ms: u64,
}

impl Default for LearningSection {
    fn default() -> Self {
        LearningSection {
            retrain_cron: "0 0 0 * * *".into(),
            predict_cron: String::new(),
            min_rows: 30,
            min_confidence: 0.7,
            hold_minutes: 5,
            manual_override_minutes: 30,
            registry_poll_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OurSections {
    #[serde(default)]
    hub: HubSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    door: DoorSection,
    #[serde(default)]
    mqtt_auth: MqttAuthSection,
    #[serde(default)]
    homeassistant: HomeAssistantSection,
    #[serde(default)]
    learning: LearningSection,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: rumqttd::Config,
    pub hub: HubSection,
    pub http: HttpSection,
    pub storage: StorageSection,
    pub door: DoorSection,
    pub mqtt_auth: MqttAuthSection,
    pub homeassistant: HomeAssistantSection,
    pub learning: LearningSection,
}

impl Config {
    /// The built-in default.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, "built-in default config")
            .expect("the built-in config is valid")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses config text, then reports every problem at once.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut ours = toml::Table::new();
        let mut theirs = toml::Table::new();
        for (key, value) in table {
            if OUR_SECTIONS.contains(&key.as_str()) {
                ours.insert(key, value);
            } else if RUMQTTD_KEYS.contains(&key.as_str()) {
                theirs.insert(key, value);
            } else {
                problems.push(format!(
                    "unknown top-level key `{key}` (smarthub sections: {}; rumqttd keys: {})",
                    OUR_SECTIONS.join(", "),
                    RUMQTTD_KEYS.join(", ")
                ));
            }
        }
        check_rumqttd_keys(&theirs, &mut problems);
        let our: OurSections = match ours.try_into() {
            Ok(v) => v,
            Err(e) => {
                problems.push(e.to_string().trim().to_owned());
                OurSections::default()
            }
        };
        let mut broker_parsed = true;
        let broker: rumqttd::Config = match theirs.try_into() {
            Ok(v) => v,
            Err(e) => {
                broker_parsed = false;
                problems.push(format!("rumqttd section: {}", e.to_string().trim()));
                rumqttd::Config::default()
            }
        };
        let config = Config {
            broker,
            hub: our.hub,
            http: our.http,
            storage: our.storage,
            door: our.door,
            mqtt_auth: our.mqtt_auth,
            homeassistant: our.homeassistant,
            learning: our.learning,
        };
        // Semantic checks also run beside syntax problems, so one run lists everything; they would
        // only invent problems about a rumqttd section that did not parse.
        if broker_parsed {
            problems.extend(config.validate());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Semantic checks, including what rumqttd would accept and then misbehave on.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let router = &self.broker.router;
        if router.max_segment_size < 64 * 1024 {
            problems.push(format!(
                "router.max_segment_size = {}: at least 65536 bytes are needed (rumqttd panics below 1024, and a small log loses bursts)",
                router.max_segment_size
            ));
        }
        if router.max_segment_count < 2 {
            problems.push(format!(
                "router.max_segment_count = {}: use at least 2 (with 1, rumqttd drops the segment its readers are still in)",
                router.max_segment_count
            ));
        }
        if router.max_connections == 0 {
            problems.push("router.max_connections = 0: no client could connect".into());
        }
        if let Some(custom) = &router.custom_segment {
            for (filter, seg) in custom {
                if seg.max_segment_size < 64 * 1024 || seg.max_segment_count < 2 {
                    problems.push(format!(
                        "router.custom_segment.'{filter}': use max_segment_size >= 65536 and max_segment_count >= 2"
                    ));
                }
            }
        }
        match &self.broker.v4 {
            Some(servers) if !servers.is_empty() => {}
            _ => problems.push(
                "no [v4.*] listener: MQTT 3.1.1 is required (sensors and Home Assistant use it)"
                    .into(),
            ),
        }
        let mut names = BTreeSet::new();
        for (proto, servers) in [("v4", &self.broker.v4), ("v5", &self.broker.v5)] {
            for (key, server) in servers.iter().flatten() {
                if !names.insert(server.name.clone()) {
                    problems.push(format!(
                        "{proto}.{key}.name = \"{}\" is used twice",
                        server.name
                    ));
                }
                if server.tls.is_some() {
                    problems.push(format!(
                        "{proto}.{key}.tls: this build has no TLS support; rumqttd would silently serve plain MQTT. Terminate TLS in front of the hub instead"
                    ));
                }
                if server.connections.auth.is_some() {
                    problems.push(format!(
                        "{proto}.{key}.connections.auth: plaintext passwords are refused; use [mqtt_auth] password_file (see `smarthub passwd`)"
                    ));
                }
                if server.connections.max_payload_size < 1024 {
                    problems.push(format!(
                        "{proto}.{key}.connections.max_payload_size = {}: at least 1024 bytes are needed",
                        server.connections.max_payload_size
                    ));
                }
                if server.connections.max_inflight_count == 0 {
                    problems.push(format!(
                        "{proto}.{key}.connections.max_inflight_count = 0: QoS 1 could never flow"
                    ));
                }
            }
        }
        if self.broker.console.is_some() {
            problems.push(
                "[console]: rumqttd's console is unauthenticated and can reconfigure the broker; remove it".into(),
            );
        }
        if self.broker.ws.is_some() {
            problems.push(
                "[ws.*]: websocket listeners are not compiled into smarthub; remove them".into(),
            );
        }
        if self.broker.prometheus.is_some() {
            problems.push(
                "[prometheus]: rumqttd's metrics listener is not used; smarthub serves /metrics on its HTTP port".into(),
            );
        }
        if self.broker.bridge.is_some() || self.broker.cluster.is_some() {
            problems.push("[bridge] and [cluster] are not supported by smarthub".into());
        }
        let base = &self.hub.base_topic;
        if base.is_empty()
            || base.starts_with('$')
            || base.contains(['+', '#', '\0'])
            || base.starts_with('/')
            || base.ends_with('/')
        {
            problems.push(format!(
                "hub.base_topic = \"{base}\": use a plain topic prefix without wildcards, `$`, or leading/trailing `/`"
            ));
        }
        if self.hub.max_fan_level == 0 || self.hub.max_fan_level > 10 {
            problems.push(format!(
                "hub.max_fan_level = {}: use 1..=10",
                self.hub.max_fan_level
            ));
        }
        if self.hub.ingest_backlog == 0 {
            problems.push("hub.ingest_backlog = 0: use at least 1 (default 50000)".into());
        }
        if self.hub.broker_nice > 19 {
            problems.push(format!(
                "hub.broker_nice = {}: use 0 (same priority as the hub) to 19 (default 19)",
                self.hub.broker_nice
            ));
        }
        if self.storage.commit_max_rows == 0 {
            problems.push("storage.commit_max_rows = 0: use at least 1".into());
        }
        if self.storage.commit_interval_ms == 0 {
            problems.push("storage.commit_interval_ms = 0: use at least 1".into());
        }
        if self.door.max_failures == 0 {
            problems.push("door.max_failures = 0: use at least 1".into());
        }
        if !self.door.pin_file.is_empty() && !Path::new(&self.door.pin_file).is_file() {
            problems.push(format!(
                "door.pin_file = \"{}\": no such file",
                self.door.pin_file
            ));
        }
        if !self.http.api_token_file.is_empty() && !Path::new(&self.http.api_token_file).is_file() {
            problems.push(format!(
                "http.api_token_file = \"{}\": no such file",
                self.http.api_token_file
            ));
        }
        if !self.mqtt_auth.password_file.is_empty()
            && !Path::new(&self.mqtt_auth.password_file).is_file()
        {
            problems.push(format!(
                "mqtt_auth.password_file = \"{}\": no such file (create it with `smarthub passwd FILE USER`)",
                self.mqtt_auth.password_file
            ));
        }
        let learning = &self.learning;
        if let Err(e) = crate::schedule::Schedule::parse(&learning.retrain_cron) {
            problems.push(format!("learning.retrain_cron: {e}"));
        }
        if !learning.predict_cron.is_empty() {
            if let Err(e) = crate::schedule::Schedule::parse(&learning.predict_cron) {
                problems.push(format!("learning.predict_cron: {e}"));
            }
        }
        if !(0.0..=1.0).contains(&learning.min_confidence) {
            problems.push(format!(
                "learning.min_confidence = {}: use 0..=1",
                learning.min_confidence
            ));
        }
        if learning.min_rows < 2 {
            problems.push("learning.min_rows: use at least 2".into());
        }
        if learning.registry_poll_ms == 0 {
            problems.push("learning.registry_poll_ms = 0: use at least 1".into());
        }
        problems.extend(self.validate_homeassistant());
        problems
    }

    fn validate_homeassistant(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ha = &self.homeassistant;
        let prefix = &ha.discovery_prefix;
        if prefix.is_empty()
            || prefix.starts_with('$')
            || prefix.contains(['+', '#', '\0'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            problems.push(format!(
                "homeassistant.discovery_prefix = \"{prefix}\": use a plain topic prefix without wildcards, `$`, or leading/trailing `/`"
            ));
        }
        let base = &self.hub.base_topic;
        let nested =
            |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        if nested(base, prefix) || nested(prefix, base) {
            problems.push(format!(
                "homeassistant.discovery_prefix = \"{prefix}\" overlaps hub.base_topic = \"{base}\": the hub would read its own discovery messages as commands; use separate prefixes"
            ));
        }
        let url = &ha.hub_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(format!(
                "homeassistant.hub_url = \"{}\": use an http:// or https:// URL, or leave it empty",
                ha.hub_url
            ));
        }
        problems
    }

    /// Addresses of every MQTT listener, with the protocol name.
    pub fn mqtt_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        for (proto, servers) in [("MQTT 3.1.1", &self.broker.v4), ("MQTT 5", &self.broker.v5)] {
            for server in servers.iter().flat_map(|s| s.values()) {
                out.push((proto, server.listen));
            }
        }
        out
    }

    /// `--mqtt-listen`: sets the address of the (single) MQTT 3.1.1 listener.
    pub fn set_mqtt_listen(&mut self, addr: SocketAddr) -> Result<(), String> {
        match self.broker.v4.as_mut() {
            Some(servers) if servers.len() == 1 => {
                servers.values_mut().for_each(|s| s.listen = addr);
                Ok(())
            }
            _ => Err("--mqtt-listen needs exactly one [v4.*] listener in the config".into()),
        }
    }

    /// `--mqtt5-listen`: enables MQTT 5 on `addr` (copying the 3.1.1 listener's connection settings).
    pub fn set_mqtt5_listen(&mut self, addr: SocketAddr) -> Result<(), String> {
        if let Some(servers) = self.broker.v5.as_mut() {
            if servers.len() != 1 {
                return Err(
                    "--mqtt5-listen needs at most one [v5.*] listener in the config".into(),
                );
            }
            servers.values_mut().for_each(|s| s.listen = addr);
            return Ok(());
        }
        let template = self
            .broker
            .v4
            .as_ref()
            .and_then(|s| s.values().next())
            .cloned()
            .ok_or("--mqtt5-listen needs a [v4.*] listener to copy settings from")?;
        let mut server = template;
        server.name = "mqtt5".into();
        server.listen = addr;
        self.broker.v5 = Some([("1".to_string(), server)].into_iter().collect());
        Ok(())
    }
}

fn check_rumqttd_keys(theirs: &toml::Table, problems: &mut Vec<String>) {
    let unknown = |table: &toml::Table, allowed: &[&str], at: &str, problems: &mut Vec<String>| {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown key `{at}.{key}` (rumqttd would ignore it silently; known: {})",
                    allowed.join(", ")
                ));
            }
        }
    };
    if let Some(toml::Value::Table(router)) = theirs.get("router") {
        unknown(router, ROUTER_KEYS, "router", problems);
    }
    for proto in ["v4", "v5"] {
        if let Some(toml::Value::Table(servers)) = theirs.get(proto) {
            for (name, server) in servers {
                if let toml::Value::Table(server) = server {
                    let at = format!("{proto}.{name}");
                    unknown(server, SERVER_KEYS, &at, problems);
                    if let Some(toml::Value::Table(conn)) = server.get("connections") {
                        unknown(
                            conn,
                            CONNECTION_KEYS,
                            &format!("{at}.connections"),
                            problems,
                        );
                    }
                }
            }
        }
    }
}

/// The first directory of a systemd directory variable (`$STATE_DIRECTORY`, `$CONFIGURATION_DIRECTORY`,
/// which may list several separated by `:`).
pub fn systemd_dir(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let first = value
        .to_string_lossy()
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Where `run` finds its config when `--config` is not given.
pub fn default_config_path(cwd: &Path) -> Option<PathBuf> {
    if let Some(path) = systemd_dir("CONFIGURATION_DIRECTORY").map(|d| d.join("broker.toml")) {
        if path.is_file() {
            return Some(path);
        }
    }
    let path = cwd.join("broker.toml");
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.hub.base_topic, "smarthub");
        assert_eq!(c.http.listen.port(), 8000);
        assert_eq!(c.mqtt_listeners().len(), 1);
        assert!(c.broker.v5.is_none(), "MQTT 5 must be off by default");
    }

    #[test]
    fn every_problem_is_listed() {
        let text = DEFAULT_CONFIG
            .replace(
                "max_segment_count = 4",
                "max_segment_count = 1\nmax_segmnet_size = 3",
            )
            .replace(
                "base_topic = \"smarthub\"",
                "base_topic = \"a/#\"\ncolour = 1",
            )
            + "\n[console]\nlisten = \"0.0.0.0:3030\"\n";
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("router.max_segmnet_size"), "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("[console]"), "{err}");
    }

    #[test]
    fn semantic_problems_are_listed_together() {
        let text = DEFAULT_CONFIG
            .replace("max_segment_count = 4", "max_segment_count = 1")
            .replace("base_topic = \"smarthub\"", "base_topic = \"a/#\"")
            .replace("max_fan_level = 3", "max_fan_level = 0");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_segment_count"), "{err}");
        assert!(err.contains("base_topic"), "{err}");
        assert!(err.contains("max_fan_level"), "{err}");
    }

    #[test]
    fn homeassistant_section() {
        let c = Config::default_config();
        assert!(c.homeassistant.enabled);
        assert_eq!(c.homeassistant.discovery_prefix, "homeassistant");
        let text = DEFAULT_CONFIG
            .replace(
                "discovery_prefix = \"homeassistant\"",
                "discovery_prefix = \"smarthub/ha\"",
            )
            .replace("hub_url = \"\"", "hub_url = \"smarthub.local\"");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("overlaps hub.base_topic"), "{err}");
        assert!(err.contains("homeassistant.hub_url"), "{err}");
        let text = DEFAULT_CONFIG.replace("enabled = true", "enabled = false\ncolour = 1");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn learning_section_is_checked() {
        let text = DEFAULT_CONFIG
            .replace(
                "retrain_cron = \"0 0 0 * * *\"",
                "retrain_cron = \"every night\"",
            )
            .replace("min_confidence = 0.7", "min_confidence = 1.5");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("learning.retrain_cron"), "{err}");
        assert!(err.contains("learning.min_confidence"), "{err}");
        let c = Config::default_config();
        assert_eq!(c.learning.retrain_cron, "0 0 0 * * *");
        assert_eq!(c.learning.manual_override_minutes, 30);
    }

    #[test]
    fn ingest_flow_settings_are_checked() {
        let c = Config::default_config();
        assert_eq!(c.hub.broker_nice, 19);
        assert_eq!(c.hub.ingest_pause_max_ms, 500);
        let text = DEFAULT_CONFIG
            .replace("broker_nice = 19", "broker_nice = 20")
            .replace("ingest_backlog = 50000", "ingest_backlog = 0");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("hub.broker_nice = 20"), "{err}");
        assert!(err.contains("hub.ingest_backlog = 0"), "{err}");
        let text = DEFAULT_CONFIG.replace("broker_nice = 19", "broker_nice = -1");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("broker_nice"), "{err}");
    }

    #[test]
    fn mqtt5_flag_enables_v5() {
        let mut c = Config::default_config();
        c.set_mqtt5_listen("127.0.0.1:1999".parse().unwrap())
            .unwrap();
        assert_eq!(c.mqtt_listeners().len(), 2);
    }
}
