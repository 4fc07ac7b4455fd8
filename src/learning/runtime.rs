//! The daemon side of learning. [`Learner`] holds the active models (swapped atomically behind a lock),
//! the latest readings of the home, and the reasons a target has no model. [`spawn`] starts its tasks:
//! - every accepted, non-backdated reading → a prediction for its target, published retained on
//!   `<base>/prediction/<target>`, then acted on per mode (Smart: applied through the engine's command
//!   path as `Origin::Auto`; Assisted: a suggestion stored and published; User: nothing);
//! - a manual change to a thing (any origin but `Auto`) suspends automatic changes to it;
//! - the registry is polled so a model promoted by `smarthub train` beside the hub is picked up;
//! - the nightly retrain (and optional scheduled predictions) run from cron schedules.
//!
//! Training, SQLite and kNN queries run on `spawn_blocking`; other predictions are microseconds of
//! arithmetic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Local;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::features::{features, Inputs, Target};
use super::models::argmax;
use super::registry::{self, LoadedModel};
use super::{suggestions, LearningError, TrainOptions};
use crate::config::LearningSection;
use crate::engine::{EngineHandle, Event};
use crate::home::{Command, HomeState, LightAction, Mode, Origin};
use crate::metrics::Metrics;
use crate::readings::{ReadingKind, Source};
use crate::schedule::{self, Clock, Schedule};
use crate::topics::Topics;

/// One prediction, as published and served.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    #[serde(skip)]
    pub target: Target,
    pub prediction: i64,
    /// Every class the model knows, in ascending order, with its probability.
    #[serde(skip)]
    pub classes: Vec<(i64, f64)>,
    pub model_used: String,
    pub timestamp: String,
    pub inputs: Inputs,
    /// Seconds the prediction took.
    #[serde(skip)]
    pub seconds: f64,
}

impl Prediction {
    /// Probability of the predicted class.
    pub fn confidence(&self) -> f64 {
        self.classes
            .iter()
            .find(|(c, _)| *c == self.prediction)
            .map(|(_, p)| *p)
            .unwrap_or(0.0)
    }

    /// The MQTT payload (firmware contract `prediction` schema).
    pub fn payload(&self) -> serde_json::Value {
        let probabilities: serde_json::Map<String, serde_json::Value> = self
            .classes
            .iter()
            .map(|(c, p)| (c.to_string(), serde_json::json!(p.clamp(0.0, 1.0))))
            .collect();
        serde_json::json!({
            "prediction": self.prediction,
            "probabilities": probabilities,
            "model_used": self.model_used,
            "timestamp": self.timestamp,
            "inputs": self.inputs,
        })
    }
}

/// The latest inputs of each reading kind (what a prediction without a fresh reading uses).
#[derive(Debug, Clone, Default)]
struct Latest {
    by_kind: HashMap<ReadingKind, Inputs>,
}

/// Automatic-action bookkeeping of one thing.
#[derive(Debug, Clone, Default)]
struct ActionState {
    /// When a person last changed it.
    manual_at: Option<Instant>,
    /// When the hub last acted on it.
    acted_at: Option<Instant>,
    /// (current value, predicted value) of the last action: the same situation is never acted on twice.
    last_key: Option<(i64, i64)>,
}

/// Models, context and state of learning in the running hub.
pub struct Learner {
    db_path: PathBuf,
    models_dir: PathBuf,
    config: LearningSection,
    max_fan_level: u8,
    options: TrainOptions,
    metrics: Arc<Metrics>,
    models: RwLock<HashMap<Target, Arc<LoadedModel>>>,
    /// Why a target has no model (served as the 503 message).
    missing: Mutex<HashMap<Target, String>>,
    /// Version ids whose file failed to load (not retried until the active id changes).
    failed_ids: Mutex<HashMap<Target, i64>>,
    latest: Mutex<Latest>,
    actions: Mutex<HashMap<Target, ActionState>>,
    retraining: tokio::sync::Mutex<()>,
}

fn no_model_yet(target: Target, min_rows: usize) -> String {
    format!(
        "no {target} model yet: one is trained nightly (or with `smarthub train`) once at least {min_rows} labelled rows with two classes exist"
    )
}

