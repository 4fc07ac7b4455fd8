//! Learning: models recover known habits, the registry keeps the better model, retraining is atomic and
//! scheduled, live readings produce predictions, and the modes act on them (the user always wins).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use serde_json::Value;
use smarthub::home::{Command, LightAction, Mode, Origin};
use smarthub::learning::models::Spec;
use smarthub::learning::registry::{self, Outcome};
use smarthub::learning::synthetic::{self, Generator};
use smarthub::learning::{self, runtime, Target, TrainOptions, TrainingSet};
use smarthub::schedule::Clock;

use crate::support::*;

/// A quick candidate list: debug builds fit ~40× slower than release.
fn quick() -> TrainOptions {
    TrainOptions {
        candidates: Some(vec![
            Spec::Tree {
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Logistic { alpha: 1.0 },
        ]),
        min_rows: 30,
        ..TrainOptions::default()
    }
}

/// A data directory whose database holds `rows` synthetic rows of each target and a trained light model.
fn trained_dir(rows: usize) -> tempfile::TempDir {
    trained_dir_with(rows, &quick())
}

fn trained_dir_with(rows: usize, opts: &TrainOptions) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = smarthub::database_path(dir.path());
    let mut conn = smarthub::store::open_migrated(&db).unwrap();
    synthetic::fill(&mut conn, Target::Light, rows, 1, &mut |_| {}).unwrap();
    drop(conn);
    let done =
        learning::retrain(&db, &smarthub::models_dir(dir.path()), Target::Light, opts).unwrap();
    assert!(matches!(done.outcome, Outcome::Promoted(_)));
    dir
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("firmware-contracts/schemas")
        .join(format!("{name}.schema.json"));
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft7::new(&value).unwrap()
}

/// A light reading the synthetic habit says means "on" (dark and someone moves), without a label.
const DARK_MOTION: &str = r#"{"temperature": 21.0, "motion": true, "light_intensity": 20.0}"#;

async fn set_mode(hub: &TestHub, mode: Mode) {
    hub.hub()
        .engine
        .command(Command::Mode(mode), Origin::Rest)
        .await
        .unwrap();
}

