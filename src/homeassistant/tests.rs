//! Snapshots of every discovery payload; every payload checked against the rules of Home Assistant's
//! MQTT platforms (required and known keys, valid device class / unit / state class combinations);
//! every template rendered with Home Assistant's variables and its output fed to the hub's own parsers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::catalog::MODEL_TRAINED_TEMPLATE;
use super::select::tv_channels;
use super::*;
use crate::home::{parse_set_payload, Command, HomeState, LightAction, Mode, Thing};
use crate::readings::{ReadingKind, Reason};
use crate::topics::{DiscoveryTopics, Topics};

const HUB_ID: &str = "0123456789ab";

fn catalog(max_fan_level: u8) -> Catalog {
    Catalog {
        hub_id: HUB_ID.into(),
        topics: Topics::new("smarthub"),
        hub_url: Some("http://smarthub.local:8000".into()),
        max_fan_level,
        prediction_expire_after_s: 3600,
    }
}

/// Every entity the tests look at: the hub's, and nodes of each kind and of several kinds.
fn all_entities() -> Vec<Entity> {
    let c = catalog(3);
    let mut out = c.hub_entities();
    out.extend(c.node_entities("livingroom", &[ReadingKind::Light]));
    out.extend(c.node_entities("tv-corner", &[ReadingKind::Tv]));
    out.extend(c.node_entities("bedroom", &[ReadingKind::Climate]));
    out.extend(c.node_entities("hall", &[ReadingKind::Light, ReadingKind::Climate]));
    out
}

/// The config as Home Assistant receives it, with the crate version masked (it changes on release).
fn as_received(e: &Entity) -> Value {
    let mut v: Value = serde_json::from_str(&e.payload()).unwrap();
    for block in ["device", "origin"] {
        if v[block].get("sw_version").is_some() {
            v[block]["sw_version"] = "[version]".into();
        }
    }
    v
}

#[test]
fn snapshots_of_every_payload() {
    let discovery = DiscoveryTopics::new("homeassistant");
    let mut entities = all_entities();
    // A one-level fan has no speed range.
    let mut one_level = catalog(1)
        .hub_entities()
        .into_iter()
        .find(|e| e.component() == Component::Fan)
        .unwrap();
    one_level.unique_id.push_str("_one_level");
    entities.push(one_level);
    for e in &entities {
        let name = e
            .unique_id
            .trim_start_matches(&format!("smarthub_{HUB_ID}_"));
        insta::assert_json_snapshot!(
            name,
            json!({"topic": e.config_topic(&discovery), "config": as_received(e)})
        );
    }
}

#[test]
fn hub_and_node_entities_are_the_promised_ones() {
    let c = catalog(3);
    let hub: BTreeSet<(Component, String)> = c
        .hub_entities()
        .iter()
        .map(|e| (e.component(), e.object_id.clone()))
        .collect();
    let expected: BTreeSet<(Component, String)> = [
        (Component::Light, "smarthub_light"),
        (Component::Lock, "smarthub_door"),
        (Component::Fan, "smarthub_fan"),
        (Component::Select, "smarthub_tv_channel"),
        (Component::Select, "smarthub_mode"),
        (Component::Sensor, "smarthub_temperature"),
        (Component::Sensor, "smarthub_humidity"),
        (Component::Sensor, "smarthub_light_prediction"),
        (Component::Sensor, "smarthub_tv_prediction"),
        (Component::Sensor, "smarthub_fan_prediction"),
        (Component::Sensor, "smarthub_light_model_trained"),
        (Component::Sensor, "smarthub_tv_model_trained"),
        (Component::Sensor, "smarthub_fan_model_trained"),
    ]
    .into_iter()
    .map(|(c, o)| (c, o.to_owned()))
    .collect();
    assert_eq!(hub, expected);

    let node: Vec<(Component, String)> = c
        .node_entities("kitchen-1", &[ReadingKind::Light])
        .iter()
        .map(|e| (e.component(), e.object_id.clone()))
        .collect();
    assert_eq!(
        node,
        [
            (Component::BinarySensor, "smarthub_kitchen_1_motion"),
            (Component::Sensor, "smarthub_kitchen_1_temperature"),
            (Component::Sensor, "smarthub_kitchen_1_illuminance"),
        ]
        .map(|(c, o)| (c, o.to_owned()))
    );
    // Unique ids are unique, also across the nodes of several kinds.
    let all = all_entities();
    let ids: BTreeSet<&str> = all.iter().map(|e| e.unique_id.as_str()).collect();
    assert_eq!(ids.len(), all.len());
}

