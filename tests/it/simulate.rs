//! The simulator against an in-process hub: readings of every kind arrive, back-dated history is stored as
//! such with its labels, every node says `online` then `offline`, and once trained on the simulated
//! history the hub publishes predictions for every target.

use std::sync::Arc;
use std::time::Duration;

use smarthub::readings::ReadingKind;
use smarthub::simulate::{self, SimOptions, SimStats};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_household_is_ingested() {
    let hub = TestHub::start().await;
    let addr = hub.mqtt_addr();
    // Whatever the hub publishes back (states now; predictions once learning is in) is collected here.
    let mut watcher = hub.mqtt("sim-watcher").await;
    watcher.subscribe("smarthub/#").await;

    let mut options = SimOptions::new(addr.ip().to_string(), addr.port());
    options.nodes = 6;
    options.interval = Duration::from_millis(50);
    options.duration = Some(Duration::from_secs(2));
    options.history_days = 1;
    // A reading every 15 minutes: a learnable day, small enough to train on in a debug build.
    options.history_step = Duration::from_secs(15 * 60);
    options.seed = 3;
    let history = options.history_total();
    let stats = Arc::new(SimStats::default());
    let summary = simulate::run(options, stats, std::future::pending())
        .await
        .expect("the simulator runs");
    assert_eq!(summary.nodes, 6);
    assert_eq!(summary.history_sent, history);
    assert!(summary.live_sent > 0);
    assert_eq!(summary.unacked, 0);

    // Everything QoS 1 the broker acknowledged is committed once the hub drains.
    let total = summary.history_sent + summary.live_sent;
    let path = hub.db_path();
    eventually("every simulated reading stored", || {
        ReadingKind::ALL
            .iter()
            .map(|k| count_in(&path, *k))
            .sum::<u64>()
            >= total
    })
    .await;

    let conn = smarthub::store::open_reader(&path).unwrap();
    for kind in ReadingKind::ALL {
        let table = smarthub::store::table(kind);
        let label = match kind {
            ReadingKind::Light => "active",
            ReadingKind::Tv => "channel",
            ReadingKind::Climate => "fan_level",
        };
        let (backdated, live, labelled_by_node, nodes): (i64, i64, i64, i64) = conn
            .query_row(
                &format!(
                    "SELECT SUM(backdated), SUM(1 - backdated), SUM({label} IS NOT NULL AND label_source = 'node'),
                     COUNT(DISTINCT node_id) FROM {table}"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let per_node_history = history as i64 / 6;
        assert_eq!(
            backdated,
            2 * per_node_history,
            "{table}: two nodes' history"
        );
        assert!(live > 0, "{table}: live readings");
        assert_eq!(
            labelled_by_node,
            backdated + live,
            "{table}: every label from the node"
        );
        assert_eq!(nodes, 2, "{table}");
    }

    // The history spans a day: the light was both on and off, the fan at more than one level.
    let (on, off): (i64, i64) = conn
        .query_row(
            "SELECT SUM(active), SUM(1 - active) FROM light_readings WHERE backdated = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(on > 0 && off > 0, "light on {on}, off {off}");

    // Each node announced itself and left cleanly.
    let offline = || -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM nodes WHERE node_id LIKE 'sim-%' AND status = 'offline'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    eventually("six nodes offline", || offline() == 6).await;
    let online = watcher
        .try_next_on("smarthub/nodes/sim-light-1/status", Duration::from_secs(5))
        .await
        .expect("status seen");
    assert_eq!(text(&online), "online");

    // Live climate readings move the home's climate state.
    let state = watcher.next_on("smarthub/climate/state").await;
    assert!(json(&state)["temperature"].as_f64().is_some());

    // Train on the simulated history, then live readings bring a prediction for every target.
    let learner = hub.hub().learner.clone();
    learner.retrain_all().await;
    let mut options = SimOptions::new(addr.ip().to_string(), addr.port());
    options.nodes = 3;
    options.interval = Duration::from_millis(100);
    options.duration = Some(Duration::from_secs(2));
    options.seed = 4;
    simulate::run(
        options,
        Arc::new(SimStats::default()),
        std::future::pending(),
    )
    .await
    .expect("the simulator runs again");
    for target in ["light", "tv", "fan"] {
        let p = json(
            &watcher
                .next_on(&format!("smarthub/prediction/{target}"))
                .await,
        );
        assert!(p["prediction"].is_i64(), "{target}: {p}");
        assert!(
            p["model_used"]
                .as_str()
                .is_some_and(|m| m.starts_with(target)),
            "{target}: {p}"
        );
    }
    watcher.disconnect().await;
    let mut hub = hub;
    hub.stop().await;
}
