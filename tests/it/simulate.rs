//! The simulator against an in-process hub: a day of back-dated history is stored as such with its
//! labels, models train on it, then live readings of every kind are stored and answered with a
//! prediction per target; every node says `online` then `offline`.

use std::sync::Arc;
use std::time::Duration;

use smarthub::learning::models::Spec;
use smarthub::learning::{self, Target, TrainOptions};
use smarthub::readings::ReadingKind;
use smarthub::simulate::{self, SimOptions, SimStats, SimSummary};

use crate::support::*;

async fn simulate(hub: &TestHub, history_days: u32, live: Duration) -> SimSummary {
    let addr = hub.mqtt_addr();
    let mut options = SimOptions::new(addr.ip().to_string(), addr.port());
    options.nodes = 6;
    options.interval = Duration::from_millis(50);
    options.duration = Some(live);
    options.history_days = history_days;
    options.seed = 3;
    let history = options.history_total();
    let summary = simulate::run(
        options,
        Arc::new(SimStats::default()),
        std::future::pending(),
    )
    .await
    .expect("the simulator runs");
    assert_eq!(summary.nodes, 6);
    assert_eq!(summary.history_sent, history);
    assert_eq!(summary.unacked, 0);
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_household_is_ingested_and_predicted() {
    let mut config = test_config();
    config.learning.registry_poll_ms = 100;
    let hub = TestHub::start_in(tempfile::tempdir().unwrap(), config).await;
    let mut watcher = hub.mqtt("sim-watcher").await;
    watcher.subscribe("smarthub/#").await;

    // A day of history only, then models trained on it (quick candidates: debug builds fit slowly).
    let history = simulate(&hub, 1, Duration::ZERO).await;
    assert_eq!(history.live_sent, 0);
    let path = hub.db_path();
    eventually("the history stored", || {
        ReadingKind::ALL
            .iter()
            .map(|k| count_in(&path, *k))
            .sum::<u64>()
            >= history.history_sent
    })
    .await;
    let options = TrainOptions {
        candidates: Some(vec![
            Spec::Tree {
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Logistic { alpha: 1.0 },
        ]),
        ..TrainOptions::default()
    };
    let (db, models) = (path.clone(), smarthub::models_dir(hub.dir.path()));
    tokio::task::spawn_blocking(move || {
        for target in Target::ALL {
            learning::retrain(&db, &models, target, &options).expect("a model trains");
        }
    })
    .await
    .unwrap();
    // The hub picks the models up from the registry.
    for route in ["/prediction_light/", "/prediction_tv/", "/prediction_fan/"] {
        let url = hub.url(route);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(&url).await.unwrap().status() != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{route}: no model loaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let live = simulate(&hub, 0, Duration::from_secs(2)).await;
    assert!(live.live_sent > 0);
    // Everything QoS 1 the broker acknowledged is committed once the hub drains.
    let total = history.history_sent + live.live_sent;
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
        let per_node_history = history.history_sent as i64 / 6;
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

    // Live climate readings move the home's climate state, and every live reading is answered with a
    // prediction for its target.
    let state = watcher.next_on("smarthub/climate/state").await;
    assert!(json(&state)["temperature"].as_f64().is_some());
    for target in ["light", "tv", "fan"] {
        let p = json(
            &watcher
                .next_on(&format!("smarthub/prediction/{target}"))
                .await,
        );
        assert!(p["prediction"].as_i64().is_some(), "{p}");
        assert!(p["model_used"].as_str().unwrap().starts_with(target), "{p}");
    }
    watcher.disconnect().await;
    let mut hub = hub;
    hub.stop().await;
}