fn state_changes(hub: &TestHub, thing: &str) -> Vec<(String, String)> {
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT payload, origin FROM state_changes WHERE thing = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([thing], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn start_with(dir: tempfile::TempDir) -> TestHub {
    let mut config = test_config();
    config.learning.registry_poll_ms = 100;
    config.learning.min_confidence = 0.6;
    TestHub::start_in(dir, config).await
}

/// Light on when dark and moving; channel by hour: trained on 400 rows, right on ≥ 90% of 300 new ones
/// (3% of labels are noise, so ~97% is the ceiling).
#[test]
fn trained_models_recover_known_habits() {
    for target in [Target::Light, Target::Tv] {
        let mut gen = Generator::new(11, 300.0, 0.03);
        let mut set = TrainingSet::new(target);
        for _ in 0..400 {
            let (i, l) = gen.next(target);
            set.push(&i, l);
        }
        // One candidate of each family, the forest small: debug builds fit ~40× slower.
        let opts = TrainOptions {
            candidates: Some(vec![
                Spec::Logistic { alpha: 1.0 },
                Spec::Tree {
                    max_depth: 0,
                    min_samples_leaf: 1,
                },
                Spec::Forest {
                    trees: 10,
                    max_features: 0,
                    max_depth: 0,
                    min_samples_leaf: 1,
                },
                Spec::Knn {
                    k: 5,
                    manhattan: true,
                },
            ]),
            ..TrainOptions::default()
        };
        let trained = learning::train(&set, &opts).unwrap();
        let mut right = 0;
        for _ in 0..300 {
            let (i, _) = gen.next(target);
            let p = trained
                .model
                .predict_proba(&learning::features::features(target, &i))
                .unwrap();
            let class = trained.model.classes[learning::models::argmax(&p)];
            if class == synthetic::rule(target, &i) {
                right += 1;
            }
        }
        let accuracy = f64::from(right) / 300.0;
        assert!(
            accuracy >= 0.9,
            "{target}: {} reached {accuracy} on held-out rows",
            trained.spec.name()
        );
    }
}

/// Labels the hub's own automation produced are not trained on.
#[test]
fn automation_labels_are_excluded_from_training() {
    let dir = tempfile::tempdir().unwrap();
    let db = smarthub::database_path(dir.path());
    let mut conn = smarthub::store::open_migrated(&db).unwrap();
    synthetic::fill(&mut conn, Target::Light, 50, 1, &mut |_| {}).unwrap();
    // 30 more rows whose labels the automation set: all "on".
    conn.execute(
        "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
         backdated, source, temperature, motion, light_intensity, active, label_source)
         SELECT node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month, backdated, source,
         temperature, motion, light_intensity, 1, 'auto' FROM light_readings LIMIT 30",
        [],
    )
    .unwrap();
    let set = TrainingSet::load(&conn, Target::Light).unwrap();
    assert_eq!(set.len(), 50);
    let total: i64 = conn
        .query_row("SELECT COUNT(*) FROM light_readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 80);
}

/// A candidate that validates worse never replaces the active model; one as good does.
#[test]
fn a_worse_candidate_never_replaces_a_better_active_model() {
    let dir = trained_dir(300);
    let db = smarthub::database_path(dir.path());
    let models = smarthub::models_dir(dir.path());
    let conn = smarthub::store::open_reader(&db).unwrap();
    let good = registry::active_version(&conn, Target::Light)
        .unwrap()
        .unwrap();
    assert!(good.balanced_accuracy > 0.85, "{good:?}");

    // Scrambled labels: the history no longer says anything.
    let rw = smarthub::store::open_migrated(&db).unwrap();
    rw.execute("UPDATE light_readings SET active = (abs(random()) % 2)", [])
        .unwrap();
    let done = learning::retrain(&db, &models, Target::Light, &quick()).unwrap();
    match done.outcome {
        Outcome::KeptActive { active, candidate } => {
            assert_eq!(active.id, good.id);
            assert!(candidate.balanced_accuracy < good.balanced_accuracy);
        }
        Outcome::Promoted(v) => panic!("a worse model was promoted: {v:?}"),
    }
    let still = registry::active_version(&conn, Target::Light)
        .unwrap()
        .unwrap();
    assert_eq!(still.id, good.id);
    assert_eq!(registry::versions(&conn, Target::Light).unwrap().len(), 1);
    let files: Vec<_> = std::fs::read_dir(registry::target_dir(&models, Target::Light))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "one model and its metrics file: {files:?}");
    assert!(files.iter().any(|f| f == &good.file));

    // An active model whose file is corrupt protects nothing: the new one is kept.
    std::fs::write(
        registry::target_dir(&models, Target::Light).join(&good.file),
        b"not json",
    )
    .unwrap();
    let done = learning::retrain(&db, &models, Target::Light, &quick()).unwrap();
    assert!(matches!(done.outcome, Outcome::Promoted(_)));
}

struct FakeClock(std::sync::Mutex<DateTime<Local>>);
impl Clock for FakeClock {
    fn now(&self) -> DateTime<Local> {
        *self.0.lock().unwrap()
    }
}

/// The nightly retrain fires when the (injected) clock reaches the configured time, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_retrain_fires_at_the_configured_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = smarthub::database_path(dir.path());
    let mut conn = smarthub::store::open_migrated(&db).unwrap();
    synthetic::fill(&mut conn, Target::Light, 60, 1, &mut |_| {}).unwrap();
    drop(conn);
    let config = smarthub::config::LearningSection {
        retrain_cron: "0 30 3 * * *".into(),
        ..Default::default()
    };
    let learner = Arc::new(runtime::Learner::new(
        db.clone(),
        smarthub::models_dir(dir.path()),
        config,
        3,
        Arc::new(smarthub::metrics::Metrics::default()),
    ));
    let start = Local.with_ymd_and_hms(2026, 3, 4, 3, 29, 58).unwrap();
    let clock = Arc::new(FakeClock(std::sync::Mutex::new(start)));
    let job = runtime::spawn_retrain_schedule(learner.clone(), clock.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(learner.model(Target::Light).is_none(), "not before 03:30");
    *clock.0.lock().unwrap() = start + chrono::Duration::seconds(3);
    // The schedule sleeps in real time toward the next fire time (2 s here), then retrains.
    eventually("the scheduled retrain made a light model", || {
        learner.model(Target::Light).is_some()
    })
    .await;
    let model = learner.model(Target::Light).unwrap();
    assert!(model.version.file.starts_with("light-"));
    job.abort();
}

/// A reading published over MQTT yields a retained prediction that matches the contract's schema;
/// `/metrics` shows the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reading_publishes_a_prediction() {
    let hub = start_with(trained_dir(300)).await;
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/prediction/light").await;
    let node = hub.mqtt("node").await;
    node.publish("smarthub/nodes/lamp/light", DARK_MOTION).await;
    let p = json(&sub.next_on("smarthub/prediction/light").await);
    assert!(schema("prediction").is_valid(&p), "{p}");
    assert_eq!(p["prediction"], 1, "{p}");
    assert!(p["probabilities"]["1"].as_f64().unwrap() > 0.5);
    assert!(p["model_used"].as_str().unwrap().starts_with("light-"));
    assert_eq!(p["inputs"]["light_intensity"], 20.0);
    // Retained: a late subscriber gets it too.
    let mut late = hub.mqtt("late").await;
    late.subscribe("smarthub/prediction/light").await;
    late.next_on("smarthub/prediction/light").await;
    let metrics = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("smarthub_model_accuracy{target=\"light\"} 0."),
        "{metrics}"
    );
    assert!(metrics.contains("smarthub_model_age_seconds{target=\"light\"}"));
    let mut hub = hub;
    hub.stop().await;
}