/// Allowed units and state classes of a device class; `None` is "no unit" / "no state class".
type Allowed = (Vec<Option<&'static str>>, Vec<Option<&'static str>>);

/// HA 2024.3 `sensor/const.py`: DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES for the device
/// classes the hub uses.
fn sensor_class_table() -> BTreeMap<&'static str, Allowed> {
    BTreeMap::from([
        (
            "temperature",
            (
                vec![Some("°C"), Some("°F"), Some("K")],
                vec![Some("measurement")],
            ),
        ),
        ("humidity", (vec![Some("%")], vec![Some("measurement")])),
        ("illuminance", (vec![Some("lx")], vec![Some("measurement")])),
        // Non-numeric: no unit and no state class allowed.
        ("timestamp", (vec![None], vec![None])),
    ])
}

/// HA 2024.3 `binary_sensor/__init__.py` BinarySensorDeviceClass (the ones the hub may use).
const BINARY_CLASSES: &[&str] = &["motion", "occupancy", "presence", "connectivity"];

/// Keys every MQTT entity accepts (`MQTT_ENTITY_COMMON_SCHEMA` + availability), and
/// `default_entity_id` (HA 2025.10; older HA drops unknown keys).
const COMMON_KEYS: &[&str] = &[
    "name",
    "unique_id",
    "object_id",
    "default_entity_id",
    "icon",
    "entity_category",
    "enabled_by_default",
    "json_attributes_topic",
    "json_attributes_template",
    "availability",
    "availability_mode",
    "availability_topic",
    "device",
    "origin",
    "qos",
    "encoding",
];

/// (platform, required keys, the platform's other keys the hub may use), from HA 2024.3's schemas.
/// A key outside these would be silently dropped by Home Assistant (`extra=REMOVE_EXTRA`).
fn platform_keys(component: Component) -> (&'static [&'static str], &'static [&'static str]) {
    match component {
        Component::Light => (
            &["command_topic"],
            &[
                "state_topic",
                "payload_on",
                "payload_off",
                "optimistic",
                "retain",
                "state_value_template",
            ],
        ),
        Component::Lock => (
            &["command_topic"],
            &[
                "command_template",
                "state_topic",
                "value_template",
                "payload_lock",
                "payload_unlock",
                "state_locked",
                "state_unlocked",
                "code_format",
                "optimistic",
                "retain",
            ],
        ),
        Component::Fan => (
            &["command_topic"],
            &[
                "command_template",
                "state_topic",
                "state_value_template",
                "payload_on",
                "payload_off",
                "percentage_command_topic",
                "percentage_state_topic",
                "speed_range_min",
                "speed_range_max",
                "optimistic",
                "retain",
            ],
        ),
        Component::Select => (
            &["command_topic", "options"],
            &[
                "command_template",
                "state_topic",
                "value_template",
                "optimistic",
                "retain",
            ],
        ),
        Component::Sensor => (
            &["state_topic"],
            &[
                "value_template",
                "device_class",
                "unit_of_measurement",
                "state_class",
                "suggested_display_precision",
                "expire_after",
            ],
        ),
        Component::BinarySensor => (
            &["state_topic"],
            &[
                "value_template",
                "device_class",
                "payload_on",
                "payload_off",
                "expire_after",
            ],
        ),
    }
}

