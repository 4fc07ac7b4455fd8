//! Home Assistant discovery: a client acting as Home Assistant sees every config retained, gets configs
//! then states again when it says `online`, commands through the configs' topics and templates change the
//! hub's state, and nodes that are forgotten or expired disappear (an empty retained config).

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::Publish;
use serde_json::{json, Value};
use smarthub::config::Config;
use smarthub::readings::ReadingKind;

use crate::support::*;

/// Hub entities: light, door, fan, TV, mode, temperature, humidity, 3 predictions, 3 model ages.
const HUB_ENTITIES: usize = 13;
const QUIET: Duration = Duration::from_millis(700);

fn ha_config() -> Config {
    let mut config = test_config();
    config.homeassistant.republish_delay_ms = 200;
    config.homeassistant.republish_jitter_ms = 0;
    config
}

async fn start() -> TestHub {
    TestHub::start_in(tempfile::tempdir().unwrap(), ha_config()).await
}

fn is_config(p: &Publish) -> bool {
    p.topic.starts_with("homeassistant/") && p.topic.ends_with("/config")
}

/// Non-empty configs by topic.
fn configs(messages: &[Publish]) -> BTreeMap<String, Value> {
    messages
        .iter()
        .filter(|p| is_config(p) && !p.payload.is_empty())
        .map(|p| (p.topic.clone(), json(p)))
        .collect()
}

fn find<'a>(configs: &'a BTreeMap<String, Value>, object_id: &str) -> &'a Value {
    configs
        .values()
        .find(|c| c["object_id"] == object_id)
        .unwrap_or_else(|| panic!("no config for {object_id}: {:?}", configs.keys()))
}