/// Smart mode applies a differing prediction once, through the command path, as `auto`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_mode_changes_the_state_once() {
    let hub = start_with(trained_dir(300)).await;
    set_mode(&hub, Mode::Smart).await;
    let node = hub.mqtt("node").await;
    for _ in 0..3 {
        node.publish("smarthub/nodes/lamp/light", DARK_MOTION).await;
    }
    node.wait_acked(3).await;
    let engine = hub.hub().engine.clone();
    eventually("smart mode turned the light on", || engine.state().light).await;
    hub.wait_count(smarthub::readings::ReadingKind::Light, 303)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changes = state_changes(&hub, "light");
    assert_eq!(changes, vec![("ON".to_string(), "auto".to_string())]);
    // Readings taken while the hub had switched the light are labelled `auto`, kept out of training.
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let auto: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM light_readings WHERE label_source = 'auto'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(auto <= 2);
    let mut hub = hub;
    hub.stop().await;
}

/// A manual change suspends automatic changes to that thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_change_suspends_smart_mode() {
    let hub = start_with(trained_dir(300)).await;
    set_mode(&hub, Mode::Smart).await;
    for action in [LightAction::On, LightAction::Off] {
        hub.hub()
            .engine
            .command(Command::Light(action), Origin::Rest)
            .await
            .unwrap();
    }
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/prediction/light").await;
    let node = hub.mqtt("node").await;
    node.publish("smarthub/nodes/lamp/light", DARK_MOTION).await;
    // The prediction says "on" and is published, but the person who just switched it off wins.
    let p = json(&sub.next_on("smarthub/prediction/light").await);
    assert_eq!(p["prediction"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hub.hub().engine.state().light);
    assert_eq!(
        state_changes(&hub, "light"),
        vec![
            ("ON".to_string(), "rest".to_string()),
            ("OFF".to_string(), "rest".to_string())
        ]
    );
    let mut hub = hub;
    hub.stop().await;
}

