//! The firmware contract: every example against its schema, the hub's parser against every example of
//! what it consumes, what the hub publishes against the schemas, and the AsyncAPI addresses against
//! the topics the code builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use smarthub::home::{parse_set_payload, HomeState, Mode, Thing};
use smarthub::readings::{parse_reading, parse_status, ReadingKind, Reason, Rejection};
use smarthub::topics::Topics;

fn contracts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-contracts")
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = contracts()
        .join("schemas")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft7::new(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (file, raw payload, the payload as a JSON instance)
fn examples(valid: bool, name: &str) -> Vec<(PathBuf, Vec<u8>, Value)> {
    let dir = contracts()
        .join("examples")
        .join(if valid { "valid" } else { "invalid" })
        .join(name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        let instance = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
            Some("txt") => Value::String(String::from_utf8(raw.clone()).unwrap()),
            _ => panic!("{}: examples are .json or .txt", path.display()),
        };
        out.push((path, raw, instance));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 2, "{}: too few examples", dir.display());
    out
}

type Parser = fn(&[u8]) -> Result<(), Rejection>;

fn consumed() -> Vec<(&'static str, Parser)> {
    vec![
        ("light_reading", |p| {
            parse_reading(ReadingKind::Light, p).map(drop)
        }),
        ("tv_reading", |p| {
            parse_reading(ReadingKind::Tv, p).map(drop)
        }),
        ("climate_reading", |p| {
            parse_reading(ReadingKind::Climate, p).map(drop)
        }),
        ("node_status", |p| parse_status(p).map(drop)),
        ("light_set", |p| {
            parse_set_payload(Thing::Light, p, 3).map(drop)
        }),
        ("door_set", |p| {
            parse_set_payload(Thing::Door, p, 3).map(drop)
        }),
        ("tv_set", |p| parse_set_payload(Thing::Tv, p, 3).map(drop)),
        ("fan_set", |p| parse_set_payload(Thing::Fan, p, 3).map(drop)),
        ("mode_set", |p| {
            parse_set_payload(Thing::Mode, p, 3).map(drop)
        }),
    ]
}

const PUBLISHED: &[&str] = &[
    "hub_status",
    "error",
    "light_state",
    "door_state",
    "tv_state",
    "fan_state",
    "mode_state",
    "climate_state",
    "prediction",
    "suggestion",
];

#[test]
fn every_example_matches_its_schema() {
    let names: Vec<&str> = consumed()
        .iter()
        .map(|(n, _)| *n)
        .chain(PUBLISHED.iter().copied())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(contracts().join("schemas"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .replace(".schema.json", "")
        })
        .collect();
    assert_eq!(
        on_disk,
        names.iter().map(|s| s.to_string()).collect(),
        "one schema per payload"
    );
    for name in names {
        let validator = schema(name);
        for (path, _, instance) in examples(true, name) {
            let errors: Vec<String> = validator
                .iter_errors(&instance)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{} should be valid: {errors:?}",
                path.display()
            );
        }
        for (path, _, instance) in examples(false, name) {
            assert!(
                !validator.is_valid(&instance),
                "{} should be invalid",
                path.display()
            );
        }
    }
}

#[test]
fn the_parser_agrees_with_the_examples() {
    for (name, parse) in consumed() {
        for (path, raw, _) in examples(true, name) {
            if let Err(e) = parse(&raw) {
                panic!("{} refused: {e}", path.display());
            }
        }
        for (path, raw, _) in examples(false, name) {
            assert!(parse(&raw).is_err(), "{} accepted", path.display());
        }
    }
}

#[test]
fn what_the_hub_publishes_matches_the_schemas() {
    let states = [
        HomeState::default(),
        HomeState {
            light: true,
            door_open: true,
            tv_channel: 3,
            tv_name: "spacetoon".into(),
            fan_level: 3,
            mode: Mode::Smart,
            temperature: -12.5,
            humidity: 100.0,
            ..HomeState::default()
        },
        HomeState {
            mode: Mode::Assisted,
            fan_level: 10,
            temperature: 23.0,
            ..HomeState::default()
        },
    ];
    for state in &states {
        for thing in Thing::ALL {
            let name = format!("{}_state", thing.as_str());
            let payload = state.payload(thing);
            let instance: Value = match thing {
                Thing::Tv | Thing::Climate => serde_json::from_str(&payload).unwrap(),
                _ => Value::String(payload.clone()),
            };
            assert!(schema(&name).is_valid(&instance), "{name}: {payload}");
        }
    }
    for status in ["online", "offline"] {
        assert!(schema("hub_status").is_valid(&Value::String(status.into())));
    }
    for reason in Reason::ALL {
        let body = smarthub::engine::error_body(
            "smarthub/nodes/x/light",
            &Rejection::new(reason, "temperature: missing"),
        );
        let instance: Value = serde_json::from_str(&body).unwrap();
        assert!(schema("error").is_valid(&instance), "{body}");
    }
}

#[test]
fn asyncapi_addresses_are_the_ones_the_code_builds() {
    let text = std::fs::read_to_string(contracts().join("asyncapi.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["asyncapi"].as_str().unwrap_or("").split('.').next(),
        Some("3")
    );
    let in_doc: BTreeSet<String> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap().to_owned())
        .collect();
    let in_code: BTreeSet<String> = Topics::new("smarthub")
        .contract_addresses()
        .into_iter()
        .collect();
    assert_eq!(in_doc, in_code);
}