impl Learner {
    pub fn new(
        db_path: PathBuf,
        models_dir: PathBuf,
        config: LearningSection,
        max_fan_level: u8,
        metrics: Arc<Metrics>,
    ) -> Learner {
        let options = TrainOptions {
            min_rows: config.min_rows,
            ..TrainOptions::default()
        };
        let missing = Target::ALL
            .into_iter()
            .map(|t| (t, no_model_yet(t, config.min_rows)))
            .collect();
        Learner {
            db_path,
            models_dir,
            config,
            max_fan_level,
            options,
            metrics,
            models: RwLock::new(HashMap::new()),
            missing: Mutex::new(missing),
            failed_ids: Mutex::new(HashMap::new()),
            latest: Mutex::new(Latest::default()),
            actions: Mutex::new(HashMap::new()),
            retraining: tokio::sync::Mutex::new(()),
        }
    }

    pub fn model(&self, target: Target) -> Option<Arc<LoadedModel>> {
        self.models.read().ok()?.get(&target).cloned()
    }

    /// Why there is no model for `target` (when there is none).
    pub fn missing_reason(&self, target: Target) -> String {
        self.missing
            .lock()
            .ok()
            .and_then(|m| m.get(&target).cloned())
            .unwrap_or_else(|| no_model_yet(target, self.config.min_rows))
    }

    fn set_missing(&self, target: Target, why: String) {
        if let Ok(mut m) = self.missing.lock() {
            m.insert(target, why);
        }
    }

    /// Makes `loaded` the model of its target: one pointer swap, so predictions never wait on a load.
    fn install(&self, loaded: LoadedModel) {
        let target = loaded.version.target;
        tracing::info!(
            target = target.as_str(),
            file = loaded.version.file,
            algorithm = loaded.version.algorithm,
            "model active"
        );
        self.metrics.set_model(
            target.as_str(),
            loaded.version.accuracy,
            loaded.version.trained_at_ms,
        );
        if let Ok(mut m) = self.models.write() {
            m.insert(target, Arc::new(loaded));
        }
        if let Ok(mut m) = self.missing.lock() {
            m.remove(&target);
        }
    }