/// Assisted mode records one suggestion for a repeated prediction; answering `true` applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assisted_mode_creates_one_suggestion_and_true_applies_it() {
    let hub = start_with(trained_dir(300)).await;
    set_mode(&hub, Mode::Assisted).await;
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/suggestion").await;
    let node = hub.mqtt("node").await;
    for _ in 0..3 {
        node.publish("smarthub/nodes/lamp/light", DARK_MOTION).await;
    }
    let s = json(&sub.next_on("smarthub/suggestion").await);
    assert!(schema("suggestion").is_valid(&s), "{s}");
    assert_eq!(
        (s["item"].as_str(), s["prediction"].as_i64()),
        (Some("light"), Some(1))
    );
    hub.wait_count(smarthub::readings::ReadingKind::Light, 303)
        .await;
    assert!(sub
        .try_next_on("smarthub/suggestion", Duration::from_millis(300))
        .await
        .is_none());
    assert!(
        !hub.hub().engine.state().light,
        "assisted mode changes nothing itself"
    );

    let list: Value = reqwest::get(hub.url("/get_annoucement_notification/7/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let n = &list[0];
    assert_eq!(n["type"], "ML");
    assert_eq!(n["itemControlled"], "light");
    assert_eq!(n["predectedClass"], "1");
    assert!(n["image"].is_null());
    assert_eq!(n["date"].as_str().unwrap().len(), 19);
    let id = n["id"].as_i64().unwrap();
    assert_eq!(id, s["id"].as_i64().unwrap());

    let r: Value = reqwest::get(hub.url(&format!("/answer_predict/{id}/true/")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "success");
    assert!(hub.hub().engine.state().light);
    let r = reqwest::get(hub.url(&format!("/set_notification_read/{id}")))
        .await
        .unwrap();
    assert!(r.status().is_success());
    let missing = reqwest::get(hub.url("/answer_predict/999/false/"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let mut hub = hub;
    hub.stop().await;
}

/// The prediction routes answer every key style and change nothing, whatever the mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_routes_change_nothing() {
    let hub = start_with(trained_dir(300)).await;
    set_mode(&hub, Mode::Smart).await;
    let before = hub.hub().engine.state();
    for path in ["/prediction_light/", "/prediction_light"] {
        let r = reqwest::get(hub.url(path)).await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        for key in [
            "Predicted class",
            "probability_class0",
            "probability_class1",
            "execution Time",
            "prediction",
            "model_used",
            "timestamp",
        ] {
            assert!(body.get(key).is_some(), "{key} missing: {body}");
        }
    }
    for path in ["/prediction_tv/", "/prediction_fan"] {
        let r = reqwest::get(hub.url(path)).await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "error");
        assert!(
            body["message"].as_str().unwrap().contains("model"),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hub.hub().engine.state(), before);
    assert_eq!(state_changes(&hub, "light"), vec![]);
    let conn = smarthub::store::open_reader(&hub.db_path()).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM suggestions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    let mut hub = hub;
    hub.stop().await;
}

/// A corrupt model file is reported (503 with the reason, logged) and the hub keeps running; a model
/// promoted by `smarthub train` beside the hub replaces it within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_model_file_is_reported_and_the_hub_keeps_running() {
    let dir = trained_dir(300);
    let db = smarthub::database_path(dir.path());
    let models = smarthub::models_dir(dir.path());
    let active = {
        let conn = smarthub::store::open_reader(&db).unwrap();
        registry::active_version(&conn, Target::Light)
            .unwrap()
            .unwrap()
    };
    let path = registry::target_dir(&models, Target::Light).join(&active.file);
    std::fs::write(&path, b"{\"format\": 1, \"target\": \"light\", \"trunc").unwrap();
    let hub = start_with(dir).await;
    let r = reqwest::get(hub.url("/prediction_light/")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains(&active.file),
        "{body}"
    );
    let health = reqwest::get(hub.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    // A missing file is reported the same way.
    std::fs::remove_file(&path).unwrap();
    assert!(registry::load_file(&path, Target::Light)
        .unwrap_err()
        .to_string()
        .contains(&active.file));

    // `smarthub train` beside the running hub: the hub notices the new active model.
    let done = learning::retrain(&db, &models, Target::Light, &quick()).unwrap();
    let Outcome::Promoted(v) = done.outcome else {
        panic!("an equal model is kept")
    };
    let learner = hub.hub().learner.clone();
    eventually("the hub loaded the promoted model", || {
        learner
            .model(Target::Light)
            .is_some_and(|m| m.version.id == v.id)
    })
    .await;
    let r = reqwest::get(hub.url("/prediction_light/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut hub = hub;
    hub.stop().await;
}

/// A retrain in the daemon swaps the model atomically: every reading published during it gets a
/// prediction from a whole model (the old or the new).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_is_atomic_and_predictions_keep_flowing() {
    // Enough history that a debug-build retrain of every candidate takes seconds.
    let hub = start_with(trained_dir(1000)).await;
    let first = hub
        .hub()
        .learner
        .model(Target::Light)
        .unwrap()
        .version
        .clone();
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/prediction/light").await;
    let node = hub.mqtt("node").await;
    let client = reqwest::Client::new();
    let r = client.post(hub.url("/api/v1/train")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let learner = hub.hub().learner.clone();
    eventually("the retrain started", || learner.is_retraining()).await;
    // Labelled as the habit says, so the history the retrain reads agrees with itself.
    let reading =
        r#"{"temperature": 21.0, "motion": true, "light_intensity": 20.0, "active": true}"#;
    let mut during = 0;
    let mut models_used = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while learner.is_retraining() {
        node.publish("smarthub/nodes/lamp/light", reading).await;
        let p = json(&sub.next_on("smarthub/prediction/light").await);
        assert!(schema("prediction").is_valid(&p), "{p}");
        models_used.insert(p["model_used"].as_str().unwrap().to_owned());
        during += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "retrain did not end"
        );
    }
    assert!(during >= 1, "no prediction was made while retraining");
    eventually("the retrained model is active", || {
        learner
            .model(Target::Light)
            .is_some_and(|m| m.version.id != first.id)
    })
    .await;
    let second = learner.model(Target::Light).unwrap().version.file.clone();
    node.publish("smarthub/nodes/lamp/light", reading).await;
    let p = json(&sub.next_on("smarthub/prediction/light").await);
    assert_eq!(p["model_used"], second.as_str(), "{p}");
    // Each prediction came from one whole model, the old or the new.
    models_used.remove(&first.file);
    models_used.remove(&second);
    assert!(models_used.is_empty(), "{models_used:?}");
    let mut hub = hub;
    hub.stop().await;
}

/// Retraining keeps the newest versions only: older model files and rows are removed.
#[test]
fn old_model_versions_are_pruned() {
    let dir = trained_dir(100);
    let db = smarthub::database_path(dir.path());
    let models = smarthub::models_dir(dir.path());
    for _ in 0..registry::KEEP_VERSIONS + 1 {
        let done = learning::retrain(&db, &models, Target::Light, &quick()).unwrap();
        assert!(
            matches!(done.outcome, Outcome::Promoted(_)),
            "as good is kept"
        );
    }
    let conn = smarthub::store::open_reader(&db).unwrap();
    let versions = registry::versions(&conn, Target::Light).unwrap();
    assert_eq!(versions.len(), registry::KEEP_VERSIONS);
    assert!(versions[0].active);
    let files = std::fs::read_dir(registry::target_dir(&models, Target::Light))
        .unwrap()
        .count();
    assert_eq!(files, 2 * registry::KEEP_VERSIONS);
}

/// Writes `rows` generated rows in the old backend's export format (the files `smarthub eval` and
/// `smarthub import` read).
fn write_legacy_exports(dir: &Path, rows: usize, seed: u64) {
    let mut gen = Generator::new(seed, 300.0, 0.02);
    let time = |s: f64| {
        let s = s as u64;
        format!("{:02}:{:02}:{:02}.000000", s / 3600, s / 60 % 60, s % 60)
    };
    let mut light = String::from(
        "id,timeOfDay,temperature,dayOfWeek,weatherConditions,motionDetection,LightIntensity,active\r\n",
    );
    let mut tv = String::from("id,timeOfDay,dayOfWeek,motionDetection,channelOn\r\n");
    for id in 1..=rows {
        let (i, l) = gen.next(Target::Light);
        light.push_str(&format!(
            "{id},{},{:.1},{},clear sky,{},{:.1},{}\r\n",
            time(i.time_of_day_s),
            i.temperature.unwrap(),
            i.day_of_week,
            if i.motion { "Yes" } else { "No" },
            i.light_intensity.unwrap(),
            if l == 1 { "True" } else { "False" }
        ));
        let (i, l) = gen.next(Target::Tv);
        tv.push_str(&format!(
            "{id},{},{},{},{l}\r\n",
            time(i.time_of_day_s),
            i.day_of_week,
            if i.motion { "True" } else { "False" }
        ));
    }
    std::fs::write(dir.join("light_dataset.csv"), light).unwrap();
    std::fs::write(dir.join("tv_dataSert.csv"), tv).unwrap();
}

/// `smarthub eval` on old-format exports: 5-fold CV, and trained on one directory scored on another.
#[test]
fn eval_scores_candidates_on_old_exports() {
    let train = tempfile::tempdir().unwrap();
    let holdout = tempfile::tempdir().unwrap();
    write_legacy_exports(train.path(), 300, 1);
    write_legacy_exports(holdout.path(), 150, 2);
    // Two quick families (logistic regression is the slow one in a debug build).
    let fast = TrainOptions {
        candidates: Some(vec![
            Spec::Tree {
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Knn {
                k: 3,
                manhattan: true,
            },
        ]),
        ..quick()
    };
    for holdout_dir in [None, Some(holdout.path())] {
        let mut steps = 0;
        let nested = holdout_dir.is_none();
        let report =
            learning::eval::evaluate(train.path(), holdout_dir, nested, &fast, &mut |_| {
                steps += 1
            })
            .unwrap();
        assert_eq!(
            steps,
            if nested { 6 } else { 4 },
            "two targets × (two candidates + nested)"
        );
        let json = serde_json::to_value(&report).unwrap();
        let targets = json["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 2);
        for t in targets {
            if nested {
                assert!(t["nested"]["accuracy"].as_f64().unwrap() > 0.85, "{t}");
                assert_eq!(t["nested"]["chosen"].as_array().unwrap().len(), 5);
            } else {
                assert!(t.get("nested").is_none());
            }
            assert!(t["accuracy"].as_f64().unwrap() > 0.85, "{t}");
            assert!(t["balanced_accuracy"].as_f64().unwrap() > 0.7, "{t}");
            assert_eq!(t["candidates"].as_array().unwrap().len(), 2);
            assert!(t["chosen"].as_str().is_some());
        }
        assert_eq!(
            targets[0]["holdout_rows"].as_u64(),
            holdout_dir.map(|_| 150)
        );
        assert!(report.table().contains("| candidate | accuracy |"));
    }
}

/// A kNN model (its KdTree rebuilt from the file when the hub loads it) serves live and REST predictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knn_model_is_rebuilt_on_load_and_predicts() {
    let opts = TrainOptions {
        candidates: Some(vec![Spec::Knn {
            k: 5,
            manhattan: true,
        }]),
        ..quick()
    };
    let hub = start_with(trained_dir_with(300, &opts)).await;
    let model = hub.hub().learner.model(Target::Light).unwrap();
    assert!(model.version.algorithm.starts_with("knn"));
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/prediction/light").await;
    let node = hub.mqtt("node").await;
    node.publish("smarthub/nodes/lamp/light", DARK_MOTION).await;
    let p = json(&sub.next_on("smarthub/prediction/light").await);
    assert_eq!(p["prediction"], 1, "{p}");
    assert!(p["model_used"].as_str().unwrap().contains("light-"));
    let r = reqwest::get(hub.url("/prediction_light")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["Predicted class"], 1,
        "the latest reading is the dark one: {body}"
    );
    let mut hub = hub;
    hub.stop().await;
}

/// `[learning] predict_cron` predicts from the latest readings on a schedule, without a new reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_predictions_use_the_latest_readings() {
    let mut config = test_config();
    config.learning.predict_cron = "* * * * * *".into();
    let hub = TestHub::start_in(trained_dir(300), config).await;
    let mut sub = hub.mqtt("watcher").await;
    sub.subscribe("smarthub/prediction/light").await;
    let p = json(&sub.next_on("smarthub/prediction/light").await);
    assert!(schema("prediction").is_valid(&p), "{p}");
    // The last stored light row's measurements, at the current time.
    assert!(p["inputs"]["light_intensity"].as_f64().is_some(), "{p}");
    let mut hub = hub;
    hub.stop().await;
}
