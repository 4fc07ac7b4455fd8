//! The hub's core: ingest, state, refusals, shutdown, ports, door, backup.

use std::time::Duration;

use smarthub::home::{Command, CommandError, LightAction, Origin};
use smarthub::readings::ReadingKind;

use crate::support::*;

/// 1,000 readings from 10 concurrent QoS 1 clients across the three kinds are all stored with their fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_readings_are_all_stored() {
    let hub = TestHub::start().await;
    let mut tasks = Vec::new();
    for c in 0..10 {
        let client = hub.mqtt(&format!("node-{c}")).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let node = format!("node-{c}");
                let (leaf, payload) = match i % 3 {
                    0 => (
                        "light",
                        format!(
                            r#"{{"temperature": {}.5, "motion": true, "light_intensity": {}.0, "active": {}}}"#,
                            c,
                            i,
                            i % 2 == 0
                        ),
                    ),
                    1 => ("tv", format!(r#"{{"motion": false, "channel": {}}}"#, c % 7)),
                    _ => (
                        "climate",
                        format!(
                            r#"{{"temperature": 21.25, "humidity": {}.0, "motion": true, "fan_level": 2}}"#,
                            c * 5
                        ),
                    ),
                };
                client
                    .publish(&format!("smarthub/nodes/{node}/{leaf}"), payload)
                    .await;
            }
            client.wait_acked(100).await;
            client.disconnect().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Per client: i % 3 == 0 → 34 light, 33 tv, 33 climate.
    hub.wait_count(ReadingKind::Light, 340).await;
    hub.wait_count(ReadingKind::Tv, 330).await;
    hub.wait_count(ReadingKind::Climate, 330).await;

    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let (nodes, sum_intensity, actives): (i64, f64, i64) = conn
        .query_row(
            "SELECT COUNT(DISTINCT node_id), SUM(light_intensity), SUM(active) FROM light_readings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(nodes, 10);
    // i in 0,3,...,99 per client: sum = 3 * (0 + ... + 33) = 1683, times 10 clients.
    assert_eq!(sum_intensity, 16830.0);
    // active when i is even: i = 0, 6, 12, ... 96 → 17 per client.
    assert_eq!(actives, 170);
    let (temp, labelled): (f64, String) = conn
        .query_row(
            "SELECT temperature, label_source FROM light_readings WHERE node_id = 'node-7' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(temp, 7.5);
    assert_eq!(labelled, "node");
    let (humidity, fan): (f64, i64) = conn
        .query_row(
            "SELECT humidity, fan_level FROM climate_readings WHERE node_id = 'node-3' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((humidity, fan), (15.0, 2));
    let channels: i64 = conn
        .query_row("SELECT COUNT(DISTINCT channel) FROM tv_readings", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(channels, 7);
    let days_ok: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM tv_readings WHERE day_of_week BETWEEN 1 AND 7 AND month BETWEEN 1 AND 12
             AND time_of_day_s >= 0 AND time_of_day_s < 86400 AND received_ms > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(days_ok, 330);
    let mut hub = hub;
    assert_eq!(
        hub.metric("smarthub_readings_stored_total{kind=\"tv\"}")
            .await,
        330
    );
    hub.stop().await;
}

/// `light/set ON` → retained `light/state ON` for a new subscriber, also after a restart, with `online`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_state_is_retained_and_survives_restart() {
    let hub = TestHub::start().await;
    let cmd = hub.mqtt("commander").await;
    cmd.publish("smarthub/light/set", "ON").await;
    cmd.wait_acked(1).await;
    let state = hub.hub().engine.clone();
    eventually("light on", || state.state().light).await;
    let mut late = hub.mqtt("late").await;
    late.subscribe("smarthub/light/state").await;
    assert_eq!(text(&late.next_on("smarthub/light/state").await), "ON");
    // The retained command was cleared: a new subscriber to /set gets nothing replayed.
    let mut setter = hub.mqtt("set-watch").await;
    setter.subscribe("smarthub/light/set").await;
    if let Some(p) = setter
        .try_next_on("smarthub/light/set", Duration::from_millis(300))
        .await
    {
        assert!(p.payload.is_empty(), "a command was replayed: {}", text(&p));
    }
    cmd.disconnect().await;
    late.disconnect().await;
    setter.disconnect().await;

    let mut hub = hub.restart().await;
    let mut after = hub.mqtt("after-restart").await;
    after.subscribe("smarthub/light/state").await;
    after.subscribe("smarthub/status").await;
    assert_eq!(text(&after.next_on("smarthub/light/state").await), "ON");
    assert_eq!(text(&after.next_on("smarthub/status").await), "online");
    assert!(hub.hub().engine.state().light);
    after.disconnect().await;
    hub.stop().await;
}

/// A retained command is executed once and then cleared, so it cannot replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_command_runs_once_and_is_cleared() {
    let mut hub = TestHub::start().await;
    let cmd = hub.mqtt("retainer").await;
    cmd.client
        .publish("smarthub/fan/set", rumqttc::QoS::AtLeastOnce, true, "2")
        .await
        .unwrap();
    cmd.wait_acked(1).await;
    let engine = hub.hub().engine.clone();
    eventually("fan 2", || engine.state().fan_level == 2).await;
    let mut watcher = hub.mqtt("watcher").await;
    watcher.subscribe("smarthub/fan/set").await;
    if let Some(p) = watcher
        .try_next_on("smarthub/fan/set", Duration::from_millis(500))
        .await
    {
        assert!(
            p.payload.is_empty(),
            "retained command replayed: {}",
            text(&p)
        );
    }
    let n = hub.metric("smarthub_commands_total{thing=\"fan\"}").await;
    assert_eq!(n, 1);
    cmd.disconnect().await;
    watcher.disconnect().await;
    hub.stop().await;
}

/// Each bad input: nothing stored, a reason on the right error topic, the counter up, hub alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_reason() {
    let mut hub = TestHub::start().await;
    let mut watch = hub.mqtt("watch").await;
    watch.subscribe("smarthub/error").await;
    watch.subscribe("smarthub/nodes/+/error").await;
    let pubr = hub.mqtt("bad-node").await;
    let future_ts = chrono::Utc::now().timestamp() + 3600;
    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        // (topic, payload, error topic, reason, text the error must contain)
        (
            "smarthub/nodes/n1/light",
            "{not json".into(),
            "smarthub/nodes/n1/error",
            "malformed",
            "JSON",
        ),
        (
            "smarthub/nodes/n1/light",
            r#"{"motion": true, "light_intensity": 3}"#.into(),
            "smarthub/nodes/n1/error",
            "invalid_field",
            "temperature",
        ),
        (
            "smarthub/nodes/n1/light",
            r#"{"temperature": "hot", "motion": true, "light_intensity": 3}"#.into(),
            "smarthub/nodes/n1/error",
            "invalid_field",
            "temperature",
        ),
        (
            "smarthub/nodes/n1/light",
            r#"{"temperature": 120, "motion": true, "light_intensity": 3}"#.into(),
            "smarthub/nodes/n1/error",
            "out_of_range",
            "temperature",
        ),
        (
            "smarthub/nodes/n1/light",
            r#"{"temperature": 20, "motion": true, "light_intensity": -3}"#.into(),
            "smarthub/nodes/n1/error",
            "out_of_range",
            "light_intensity",
        ),
        (
            "smarthub/nodes/n1/climate",
            r#"{"temperature": 20, "humidity": 140, "motion": true}"#.into(),
            "smarthub/nodes/n1/error",
            "out_of_range",
            "humidity",
        ),
        (
            "smarthub/nodes/n1/climate",
            r#"{"temperature": 20, "humidity": 40, "motion": true, "fan_level": 11}"#.into(),
            "smarthub/nodes/n1/error",
            "out_of_range",
            "fan_level",
        ),
        (
            "smarthub/nodes/n1/tv",
            r#"{"motion": true, "channel": -2}"#.into(),
            "smarthub/nodes/n1/error",
            "out_of_range",
            "channel",
        ),
        (
            "smarthub/nodes/n1/tv",
            format!(r#"{{"motion": true, "channel": 2, "ts": {future_ts}}}"#),
            "smarthub/nodes/n1/error",
            "future_ts",
            "ts",
        ),
        (
            "smarthub/nodes/n1/status",
            "maybe".into(),
            "smarthub/nodes/n1/error",
            "invalid_field",
            "status",
        ),
        (
            "smarthub/nodes/Bad.Node/light",
            r#"{"temperature": 20, "motion": true, "light_intensity": 3}"#.into(),
            "smarthub/error",
            "bad_node_id",
            "Bad.Node",
        ),
        (
            "smarthub/garage/set",
            "ON".into(),
            "smarthub/error",
            "unknown_topic",
            "unknown topic",
        ),
        (
            "smarthub/fan/set",
            "4".into(),
            "smarthub/error",
            "out_of_range",
            "fan",
        ),
        (
            "smarthub/tv/set",
            "-1".into(),
            "smarthub/error",
            "out_of_range",
            "channel",
        ),
        (
            "smarthub/mode/set",
            "party".into(),
            "smarthub/error",
            "malformed",
            "mode",
        ),
        (
            "smarthub/door/set",
            r#"{"state": "OPEN", "pin_code": "9999"}"#.into(),
            "smarthub/error",
            "unauthorized",
            "PINCODE INVALID",
        ),
    ];
    for (topic, payload, error_topic, reason, needle) in &cases {
        let before = hub
            .metric(&format!(
                "smarthub_messages_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await;
        pubr.publish(topic, payload.clone()).await;
        let err = json(&watch.next_on(error_topic).await);
        assert_eq!(err["reason"], *reason, "{topic} {payload}: {err}");
        assert_eq!(err["topic"], *topic);
        let message = err["error"].as_str().unwrap();
        assert!(message.contains(needle), "{topic} {payload}: {message}");
        assert!(!message.contains("9999"), "a PIN leaked: {message}");
        let after = hub
            .metric(&format!(
                "smarthub_messages_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert_eq!(after, before + 1, "{topic} {payload}");
    }
    for kind in ReadingKind::ALL {
        assert_eq!(hub.count(kind), 0, "nothing stored for {kind:?}");
    }
    let state = hub.hub().engine.state();
    assert_eq!(
        (state.fan_level, state.tv_channel, state.door_open),
        (0, 0, false)
    );
    // The hub is alive: a good reading is stored.
    pubr.publish("smarthub/nodes/n1/tv", r#"{"motion": true, "channel": 3}"#)
        .await;
    hub.wait_count(ReadingKind::Tv, 1).await;
    let health: serde_json::Value = reqwest::get(hub.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    pubr.disconnect().await;
    watch.disconnect().await;
    hub.stop().await;
}

/// 10,000 QoS 1 readings as fast as one client can, then shutdown: all are stored and `offline` was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_every_acknowledged_reading() {
    let mut hub = TestHub::start().await;
    let mut watcher = hub.mqtt("status-watch").await;
    watcher.subscribe("smarthub/status").await;
    assert_eq!(text(&watcher.next_on("smarthub/status").await), "online");
    let node = hub.mqtt("fast-node").await;
    for i in 0..10_000 {
        node.publish(
            "smarthub/nodes/fast/climate",
            format!(
                r#"{{"temperature": 20.5, "humidity": {}, "motion": false}}"#,
                i % 100
            ),
        )
        .await;
    }
    node.wait_acked(10_000).await;
    // The drain thread kept up: no gap in the broker log's cursor.
    assert_eq!(hub.metric("smarthub_messages_lost_total").await, 0);
    let path = hub.db_path();
    hub.stop().await;
    assert_eq!(count_in(&path, ReadingKind::Climate), 10_000);
    assert_eq!(text(&watcher.next_on("smarthub/status").await), "offline");
}

/// A second hub on the same MQTT port fails, naming the port; so does the binary (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hub_on_the_same_port_fails() {
    let mut hub = TestHub::start().await;
    let port = hub.mqtt_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.set_mqtt_listen(hub.mqtt_addr()).unwrap();
    let err = smarthub::Hub::start(config, dir.path())
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args([
            "run",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--mqtt-listen",
            &hub.mqtt_addr().to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    hub.stop().await;
    // Shutdown freed the port.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after shutdown");
}

/// Wrong PINs lock the door; the right PIN then is refused until the lockout ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_locks_out_after_wrong_pins() {
    let mut hub = TestHub::start().await;
    let engine = hub.hub().engine.clone();
    let open = |pin: &str| Command::DoorOpen { pin: pin.into() };
    assert!(
        engine
            .command(open("1234"), Origin::Rest)
            .await
            .unwrap()
            .door_open
    );
    engine
        .command(Command::DoorClose, Origin::Rest)
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            engine
                .command(open("0000"), Origin::Rest)
                .await
                .unwrap_err(),
            CommandError::PinInvalid
        );
    }
    let locked = engine
        .command(open("1234"), Origin::Rest)
        .await
        .unwrap_err();
    assert!(
        matches!(locked, CommandError::LockedOut { retry_after_s } if retry_after_s > 0),
        "{locked:?}"
    );
    assert!(!engine.state().door_open);
    // Closing never needs a PIN, even when locked out.
    engine
        .command(Command::DoorClose, Origin::Rest)
        .await
        .unwrap();
    // MQTT sees the lockout too.
    let mut watch = hub.mqtt("door-watch").await;
    watch.subscribe("smarthub/error").await;
    watch
        .publish(
            "smarthub/door/set",
            r#"{"state": "OPEN", "pin_code": "1234"}"#,
        )
        .await;
    let err = json(&watch.next_on("smarthub/error").await);
    assert_eq!(err["reason"], "unauthorized");
    assert!(err["error"].as_str().unwrap().contains("locked"), "{err}");
    assert!(!engine.state().door_open);
    watch.disconnect().await;
    hub.stop().await;
}

/// A command over the engine is published on MQTT, and an MQTT `/set` is seen by the engine's readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_path_for_every_adapter() {
    let mut hub = TestHub::start().await;
    let engine = hub.hub().engine.clone();
    let mut sub = hub.mqtt("sub").await;
    sub.subscribe("smarthub/+/state").await;
    // Skip the retained initial states.
    while sub
        .try_next_on("smarthub/light/state", Duration::from_millis(300))
        .await
        .is_some()
    {}
    engine
        .command(Command::Light(LightAction::Toggle), Origin::Rest)
        .await
        .unwrap();
    assert_eq!(text(&sub.next_on("smarthub/light/state").await), "ON");
    sub.publish("smarthub/tv/set", r#"{"channel": 3, "name": "spacetoon"}"#)
        .await;
    let tv = json(&sub.next_on("smarthub/tv/state").await);
    assert_eq!(tv, serde_json::json!({"channel": 3, "name": "spacetoon"}));
    assert_eq!(engine.state().tv_name, "spacetoon");
    sub.publish("smarthub/mode/set", "Smart Mode").await;
    assert_eq!(text(&sub.next_on("smarthub/mode/state").await), "smart");
    // A climate reading updates the climate state; a reading without a label gets the home's state.
    sub.publish(
        "smarthub/nodes/room/climate",
        r#"{"temperature": 24.5, "humidity": 55.0, "motion": true}"#,
    )
    .await;
    let climate = json(&sub.next_on("smarthub/climate/state").await);
    assert_eq!(
        climate,
        serde_json::json!({"temperature": 24.5, "humidity": 55.0})
    );
    sub.publish(
        "smarthub/nodes/room/light",
        r#"{"temperature": 24.5, "motion": true, "light_intensity": 10}"#,
    )
    .await;
    hub.wait_count(ReadingKind::Light, 1).await;
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let (active, source): (bool, String) = conn
        .query_row("SELECT active, label_source FROM light_readings", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(active, "labelled with the light's current state");
    assert_eq!(source, "state");
    sub.disconnect().await;
    hub.stop().await;
}

/// `backup` while readings flow yields a database that opens and holds what was committed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_ingesting() {
    let mut hub = TestHub::start().await;
    let node = hub.mqtt("backup-node").await;
    for _ in 0..500 {
        node.publish("smarthub/nodes/b/tv", r#"{"motion": true, "channel": 1}"#)
            .await;
    }
    node.wait_acked(500).await;
    hub.wait_count(ReadingKind::Tv, 500).await;
    // Keep ingesting while the backup runs.
    let writer = tokio::spawn(async move {
        for _ in 0..2000 {
            node.publish("smarthub/nodes/b/tv", r#"{"motion": false, "channel": 2}"#)
                .await;
        }
        node.wait_acked(2500).await;
        node
    });
    let dest = hub.dir.path().join("backup.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args([
            "backup",
            "--data-dir",
            hub.dir.path().to_str().unwrap(),
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = count_in(&dest, ReadingKind::Tv);
    assert!((500..=2500).contains(&n), "backup holds {n} rows");
    let conn = rusqlite_check(&dest);
    assert_eq!(conn, "ok");
    // Refuses to overwrite.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args([
            "backup",
            "--data-dir",
            hub.dir.path().to_str().unwrap(),
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    writer.await.unwrap().disconnect().await;
    hub.stop().await;
}

fn rusqlite_check(path: &std::path::Path) -> String {
    let conn = smarthub::store::open_reader(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// `check-config` lists every problem and exits 1; `print-default-config` prints a valid config.
#[test]
fn check_config_cli() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        smarthub::config::DEFAULT_CONFIG
            .replace("max_segment_count = 4", "max_segment_count = 1")
            .replace(
                "listen = \"0.0.0.0:8000\"",
                "listen = \"0.0.0.0:8000\"\nport = 1",
            ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_segment_count") && err.contains("port"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .arg("print-default-config")
        .output()
        .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With a password file, MQTT clients need a valid user name and password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passwords_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    smarthub::auth::set_password(&file, "sensor", "correct horse").unwrap();
    let mut config = test_config();
    config.mqtt_auth.password_file = file.display().to_string();
    let mut hub = TestHub::start_in(dir, config).await;
    let addr = hub.mqtt_addr();
    for (creds, should_connect) in [
        (None, false),
        (Some(("sensor", "wrong")), false),
        (Some(("nobody", "correct horse")), false),
        (Some(("sensor", "correct horse")), true),
    ] {
        let mut opts = rumqttc::MqttOptions::new("auth-probe", addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = creds {
            opts.set_credentials(u, p);
        }
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert_eq!(outcome, should_connect, "{creds:?}");
    }
    assert!(
        hub.metric("smarthub_messages_rejected_total{reason=\"unauthorized\"}")
            .await
            >= 2
    );
    hub.stop().await;
}

/// A locked database: the hub keeps serving, /healthz says degraded, and the reading lands afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_degrades_then_recovers() {
    let mut hub = TestHub::start().await;
    let node = hub.mqtt("while-locked").await;
    let mut blocker = rusqlite::Connection::open(hub.db_path()).unwrap();
    let lock = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    node.publish("smarthub/nodes/n/tv", r#"{"motion": true, "channel": 1}"#)
        .await;
    node.wait_acked(1).await;
    let url = hub.url("/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let health: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if health["status"] == "degraded" {
            assert!(
                health["database"]["retry_pending"].as_u64().unwrap() >= 1,
                "{health}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never degraded: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hub.metric("smarthub_db_write_failures_total").await >= 1);
    // Still serving MQTT and HTTP.
    let resp = reqwest::get(hub.url("/get_light_state/")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    lock.rollback().unwrap();
    drop(blocker);
    hub.wait_count(ReadingKind::Tv, 1).await;
    let health: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    node.disconnect().await;
    hub.stop().await;
}

/// `--mqtt5-listen` opens an MQTT 5 listener beside 3.1.1; readings published over it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_listener_is_opt_in_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let v5_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.set_mqtt5_listen(v5_addr).unwrap();
    let mut hub = TestHub::start_in(dir, config).await;
    assert_eq!(hub.hub().mqtt_listeners.len(), 2);
    let mut opts = rumqttc::v5::MqttOptions::new("v5-node", "127.0.0.1", v5_addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = acks.clone();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(_)) = event {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    client
        .publish(
            "smarthub/nodes/v5/tv",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"motion": true, "channel": 4}"#,
        )
        .await
        .unwrap();
    hub.wait_count(ReadingKind::Tv, 1).await;
    eventually("PUBACK over MQTT 5", || {
        acks.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    task.abort();
    hub.stop().await;
    let default = smarthub::config::Config::default_config();
    assert_eq!(
        default.mqtt_listeners().len(),
        1,
        "MQTT 5 is off by default"
    );
}

/// The real binary: ready on its ports, SIGTERM → every acknowledged reading stored, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let http_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smarthub"))
        .args([
            "run",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--mqtt-listen",
            &format!("127.0.0.1:{mqtt_port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{http_port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(&health).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = Mqtt::connect(
        format!("127.0.0.1:{mqtt_port}").parse().unwrap(),
        "sig-node",
    )
    .await;
    for _ in 0..2000 {
        node.publish(
            "smarthub/nodes/sig/tv",
            r#"{"motion": false, "channel": 2}"#,
        )
        .await;
    }
    node.wait_acked(2000).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
    assert_eq!(
        count_in(&smarthub::database_path(dir.path()), ReadingKind::Tv),
        2000
    );
    node.disconnect().await;
}

/// The door PIN comes from a file (never from broker.toml); a malformed one stops the start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_pin_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("door_pin");
    std::fs::write(&pin_file, "4321\n").unwrap();
    let mut config = test_config();
    config.door.pin_file = pin_file.display().to_string();
    let mut hub = TestHub::start_in(dir, config.clone()).await;
    let engine = hub.hub().engine.clone();
    let open = |pin: &str| Command::DoorOpen { pin: pin.into() };
    assert_eq!(
        engine
            .command(open("1234"), Origin::Rest)
            .await
            .unwrap_err(),
        CommandError::PinInvalid
    );
    assert!(
        engine
            .command(open("4321"), Origin::Rest)
            .await
            .unwrap()
            .door_open
    );
    hub.stop().await;

    std::fs::write(&pin_file, "12345\n").unwrap();
    let other = tempfile::tempdir().unwrap();
    let err = smarthub::Hub::start(test_config_with_pin(&config), other.path())
        .await
        .err()
        .expect("a 5-character PIN is refused");
    assert!(err.to_string().contains("door_pin"), "{err}");
}

fn test_config_with_pin(template: &smarthub::config::Config) -> smarthub::config::Config {
    let mut config = test_config();
    config.door.pin_file = template.door.pin_file.clone();
    config
}

/// A hub for the flood tests: `backlog` in flight at most, holds that give up after `pause_ms`
/// without progress, and the smallest log `check-config` allows (2 x 64 KiB, ~2,000 readings), so that
/// a flood overflows it.
async fn flood_hub(backlog: u64, pause_ms: u64) -> TestHub {
    let mut config = test_config();
    config.hub.ingest_backlog = backlog;
    config.hub.ingest_pause_max_ms = pause_ms;
    config.broker.router.max_segment_size = 64 * 1024;
    config.broker.router.max_segment_count = 2;
    TestHub::start_in(tempfile::tempdir().unwrap(), config).await
}

/// A stalled database under a flood: the hub holds at most `[hub] ingest_backlog` messages, stops
/// reading the broker while full, holds the connections back for `ingest_pause_max_ms` and then lets
/// them go on, and every acknowledged reading is afterwards either stored or counted in
/// `smarthub_messages_lost_total` (the broker log's overflow): bounded memory, no silent loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_backlog_is_bounded_and_overflow_is_counted() {
    const SENT: u64 = 20_000;
    const BACKLOG: u64 = 100;
    let mut hub = flood_hub(BACKLOG, 200).await;
    let mut blocker = rusqlite::Connection::open(hub.db_path()).unwrap();
    let lock = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let node = hub.mqtt("flood").await;
    for i in 0..SENT {
        node.publish(
            "smarthub/nodes/flood/tv",
            format!(r#"{{"motion": true, "channel": {}}}"#, i % 7),
        )
        .await;
    }
    node.wait_acked(SENT as usize).await;
    let stalls = "smarthub_ingest_stalls_total ";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while hub.metric(stalls).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = hub.metric("smarthub_ingest_backlog ").await;
    assert!(held <= BACKLOG, "backlog {held} > {BACKLOG}");
    assert_eq!(count_in(&hub.db_path(), ReadingKind::Tv), 0);
    lock.rollback().unwrap();
    drop(blocker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (stored, lost) = loop {
        let stored = hub.count(ReadingKind::Tv);
        let lost = hub.metric("smarthub_messages_lost_total ").await;
        if stored + lost >= SENT {
            break (stored, lost);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} stored + {lost} lost of {SENT} acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("flood: {stored} stored, {lost} lost of {SENT}");
    assert_eq!(stored + lost, SENT, "{stored} stored, {lost} lost");
    assert!(lost > 0, "the log should have overflowed");
    assert!(stored >= BACKLOG, "{stored} stored");
    assert_eq!(hub.metric("smarthub_ingest_backlog ").await, 0);
    assert!(hub.metric("smarthub_ingest_holds_total ").await >= 1);
    node.disconnect().await;
    hub.stop().await;
}

/// The same flood with a short stall of the database: while the hub is behind it holds the MQTT
/// connections back (the publisher waits for its acknowledgements), so the broker's small log never
/// overflows and every reading is stored. With `ingest_pause_max_ms = 0` this flood loses readings
/// (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hub_holds_the_publishers_back_instead_of_losing_readings() {
    const SENT: u64 = 20_000;
    let mut hub = flood_hub(100, 30_000).await;
    let mut blocker = rusqlite::Connection::open(hub.db_path()).unwrap();
    let lock = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let node = hub.mqtt("flood").await;
    let publisher = {
        let client = node.client.clone();
        tokio::spawn(async move {
            for i in 0..SENT {
                client
                    .publish(
                        "smarthub/nodes/flood/tv",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        format!(r#"{{"motion": true, "channel": {}}}"#, i % 7),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while hub.metric("smarthub_ingest_holds_total ").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connections were never held back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held: the publisher gets no more acknowledgements than the hub has room for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = node.acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (acked as u64) < SENT / 2,
        "{acked} of {SENT} acknowledged while the hub was held up"
    );
    assert_eq!(count_in(&hub.db_path(), ReadingKind::Tv), 0);
    lock.rollback().unwrap();
    drop(blocker);
    publisher.await.unwrap();
    node.wait_acked(SENT as usize).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while hub.count(ReadingKind::Tv) < SENT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {SENT} stored",
            hub.count(ReadingKind::Tv)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hub.metric("smarthub_messages_lost_total ").await, 0);
    node.disconnect().await;
    hub.stop().await;
}