    /// Loads every target's active model whose version differs from the one in use. Blocking.
    pub fn sync_with_registry(&self) {
        let conn = match crate::store::open_reader(&self.db_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "model registry unreadable");
                return;
            }
        };
        for target in Target::ALL {
            let active = match registry::active_version(&conn, target) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(target = target.as_str(), error = %e, "model registry unreadable");
                    continue;
                }
            };
            if self.model(target).map(|m| m.version.id) == Some(active.id) {
                continue;
            }
            let failed = self
                .failed_ids
                .lock()
                .ok()
                .and_then(|f| f.get(&target).copied());
            if failed == Some(active.id) {
                continue;
            }
            let path = registry::target_dir(&self.models_dir, target).join(&active.file);
            match registry::load_file(&path, target) {
                Ok(model) => self.install(LoadedModel {
                    version: active,
                    model,
                }),
                Err(e) => {
                    // The hub keeps running: the previous model (if any) stays in use.
                    tracing::error!(target = target.as_str(), error = %e, "active model cannot be loaded");
                    if let Ok(mut f) = self.failed_ids.lock() {
                        f.insert(target, active.id);
                    }
                    if self.model(target).is_none() {
                        self.set_missing(target, format!("the {target} model cannot be used: {e}"));
                    }
                }
            }
        }
    }

    /// Remembers the latest reading inputs of each kind; at start, the last stored row of each kind
    /// (also an imported or back-dated one: its measurements are still the newest the hub has).
    fn remember(&self, kind: ReadingKind, inputs: Inputs) {
        if let Ok(mut l) = self.latest.lock() {
            l.by_kind.insert(kind, inputs);
        }
    }

    fn load_latest(&self) {
        let Ok(conn) = crate::store::open_reader(&self.db_path) else {
            return;
        };
        for target in Target::ALL {
            let set = last_inputs(&conn, target);
            if let Ok(Some(inputs)) = set {
                self.remember(target.kind(), inputs);
            }
        }
    }

    /// The inputs of a prediction made now without a new reading: the latest reading of the target's
    /// kind (the old backend used constants), with the current time.
    pub fn current_inputs(&self, target: Target) -> Inputs {
        let now = crate::readings::TimeFeatures::from_ms(chrono::Utc::now().timestamp_millis());
        let mut inputs = self
            .latest
            .lock()
            .ok()
            .and_then(|l| l.by_kind.get(&target.kind()).cloned())
            .unwrap_or_default();
        inputs.time_of_day_s = now.time_of_day_s;
        inputs.day_of_week = now.day_of_week;
        inputs.month = now.month;
        inputs
    }

    /// Predicts `target` from `inputs` with the active model. `Err` holds why there is no prediction.
    pub fn predict(&self, target: Target, inputs: Inputs) -> Result<Prediction, String> {
        let start = Instant::now();
        let Some(model) = self.model(target) else {
            return Err(self.missing_reason(target));
        };
        let x = features(target, &inputs);
        let p = model
            .model
            .predict_proba(&x)
            .map_err(|e| format!("the {target} model failed: {e}"))?;
        if p.len() != model.model.classes.len() {
            return Err(format!("the {target} model gave no probabilities"));
        }
        let best = argmax(&p);
        Ok(Prediction {
            target,
            prediction: model.model.classes[best],
            classes: model.model.classes.iter().copied().zip(p).collect(),
            model_used: model.version.file.clone(),
            timestamp: Local::now().to_rfc3339(),
            inputs,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// [`Learner::predict`] from async code: a kNN model answers from its index thread, so its query
    /// waits on a channel and runs on a blocking thread; the other families are a few microseconds of
    /// arithmetic and run in place.
    pub async fn predict_async(
        self: &Arc<Self>,
        target: Target,
        inputs: Inputs,
    ) -> Result<Prediction, String> {
        let is_knn = self
            .model(target)
            .is_some_and(|m| matches!(m.model.kind, super::models::ModelKind::Knn(_)));
        if !is_knn {
            return self.predict(target, inputs);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.predict(target, inputs))
            .await
            .map_err(|e| format!("prediction task failed: {e}"))?
    }

    /// Retrains every target now (one retrain at a time; a second call waits for the first).
    pub async fn retrain_all(self: &Arc<Self>) {
        let _guard = self.retraining.lock().await;
        for target in Target::ALL {
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || {
                let done = super::retrain(&me.db_path, &me.models_dir, target, &me.options);
                if let Ok(super::Retrained {
                    outcome: registry::Outcome::Promoted(_),
                    ..
                }) = &done
                {
                    me.sync_with_registry();
                }
                done
            })
            .await;
            match result {
                Ok(Ok(done)) => {
                    if let registry::Outcome::KeptActive { active, .. } = &done.outcome {
                        tracing::info!(
                            target = target.as_str(),
                            active = active.file,
                            "retrain kept the active model"
                        );
                    }
                }
                Ok(Err(e @ LearningError::NotEnoughData { .. })) => {
                    tracing::info!(target = target.as_str(), "{e}");
                    if self.model(target).is_none() {
                        self.set_missing(target, e.to_string());
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(target = target.as_str(), error = %e, "retrain failed")
                }
                Err(e) => {
                    tracing::error!(target = target.as_str(), error = %e, "retrain task failed")
                }
            }
        }
    }

    /// Whether a retrain is running now.
    pub fn is_retraining(&self) -> bool {
        self.retraining.try_lock().is_err()
    }

    fn note_manual(&self, target: Target) {
        if let Ok(mut a) = self.actions.lock() {
            let a = a.entry(target).or_default();
            a.manual_at = Some(Instant::now());
            // A person set a new state: a prediction acted on before may be acted on again (after
            // the override) — "the same situation" now means this new state.
            a.last_key = None;
        }
    }

    /// Decides whether the hub may act on `prediction` now, and records it if so.
    fn may_act(&self, p: &Prediction, state: &HomeState) -> bool {
        let current = current_value(p.target, state);
        if p.prediction == current || p.confidence() < self.config.min_confidence {
            return false;
        }
        if p.target == Target::Fan && p.prediction > i64::from(self.max_fan_level) {
            return false;
        }
        let Ok(mut actions) = self.actions.lock() else {
            return false;
        };
        let a = actions.entry(p.target).or_default();
        let now = Instant::now();
        let within = |at: Option<Instant>, minutes: u64| {
            at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(minutes * 60))
        };
        let key = (current, p.prediction);
        if within(a.manual_at, self.config.manual_override_minutes)
            || within(a.acted_at, self.config.hold_minutes)
            || a.last_key == Some(key)
        {
            return false;
        }
        a.acted_at = Some(now);
        a.last_key = Some(key);
        true
    }
}

fn current_value(target: Target, state: &HomeState) -> i64 {
    match target {
        Target::Light => i64::from(state.light),
        Target::Tv => i64::from(state.tv_channel),
        Target::Fan => i64::from(state.fan_level),
    }
}

/// The command that makes `target` take the value `class`.
pub fn command_for(target: Target, class: i64) -> Option<Command> {
    match target {
        Target::Light => Some(Command::Light(if class != 0 {
            LightAction::On
        } else {
            LightAction::Off
        })),
        Target::Tv => u32::try_from(class).ok().map(|channel| Command::Tv {
            channel,
            name: None,
        }),
        Target::Fan => u8::try_from(class).ok().map(Command::Fan),
    }
}

fn last_inputs(
    conn: &rusqlite::Connection,
    target: Target,
) -> Result<Option<Inputs>, LearningError> {
    let table = crate::store::table(target.kind());
    let sql = format!(
        "SELECT time_of_day_s, day_of_week, month, motion, {} FROM {table} ORDER BY id DESC LIMIT 1",
        match target {
            Target::Light => "temperature, light_intensity, NULL, NULL, NULL, NULL",
            Target::Tv => "NULL, NULL, NULL, NULL, NULL, NULL",
            Target::Fan => "temperature, NULL, humidity, outside_temperature, outside_humidity, outside_luminosity",
        }
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(Inputs {
        time_of_day_s: r.get(0)?,
        day_of_week: r.get(1)?,
        month: r.get(2)?,
        motion: r.get(3)?,
        temperature: r.get(4)?,
        light_intensity: r.get(5)?,
        humidity: r.get(6)?,
        outside_temperature: r.get(7)?,
        outside_humidity: r.get(8)?,
        outside_luminosity: r.get(9)?,
    }))
}

/// What [`spawn`] needs.
pub struct RuntimeParts {
    pub learner: Arc<Learner>,
    pub engine: EngineHandle,
    pub topics: Topics,
    pub clock: Arc<dyn Clock>,
}

/// Loads the active models and starts the learning tasks; abort the handles to stop them.
pub async fn spawn(parts: RuntimeParts) -> Vec<tokio::task::JoinHandle<()>> {
    let RuntimeParts {
        learner,
        engine,
        topics,
        clock,
    } = parts;
    {
        let l = learner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            l.load_latest();
            l.sync_with_registry();
        })
        .await;
    }
    let mut jobs = Vec::new();
    // Subscribe before returning so no reading accepted after start is missed.
    let events = engine.subscribe();
    jobs.push(tokio::spawn(event_loop(
        learner.clone(),
        engine.clone(),
        topics.clone(),
        events,
    )));
    {
        let learner = learner.clone();
        let every = Duration::from_millis(learner.config.registry_poll_ms.max(1));
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let l = learner.clone();
                let _ = tokio::task::spawn_blocking(move || l.sync_with_registry()).await;
            }
        }));
    }
    jobs.push(spawn_retrain_schedule(learner.clone(), clock.clone()));
    if !learner.config.predict_cron.is_empty() {
        if let Ok(s) = Schedule::parse(&learner.config.predict_cron) {
            let learner = learner.clone();
            jobs.push(schedule::spawn("predict", s, clock, move || {
                let learner = learner.clone();
                let engine = engine.clone();
                let topics = topics.clone();
                async move {
                    for target in Target::ALL {
                        let inputs = learner.current_inputs(target);
                        handle_prediction(&learner, &engine, &topics, target, inputs).await;
                    }
                }
            }));
        }
    }
    jobs
}