/// A node that says it is online and sends one reading of `kind`.
async fn node_reading(hub: &TestHub, node: &str, kind: ReadingKind, before: u64) {
    let client = hub.mqtt(node).await;
    client
        .client
        .publish(
            format!("smarthub/nodes/{node}/status"),
            rumqttc::QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    let payload = match kind {
        ReadingKind::Light => r#"{"temperature": 21.5, "motion": true, "light_intensity": 300.0}"#,
        ReadingKind::Tv => r#"{"motion": true}"#,
        ReadingKind::Climate => r#"{"temperature": 22.0, "humidity": 50.0, "motion": false}"#,
    };
    client
        .publish(&format!("smarthub/nodes/{node}/{}", kind.as_str()), payload)
        .await;
    client.wait_acked(2).await;
    hub.wait_count(kind, before + 1).await;
    client.disconnect().await;
}

fn render(template: &str, ctx: Value) -> String {
    let env = minijinja::Environment::new();
    env.render_str(
        template,
        minijinja::Value::from(minijinja::value::Serde(&ctx)),
    )
    .unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_retained_and_republished_with_states_when_home_assistant_comes_online() {
    let hub = start().await;
    node_reading(&hub, "livingroom", ReadingKind::Light, 0).await;

    // Home Assistant connects after the hub started: every config is there, retained.
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    let first = ha.drain(QUIET).await;
    let by_topic = configs(&first);
    assert_eq!(by_topic.len(), HUB_ENTITIES + 3, "{:?}", by_topic.keys());
    assert!(first.iter().all(|p| p.retain), "every config is retained");
    let hub_id = &hub.hub().hub_id;
    for (topic, config) in &by_topic {
        let unique_id = config["unique_id"].as_str().unwrap();
        assert!(unique_id.starts_with(&format!("smarthub_{hub_id}_")));
        assert!(topic.ends_with(&format!("/{unique_id}/config")), "{topic}");
    }
    let motion = find(&by_topic, "smarthub_livingroom_motion");
    assert_eq!(motion["device"]["via_device"], format!("smarthub_{hub_id}"));
    assert_eq!(
        find(&by_topic, "smarthub_light")["device"]["configuration_url"],
        format!("http://{}", hub.hub().http_addr)
    );

    // Home Assistant restarts: configs, then states.
    ha.subscribe("smarthub/+/state").await;
    let retained_states = ha.drain(QUIET).await;
    assert_eq!(retained_states.len(), 6, "the six retained states");
    ha.publish("homeassistant/status", "online").await;
    let again = ha.drain(Duration::from_millis(1500)).await;
    let order: Vec<&str> = again.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        configs(&again),
        by_topic,
        "the same configs again: {order:?}"
    );
    let last_config = again.iter().rposition(is_config).unwrap();
    let first_state = again
        .iter()
        .position(|p| p.topic.ends_with("/state"))
        .expect("states re-published");
    assert!(
        last_config < first_state,
        "configs before states: {order:?}"
    );
    let states = again.iter().filter(|p| p.topic.ends_with("/state")).count();
    assert_eq!(states, 6, "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_the_configs_change_the_hubs_state() {
    let hub = start().await;
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    let by_topic = configs(&ha.drain(QUIET).await);
    let engine = hub.hub().engine.clone();

    // Light: payload_on on the command topic.
    let light = find(&by_topic, "smarthub_light");
    ha.publish(
        light["command_topic"].as_str().unwrap(),
        light["payload_on"].as_str().unwrap(),
    )
    .await;
    eventually("light on", || engine.state().light).await;

    // Door: unlock with the PIN as HA's code, through the config's command template.
    let door = find(&by_topic, "smarthub_door");
    let unlock = render(
        door["command_template"].as_str().unwrap(),
        json!({"value": door["payload_unlock"], "code": "1234"}),
    );
    ha.publish(door["command_topic"].as_str().unwrap(), unlock)
        .await;
    eventually("door open", || engine.state().door_open).await;
    let lock = render(
        door["command_template"].as_str().unwrap(),
        json!({"value": door["payload_lock"], "code": null}),
    );
    ha.publish(door["command_topic"].as_str().unwrap(), lock)
        .await;
    eventually("door closed", || !engine.state().door_open).await;

    // TV: a channel by name.
    let tv = find(&by_topic, "smarthub_tv_channel");
    let pick = render(
        tv["command_template"].as_str().unwrap(),
        json!({"value": "spacetoon"}),
    );
    ha.publish(tv["command_topic"].as_str().unwrap(), pick)
        .await;
    eventually("tv on spacetoon", || {
        let s = engine.state();
        s.tv_channel == 3 && s.tv_name == "spacetoon"
    })
    .await;

    // Fan: a speed within the range is the level itself.
    let fan = find(&by_topic, "smarthub_fan");
    ha.publish(fan["percentage_command_topic"].as_str().unwrap(), "2")
        .await;
    eventually("fan at 2", || engine.state().fan_level == 2).await;
    let off = render(
        fan["command_template"].as_str().unwrap(),
        json!({"value": fan["payload_off"]}),
    );
    ha.publish(fan["command_topic"].as_str().unwrap(), off)
        .await;
    eventually("fan off", || engine.state().fan_level == 0).await;

    // Mode: an option.
    let mode = find(&by_topic, "smarthub_mode");
    ha.publish(mode["command_topic"].as_str().unwrap(), "smart")
        .await;
    eventually("smart mode", || {
        engine.state().mode == smarthub::home::Mode::Smart
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_node_is_removed_from_home_assistant() {
    let hub = start().await;
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    assert_eq!(configs(&ha.drain(QUIET).await).len(), HUB_ENTITIES);

    node_reading(&hub, "attic", ReadingKind::Climate, 0).await;
    let appeared = ha.drain(QUIET).await;
    let attic: Vec<String> = configs(&appeared).into_keys().collect();
    assert_eq!(attic.len(), 3, "motion, temperature, humidity: {attic:?}");

    let http = reqwest::Client::new();
    let gone = http
        .delete(hub.url("/api/v1/nodes/attic"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let cleared = ha.drain(QUIET).await;
    let mut emptied: Vec<String> = cleared
        .iter()
        .filter(|p| p.payload.is_empty())
        .map(|p| p.topic.clone())
        .collect();
    emptied.sort();
    assert_eq!(emptied, attic);

    // Nothing of it is retained any more; its readings stay.
    let mut late = hub.mqtt("late-ha").await;
    late.subscribe("homeassistant/#").await;
    assert_eq!(configs(&late.drain(QUIET).await).len(), HUB_ENTITIES);
    assert_eq!(hub.count(ReadingKind::Climate), 1);
    let again = http
        .delete(hub.url("/api/v1/nodes/attic"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let bad = http
        .delete(hub.url("/api/v1/nodes/Attic!"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_expired_while_the_hub_was_down_is_removed_after_restart() {
    let hub = start().await;
    node_reading(&hub, "shed", ReadingKind::Tv, 0).await;
    node_reading(&hub, "porch", ReadingKind::Tv, 1).await;
    let mut hub = hub;
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    assert_eq!(configs(&ha.drain(QUIET).await).len(), HUB_ENTITIES + 2);
    ha.disconnect().await;
    hub.stop().await;
    // The shed was last seen 40 days ago (the default expiry is 30).
    let conn = rusqlite::Connection::open(hub.db_path()).unwrap();
    let forty_days_ago = chrono::Utc::now().timestamp_millis() - 40 * 86_400_000;
    conn.execute(
        "UPDATE nodes SET last_seen_ms = ?1 WHERE node_id = 'shed'",
        [forty_days_ago],
    )
    .unwrap();
    drop(conn);
    let TestHub { dir, config, .. } = hub;
    let hub = TestHub::start_in(dir, config).await;

    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    let after = configs(&ha.drain(QUIET).await);
    assert_eq!(after.len(), HUB_ENTITIES + 1, "{:?}", after.keys());
    find(&after, "smarthub_porch_motion");
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let announced = smarthub::store::discovery_announced(&conn).unwrap();
    assert!(announced
        .iter()
        .all(|(_, node)| node.as_deref() != Some("shed")));
    assert!(announced
        .iter()
        .any(|(_, node)| node.as_deref() == Some("porch")));
    let shed_topic = format!(
        "homeassistant/binary_sensor/smarthub_{}_node_shed_tv_motion/config",
        hub.hub().hub_id
    );
    assert_eq!(
        smarthub::store::discovery_withdrawn(&conn, 0).unwrap(),
        std::slice::from_ref(&shed_topic)
    );

    // Home Assistant reconnects after the restart (its birth message): it is told again that the
    // shed's entity is gone, since it may have missed the empty config sent at start.
    ha.publish("homeassistant/status", "online").await;
    let told = ha.drain(Duration::from_millis(1500)).await;
    assert!(
        told.iter()
            .any(|p| p.topic == shed_topic && p.payload.is_empty()),
        "{:?}",
        told.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );

    // Seen again: back.
    node_reading(&hub, "shed", ReadingKind::Tv, 2).await;
    let back = configs(&ha.drain(QUIET).await);
    find(&back, "smarthub_shed_motion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_publishes_nothing() {
    let mut config = ha_config();
    config.homeassistant.enabled = false;
    let hub = TestHub::start_in(tempfile::tempdir().unwrap(), config).await;
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    node_reading(&hub, "livingroom", ReadingKind::Light, 0).await;
    ha.publish("homeassistant/status", "online").await;
    let heard = ha.drain(Duration::from_millis(1500)).await;
    let topics: Vec<&str> = heard.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["homeassistant/status"], "only HA's own message");
}

/// rumqttd does not re-send a retained message when a client subscribes again to a filter it already
/// has, so an entity added while Home Assistant is connected would never see the hub's `online`: the
/// hub publishes its status again once the new entity had time to subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_added_while_home_assistant_is_connected_see_the_hub_online() {
    let hub = start().await;
    let mut ha = hub.mqtt("homeassistant").await;
    ha.subscribe("homeassistant/#").await;
    ha.subscribe("smarthub/status").await;
    let first = ha.drain(QUIET).await;
    assert!(first
        .iter()
        .any(|p| p.topic == "smarthub/status" && p.retain && p.payload.as_ref() == b"online"));
    // Subscribing again to the same filter (what HA does for a new entity) replays nothing.
    ha.subscribe("smarthub/status").await;
    assert!(ha
        .try_next_on("smarthub/status", Duration::from_millis(500))
        .await
        .is_none());

    node_reading(&hub, "garage", ReadingKind::Tv, 0).await;
    let status = ha.next_on("smarthub/status").await;
    assert_eq!(text(&status), "online");
}
