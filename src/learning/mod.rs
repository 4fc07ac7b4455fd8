//! Learning: models of the household's habits (is the light on, which TV channel, which fan level),
//! trained from the hub's own readings, chosen by cross-validation, versioned in a registry, and used
//! for live predictions.
//!
//! - [`features`]: the one place a row's inputs become a feature vector.
//! - [`models`]: logistic regression (linfa-logistic), our histogram tree and forest, kNN (linfa-nn).
//! - [`cv`]: 5-fold cross-validation (row index mod 5), accuracy and balanced accuracy.
//! - [`registry`]: model versions in SQLite plus the model files; promotion rules.
//! - [`eval`]: `smarthub eval` on the old CSV exports.
//! - [`legacy_csv`]: the old backend's CSV exports, for `smarthub eval` and `smarthub import`.
//! - [`synthetic`]: generated histories with known habits (tests and the retrain benchmark).
//! - [`suggestions`]: Assisted-mode suggestions in SQLite.
//! - [`runtime`]: the daemon side: live predictions, modes, suggestions, nightly retraining.

pub mod bench;
pub mod cv;
pub mod eval;
pub mod features;
pub mod legacy_csv;
pub mod models;
pub mod registry;
pub mod runtime;
pub mod suggestions;
pub mod synthetic;

use std::path::PathBuf;
use std::time::Instant;

use rusqlite::Connection;
use serde::Serialize;

pub use features::{Inputs, Target};
use models::{Matrix, Model, Spec};

/// Why learning could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    #[error("{target}: not enough training data ({rows} labelled rows, {classes} class(es)); a model needs at least {min_rows} rows and 2 classes")]
    NotEnoughData {
        target: Target,
        rows: usize,
        classes: usize,
        min_rows: usize,
    },
    #[error("{target}: no candidate model could be fitted ({why})")]
    NoCandidate { target: Target, why: String },
    #[error("model file {path}: {why}")]
    ModelFile { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Csv { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Fit(#[from] models::FitError),
}

/// Labelled rows of one target, as feature vectors.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    pub target: Target,
    pub x: Matrix,
    pub labels: Vec<i64>,
}

impl TrainingSet {
    pub fn new(target: Target) -> TrainingSet {
        TrainingSet {
            target,
            x: Matrix::new(features::feature_names(target).len()),
            labels: Vec::new(),
        }
    }

    pub fn push(&mut self, inputs: &Inputs, label: i64) {
        features::write_features(self.target, inputs, &mut self.x.data);
        self.x.rows += 1;
        self.labels.push(label);
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every labelled row of the target in the database, oldest first. Labels the hub's automation
    /// produced (`label_source = 'auto'`) are left out so the models do not learn from themselves.
    pub fn load(conn: &Connection, target: Target) -> Result<TrainingSet, LearningError> {
        let mut set = TrainingSet::new(target);
        let sql = match target {
            Target::Light => {
                "SELECT time_of_day_s, day_of_week, month, motion, temperature, light_intensity, active
                 FROM light_readings WHERE active IS NOT NULL AND label_source IS NOT 'auto' ORDER BY id"
            }
            Target::Tv => {
                "SELECT time_of_day_s, day_of_week, month, motion, channel
                 FROM tv_readings WHERE channel IS NOT NULL AND label_source IS NOT 'auto' ORDER BY id"
            }
            Target::Fan => {
                "SELECT time_of_day_s, day_of_week, month, motion, temperature, humidity,
                 outside_temperature, outside_humidity, outside_luminosity, fan_level
                 FROM climate_readings WHERE fan_level IS NOT NULL AND label_source IS NOT 'auto' ORDER BY id"
            }
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let mut i = Inputs {
                time_of_day_s: r.get(0)?,
                day_of_week: r.get(1)?,
                month: r.get(2)?,
                motion: r.get(3)?,
                ..Inputs::default()
            };
            let label: i64 = match target {
                Target::Light => {
                    i.temperature = r.get(4)?;
                    i.light_intensity = r.get(5)?;
                    r.get(6)?
                }
                Target::Tv => r.get(4)?,
                Target::Fan => {
                    i.temperature = r.get(4)?;
                    i.humidity = r.get(5)?;
                    i.outside_temperature = r.get(6)?;
                    i.outside_humidity = r.get(7)?;
                    i.outside_luminosity = r.get(8)?;
                    r.get(9)?
                }
            };
            set.push(&i, label);
        }
        Ok(set)
    }

    /// Sorted distinct labels and each row's index into them.
    pub fn encode(&self) -> (Vec<i64>, Vec<u16>) {
        let mut classes = self.labels.clone();
        classes.sort_unstable();
        classes.dedup();
        let y = self
            .labels
            .iter()
            .map(|l| classes.binary_search(l).unwrap_or(0) as u16)
            .collect();
        (classes, y)
    }

    /// The last `n` rows (the most recent).
    pub fn tail(&self, n: usize) -> TrainingSet {
        if n >= self.len() {
            return self.clone();
        }
        let idx: Vec<usize> = (self.len() - n..self.len()).collect();
        TrainingSet {
            target: self.target,
            x: self.x.select(&idx),
            labels: self.labels[self.len() - n..].to_vec(),
        }
    }
}

/// Knobs of a training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Fewer labelled rows than this: no model (cold start).
    pub min_rows: usize,
    /// Cross-validation uses at most this many of the most recent rows; the final fit uses all.
    pub selection_rows: usize,
    pub threads: usize,
    /// `None`: [`Spec::candidates`].
    pub candidates: Option<Vec<Spec>>,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            min_rows: 30,
            selection_rows: 10_000,
            threads: models::cores(),
            candidates: None,
            seed: 42,
        }
    }
}