/// The nightly retrain on `[learning] retrain_cron` (validated with the config).
pub fn spawn_retrain_schedule(
    learner: Arc<Learner>,
    clock: Arc<dyn Clock>,
) -> tokio::task::JoinHandle<()> {
    let schedule = Schedule::parse(&learner.config.retrain_cron)
        .unwrap_or_else(|_| Schedule::parse("0 0 0 * * *").expect("literal cron expression"));
    schedule::spawn("retrain", schedule, clock, move || {
        let learner = learner.clone();
        async move { learner.retrain_all().await }
    })
}

async fn event_loop(
    learner: Arc<Learner>,
    engine: EngineHandle,
    topics: Topics,
    mut events: tokio::sync::broadcast::Receiver<Event>,
) {
    loop {
        match events.recv().await {
            Ok(Event::Reading { reading }) => {
                if reading.backdated || reading.source == Source::Import {
                    continue;
                }
                let kind = reading.measurement.kind();
                let (inputs, _) = Inputs::from_reading(&reading);
                learner.remember(kind, inputs.clone());
                handle_prediction(&learner, &engine, &topics, Target::from_kind(kind), inputs)
                    .await;
            }
            Ok(Event::State { thing, origin, .. }) => {
                if origin != Origin::Auto {
                    if let Some(t) = Target::ALL.into_iter().find(|t| t.thing() == thing) {
                        learner.note_manual(t);
                    }
                }
            }
            Ok(
                Event::NodeForgotten { .. } | Event::Prediction { .. } | Event::Suggestion { .. },
            ) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "learning fell behind: some readings got no prediction"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Predicts, publishes, and acts per mode.
async fn handle_prediction(
    learner: &Arc<Learner>,
    engine: &EngineHandle,
    topics: &Topics,
    target: Target,
    inputs: Inputs,
) {
    let Ok(p) = learner.predict_async(target, inputs).await else {
        return;
    };
    engine.publish(
        topics.prediction(target.as_str()),
        p.payload().to_string(),
        true,
    );
    let state = engine.state();
    if state.mode == Mode::User || !learner.may_act(&p, &state) {
        return;
    }
    match state.mode {
        Mode::Smart => {
            let Some(cmd) = command_for(target, p.prediction) else {
                return;
            };
            match engine.command(cmd, Origin::Auto).await {
                Ok(_) => tracing::info!(
                    target = target.as_str(),
                    value = p.prediction,
                    confidence = p.confidence(),
                    "smart mode applied a prediction"
                ),
                Err(e) => {
                    tracing::warn!(target = target.as_str(), error = %e, "smart mode change refused")
                }
            }
        }
        Mode::Assisted => {
            let db = learner.db_path.clone();
            let (prediction, probability, model) =
                (p.prediction, p.confidence(), p.model_used.clone());
            let created = tokio::task::spawn_blocking(move || {
                suggestions::create(
                    &db,
                    target,
                    prediction,
                    probability,
                    &model,
                    chrono::Utc::now().timestamp_millis(),
                )
            })
            .await;
            match created {
                Ok(Ok(s)) => engine.publish(topics.suggestion(), s.payload().to_string(), false),
                Ok(Err(e)) => tracing::error!(error = %e, "suggestion not stored"),
                Err(e) => tracing::error!(error = %e, "suggestion task failed"),
            }
        }
        Mode::User => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learner(hold_minutes: u64, manual_override_minutes: u64) -> Learner {
        Learner::new(
            PathBuf::from("/nonexistent/smarthub.db"),
            PathBuf::from("/nonexistent/models"),
            LearningSection {
                min_confidence: 0.7,
                hold_minutes,
                manual_override_minutes,
                ..LearningSection::default()
            },
            3,
            Arc::new(Metrics::default()),
        )
    }

    fn light_on(confidence: f64) -> Prediction {
        Prediction {
            target: Target::Light,
            prediction: 1,
            classes: vec![(0, 1.0 - confidence), (1, confidence)],
            model_used: "light-x.json".into(),
            timestamp: String::new(),
            inputs: Inputs::default(),
            seconds: 0.0,
        }
    }

    #[test]
    fn acts_once_per_situation_and_the_user_wins() {
        let off = HomeState::default();
        let l = learner(0, 0);
        assert!(!l.may_act(&light_on(0.6), &off), "not confident enough");
        let on = HomeState {
            light: true,
            ..HomeState::default()
        };
        assert!(!l.may_act(&light_on(0.9), &on), "already so");
        assert!(l.may_act(&light_on(0.9), &off));
        assert!(
            !l.may_act(&light_on(0.9), &off),
            "never twice for the same state"
        );
        // A person switched it (off again): the next evening's prediction may act again.
        l.note_manual(Target::Light);
        assert!(l.may_act(&light_on(0.9), &off));

        let l = learner(0, 30);
        l.note_manual(Target::Light);
        assert!(
            !l.may_act(&light_on(0.99), &off),
            "suspended after a manual change"
        );

        let l = learner(5, 0);
        assert!(l.may_act(&light_on(0.9), &off));
        let fan = Prediction {
            target: Target::Fan,
            prediction: 6,
            classes: vec![(6, 1.0)],
            ..light_on(1.0)
        };
        assert!(!l.may_act(&fan, &off), "above max_fan_level");
    }

    #[test]
    fn payload_lists_every_class() {
        let p = light_on(0.75);
        let v = p.payload();
        assert_eq!(v["prediction"], 1);
        assert_eq!(v["probabilities"]["0"], 0.25);
        assert_eq!(v["probabilities"]["1"], 0.75);
        assert_eq!(v["model_used"], "light-x.json");
    }
}