/// HA's discovery topic rule (`TOPIC_MATCHER` in `mqtt/discovery.py`), without the prefix.
fn valid_discovery_topic(topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix("homeassistant/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let id = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    matches!(parts.as_slice(), [component, object, "config"] if id(component) && id(object))
}

#[test]
fn every_payload_follows_home_assistants_rules() {
    let classes = sensor_class_table();
    let discovery = DiscoveryTopics::new("homeassistant");
    let hub_identifier = format!("smarthub_{HUB_ID}");
    for e in all_entities() {
        let v: Value = serde_json::from_str(&e.payload()).unwrap();
        let obj = v.as_object().unwrap();
        let what = &e.unique_id;
        let component = e.component();
        let (required, optional) = platform_keys(component);
        for key in required {
            assert!(obj.contains_key(*key), "{what}: required `{key}` missing");
        }
        for key in obj.keys() {
            assert!(
                COMMON_KEYS.contains(&key.as_str())
                    || required.contains(&key.as_str())
                    || optional.contains(&key.as_str()),
                "{what}: `{key}` is not a key of HA's {} platform",
                component.as_str()
            );
        }
        assert!(valid_discovery_topic(&e.config_topic(&discovery)), "{what}");

        // Identity.
        assert!(what.starts_with(&format!("{hub_identifier}_")), "{what}");
        let object_id = v["object_id"].as_str().unwrap();
        assert!(
            object_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{what}: object_id {object_id}"
        );
        assert_eq!(
            v["default_entity_id"],
            format!("{}.{object_id}", component.as_str()),
            "{what}"
        );
        assert!(!v["name"].as_str().unwrap().is_empty(), "{what}");
        assert_eq!(v["origin"]["name"], "smarthub");
        assert!(v["origin"]["sw_version"].is_string());

        // Device: the hub, or a node via the hub.
        let device = &v["device"];
        assert!(
            !device["identifiers"].as_array().unwrap().is_empty(),
            "{what}"
        );
        assert!(device["name"].is_string(), "{what}");
        match &e.node_id {
            None => {
                assert_eq!(device["identifiers"][0], hub_identifier.as_str());
                assert_eq!(device["sw_version"], env!("CARGO_PKG_VERSION"));
                assert!(device["configuration_url"]
                    .as_str()
                    .unwrap()
                    .starts_with("http"));
            }
            Some(node) => {
                assert_eq!(device["via_device"], hub_identifier.as_str(), "{what}");
                assert_eq!(device["name"], node.as_str());
            }
        }

        // Availability: the hub always; a node's entities also need their node.
        let availability = v["availability"].as_array().unwrap();
        assert_eq!(availability[0]["topic"], "smarthub/status", "{what}");
        assert_eq!(v["availability_mode"], "all", "{what}");
        match &e.node_id {
            None => assert_eq!(availability.len(), 1, "{what}"),
            Some(node) => {
                assert_eq!(availability.len(), 2, "{what}");
                assert_eq!(
                    availability[1]["topic"],
                    format!("smarthub/nodes/{node}/status"),
                    "{what}"
                );
            }
        }
        for a in availability {
            assert_eq!(a["payload_available"], "online");
            assert_eq!(a["payload_not_available"], "offline");
        }

        // Commands are never retained and go to the hub's own `/set` topics.
        if let Some(topic) = v.get("command_topic") {
            assert_eq!(v["retain"], false, "{what}");
            let topic = topic.as_str().unwrap();
            assert!(
                Thing::COMMANDABLE
                    .iter()
                    .any(|t| Topics::new("smarthub").set(*t) == topic),
                "{what}: {topic}"
            );
        }

        // Device class / unit / state class combinations.
        match component {
            Component::Sensor => {
                let class = v.get("device_class").and_then(Value::as_str);
                let unit = v.get("unit_of_measurement").and_then(Value::as_str);
                let state_class = v.get("state_class").and_then(Value::as_str);
                match class {
                    Some(class) => {
                        let (units, state_classes) = classes.get(class).unwrap_or_else(|| {
                            panic!("{what}: device class {class} not in the table")
                        });
                        assert!(units.contains(&unit), "{what}: {class} in {unit:?}");
                        assert!(
                            state_classes.contains(&state_class),
                            "{what}: {class} with state class {state_class:?}"
                        );
                    }
                    // Without a device class, a unit or state class would make HA expect numbers.
                    None => {
                        assert!(unit.is_none() && state_class.is_none(), "{what}");
                    }
                }
            }
            Component::BinarySensor => {
                let class = v["device_class"].as_str().unwrap();
                assert!(BINARY_CLASSES.contains(&class), "{what}: {class}");
            }
            _ => assert!(v.get("device_class").is_none(), "{what}"),
        }
    }
}

#[test]
fn predictions_expire_and_carry_attributes() {
    let entities = catalog(3).hub_entities();
    for target in ["light", "tv", "fan"] {
        let p = entities
            .iter()
            .find(|e| e.object_id == format!("smarthub_{target}_prediction"))
            .unwrap();
        let v: Value = serde_json::from_str(&p.payload()).unwrap();
        assert_eq!(v["expire_after"], 3600);
        assert_eq!(v["state_topic"], format!("smarthub/prediction/{target}"));
        assert_eq!(v["json_attributes_topic"], v["state_topic"]);
        let age = entities
            .iter()
            .find(|e| e.object_id == format!("smarthub_{target}_model_trained"))
            .unwrap();
        let v: Value = serde_json::from_str(&age.payload()).unwrap();
        assert_eq!(v["entity_category"], "diagnostic");
        assert_eq!(v["device_class"], "timestamp");
    }
    let never = Catalog {
        prediction_expire_after_s: 0,
        ..catalog(3)
    };
    assert!(never
        .hub_entities()
        .iter()
        .all(|e| !e.payload().contains("expire_after")));
}

// ---- templates, rendered as Home Assistant renders them (Jinja) ----

fn render(template: &str, ctx: Value) -> String {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env.render_str(
        template,
        minijinja::Value::from(minijinja::value::Serde(&ctx)),
    )
    .unwrap_or_else(|e| panic!("{template}: {e}"))
}

/// A value template with the payload as `value` and, when it is JSON, as `value_json`.
fn render_value(template: &str, payload: &str) -> String {
    let mut ctx = json!({ "value": payload });
    if let Ok(j) = serde_json::from_str::<Value>(payload) {
        ctx["value_json"] = j;
    }
    render(template, ctx)
}

fn config_of(object_id: &str) -> Value {
    let e = all_entities()
        .into_iter()
        .find(|e| e.object_id == object_id)
        .unwrap_or_else(|| panic!("no entity {object_id}"));
    serde_json::from_str(&e.payload()).unwrap()
}

fn template(config: &Value, key: &str) -> String {
    config[key].as_str().unwrap().to_owned()
}

#[test]
fn lock_templates_speak_the_door_contract() {
    let lock = config_of("smarthub_door");
    let command = template(&lock, "command_template");
    let send = |value: &str, code: Value| {
        let out = render(&command, json!({"value": value, "code": code}));
        parse_set_payload(Thing::Door, out.as_bytes(), 3)
    };
    assert_eq!(
        send("UNLOCK", json!("1234")),
        Ok(Command::DoorOpen { pin: "1234".into() })
    );
    // Whatever the user types stays one JSON string.
    assert_eq!(
        send("UNLOCK", json!(r#"1"}4"#)),
        Ok(Command::DoorOpen {
            pin: r#"1"}4"#.into()
        })
    );
    assert_eq!(
        send("UNLOCK", Value::Null).unwrap_err().reason,
        Reason::Unauthorized
    );
    assert_eq!(send("LOCK", Value::Null), Ok(Command::DoorClose));
    assert_eq!(send("LOCK", json!("1234")), Ok(Command::DoorClose));

    let state = template(&lock, "value_template");
    let mut home = HomeState::default();
    assert_eq!(render_value(&state, &home.payload(Thing::Door)), "LOCKED");
    home.door_open = true;
    assert_eq!(render_value(&state, &home.payload(Thing::Door)), "UNLOCKED");
    assert_eq!(render_value(&state, "AJAR"), "None");

    // Home Assistant checks the code against code_format: the PIN, or nothing.
    assert_eq!(lock["code_format"], "^(.{4})?$");
}

#[test]
fn fan_templates_speak_the_fan_contract() {
    let fan = config_of("smarthub_fan");
    let command = template(&fan, "command_template");
    let send = |value: &str| {
        let out = render(&command, json!({ "value": value }));
        parse_set_payload(Thing::Fan, out.as_bytes(), 3)
    };
    assert_eq!(send("ON"), Ok(Command::Fan(1)));
    assert_eq!(send("OFF"), Ok(Command::Fan(0)));
    // The percentage command sends the level itself (HA maps the percentage into the speed range).
    assert_eq!(fan["percentage_command_topic"], fan["command_topic"]);
    assert_eq!(parse_set_payload(Thing::Fan, b"3", 3), Ok(Command::Fan(3)));
    assert_eq!(fan["speed_range_max"], 3);
    let state = template(&fan, "state_value_template");
    for level in 0..=3u8 {
        let home = HomeState {
            fan_level: level,
            ..HomeState::default()
        };
        let expected = if level == 0 { "OFF" } else { "ON" };
        assert_eq!(render_value(&state, &home.payload(Thing::Fan)), expected);
    }
}

#[test]
fn tv_select_maps_names_and_numbers() {
    let tv = config_of("smarthub_tv_channel");
    let options: Vec<String> = serde_json::from_value(tv["options"].clone()).unwrap();
    assert_eq!(
        options,
        [
            "Off",
            "MBC3",
            "nickelodeon",
            "spacetoon",
            "boomerang",
            "Cartoon Network",
            "JEEM"
        ]
    );
    let command = template(&tv, "command_template");
    let state = template(&tv, "value_template");
    for (number, name) in tv_channels() {
        let out = render(&command, json!({ "value": name }));
        assert_eq!(
            parse_set_payload(Thing::Tv, out.as_bytes(), 3),
            Ok(Command::Tv {
                channel: number,
                name: None
            }),
            "{name}"
        );
        let home = HomeState {
            tv_channel: number,
            tv_name: crate::home::channel_name(number).into(),
            ..HomeState::default()
        };
        assert_eq!(render_value(&state, &home.payload(Thing::Tv)), name);
    }
    // A channel without a name is unknown to the select.
    assert_eq!(
        render_value(&state, r#"{"channel": 42, "name": "news"}"#),
        "None"
    );
}

#[test]
fn mode_select_and_light_use_the_hubs_words() {
    let mode = config_of("smarthub_mode");
    for option in mode["options"].as_array().unwrap() {
        let option = option.as_str().unwrap();
        assert!(matches!(
            parse_set_payload(Thing::Mode, option.as_bytes(), 3),
            Ok(Command::Mode(_))
        ));
        let m = Mode::parse(option).unwrap();
        let home = HomeState {
            mode: m,
            ..HomeState::default()
        };
        assert_eq!(home.payload(Thing::Mode), option);
    }
    let light = config_of("smarthub_light");
    for (payload, action) in [
        ("payload_on", LightAction::On),
        ("payload_off", LightAction::Off),
    ] {
        let p = light[payload].as_str().unwrap();
        assert_eq!(
            parse_set_payload(Thing::Light, p.as_bytes(), 3),
            Ok(Command::Light(action))
        );
    }
    let on = HomeState {
        light: true,
        ..HomeState::default()
    };
    assert_eq!(on.payload(Thing::Light), light["payload_on"]);
    assert_eq!(
        HomeState::default().payload(Thing::Light),
        light["payload_off"]
    );
}

#[test]
fn sensor_templates_read_states_and_readings() {
    let home = HomeState {
        temperature: 23.4,
        humidity: 69.0,
        ..HomeState::default()
    };
    let climate = home.payload(Thing::Climate);
    let t = config_of("smarthub_temperature");
    assert_eq!(
        render_value(&template(&t, "value_template"), &climate),
        "23.4"
    );
    let h = config_of("smarthub_humidity");
    assert_eq!(
        render_value(&template(&h, "value_template"), &climate),
        "69.0"
    );

    let reading = r#"{"temperature": 21.5, "motion": true, "light_intensity": 300.0}"#;
    let motion = config_of("smarthub_livingroom_motion");
    assert_eq!(motion["state_topic"], "smarthub/nodes/livingroom/light");
    let m = template(&motion, "value_template");
    assert_eq!(render_value(&m, reading), "ON");
    assert_eq!(render_value(&m, r#"{"motion": false}"#), "OFF");
    // A message without the field changes nothing (HA ignores an empty result).
    assert_eq!(render_value(&m, r#"{"temperature": 1.0}"#), "");
    let lux = config_of("smarthub_livingroom_illuminance");
    assert_eq!(
        render_value(&template(&lux, "value_template"), reading),
        "300.0"
    );
    let temp = config_of("smarthub_livingroom_temperature");
    let tt = template(&temp, "value_template");
    assert_eq!(render_value(&tt, reading), "21.5");
    assert_eq!(render_value(&tt, r#"{"temperature": "hot"}"#), "");
    let hum = config_of("smarthub_bedroom_humidity");
    assert_eq!(hum["state_topic"], "smarthub/nodes/bedroom/climate");
    assert_eq!(
        render_value(
            &template(&hum, "value_template"),
            r#"{"temperature": 20.0, "humidity": 55.5, "motion": false}"#
        ),
        "55.5"
    );
}

#[test]
fn prediction_templates_read_the_prediction_message() {
    let message = json!({
        "prediction": 3,
        "probabilities": {"0": 0.1, "3": 0.7, "5": 0.2},
        "model_used": "tv-20260304T000000-ab12cd.json",
        "timestamp": "2026-03-04T12:00:00Z",
        "inputs": {"motion": true}
    })
    .to_string();
    let p = config_of("smarthub_tv_prediction");
    assert_eq!(render_value(&template(&p, "value_template"), &message), "3");
    let attributes = render_value(&template(&p, "json_attributes_template"), &message);
    let attributes: Value = serde_json::from_str(&attributes).unwrap();
    assert_eq!(
        attributes,
        json!({"prediction": 3, "probability": 0.7, "model": "tv-20260304T000000-ab12cd.json"})
    );
    // A probability missing for the predicted class is null, not an error.
    let partial = json!({"prediction": 1, "probabilities": {"0": 1.0}, "model_used": "m.json"});
    let attributes = render_value(
        &template(&p, "json_attributes_template"),
        &partial.to_string(),
    );
    let attributes: Value = serde_json::from_str(&attributes).unwrap();
    assert_eq!(attributes["probability"], Value::Null);
    // The model's training time uses Home Assistant's own filters (checked against a real HA).
    let age = config_of("smarthub_tv_model_trained");
    assert_eq!(age["value_template"], MODEL_TRAINED_TEMPLATE);
}