/// A fitted model with how it was chosen.
#[derive(Debug)]
pub struct Trained {
    pub target: Target,
    pub spec: Spec,
    pub model: Model,
    /// Every candidate's cross-validated score, in the order tried.
    pub scores: Vec<cv::Score>,
    /// The chosen candidate's score.
    pub chosen: cv::Score,
    /// Rows the final model was fitted on.
    pub rows: usize,
    /// Rows cross-validation used.
    pub selection_rows: usize,
    /// Seconds for selection plus the final fit.
    pub seconds: f64,
}

/// What the model was told, for the metrics file and the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub target: Target,
    pub chosen: String,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub rows: usize,
    pub selection_rows: usize,
    pub seconds: f64,
    pub candidates: Vec<cv::Score>,
}

impl Trained {
    pub fn report(&self) -> TrainReport {
        TrainReport {
            target: self.target,
            chosen: self.spec.name(),
            accuracy: self.chosen.accuracy,
            balanced_accuracy: self.chosen.balanced_accuracy,
            rows: self.rows,
            selection_rows: self.selection_rows,
            seconds: self.seconds,
            candidates: self.scores.clone(),
        }
    }
}

/// Columns of the compact feature set distance-based models use.
pub fn core_columns(target: Target) -> Vec<usize> {
    features::feature_names(target)
        .iter()
        .enumerate()
        .filter(|(_, n)| features::is_core_feature(n))
        .map(|(i, _)| i)
        .collect()
}

/// Checks there is enough to learn from: at least `min_rows` rows and two classes.
pub fn check_trainable(set: &TrainingSet, min_rows: usize) -> Result<(), LearningError> {
    let (classes, _) = set.encode();
    if set.len() < min_rows.max(2) || classes.len() < 2 {
        return Err(LearningError::NotEnoughData {
            target: set.target,
            rows: set.len(),
            classes: classes.len(),
            min_rows: min_rows.max(2),
        });
    }
    Ok(())
}

/// Scores every candidate on (a recent part of) the set, then fits the best on all of it.
pub fn train(set: &TrainingSet, opts: &TrainOptions) -> Result<Trained, LearningError> {
    check_trainable(set, opts.min_rows)?;
    let start = Instant::now();
    let core = core_columns(set.target);
    let candidates = opts
        .candidates
        .clone()
        .unwrap_or_else(|| Spec::candidates(set.x.cols));
    let recent = set.tail(opts.selection_rows.max(opts.min_rows));
    let (classes, y) = set.encode();
    // The recent part indexes the whole set's classes (a class may be absent from it).
    let recent_y: Vec<u16> = recent
        .labels
        .iter()
        .map(|l| classes.binary_search(l).unwrap_or(0) as u16)
        .collect();
    let scores: Vec<cv::Score> = candidates
        .iter()
        .map(|spec| {
            cv::cross_validate(
                spec,
                &recent.x,
                &recent_y,
                &classes,
                &core,
                opts.threads,
                opts.seed,
            )
        })
        .collect();
    let Some(best) = cv::best(&scores) else {
        let why = scores
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.candidate)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(LearningError::NoCandidate {
            target: set.target,
            why,
        });
    };
    let spec = candidates[best].clone();
    let model = Model::fit(&spec, &set.x, &y, &classes, &core, opts.threads, opts.seed)?;
    tracing::info!(
        target = set.target.as_str(),
        chosen = spec.name(),
        accuracy = scores[best].accuracy,
        balanced_accuracy = scores[best].balanced_accuracy,
        rows = set.len(),
        "model trained"
    );
    Ok(Trained {
        target: set.target,
        chosen: scores[best].clone(),
        spec,
        model,
        scores,
        rows: set.len(),
        selection_rows: recent.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What [`retrain`] did for one target.
#[derive(Debug)]
pub struct Retrained {
    pub report: TrainReport,
    pub outcome: registry::Outcome,
}

/// Trains a target from the database and registers the result (kept only if it validates at least as
/// well as the active model). Reads on its own connection; blocking: call it off async workers.
pub fn retrain(
    db_path: &std::path::Path,
    models_dir: &std::path::Path,
    target: Target,
    opts: &TrainOptions,
) -> Result<Retrained, LearningError> {
    // Creates and migrates the database when `smarthub train` runs before the hub ever did.
    drop(crate::store::open_migrated(db_path)?);
    let set = {
        let conn = crate::store::open_reader(db_path)?;
        TrainingSet::load(&conn, target)?
    };
    let trained = train(&set, opts)?;
    let outcome = registry::register(db_path, models_dir, &trained, chrono::Local::now())?;
    Ok(Retrained {
        report: trained.report(),
        outcome,
    })
}
