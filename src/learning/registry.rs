//! The model registry: a SQLite table of versions (`model_versions`: id, target, file, algorithm,
//! trained_at, rows, metrics, active) and the model files under `<data-dir>/models/<target>/`, named
//! `<target>-<YYYYmmddTHHMMSS>-<id>.json` with `<...>.metrics.json` beside. Files are written to a
//! temporary name and renamed, so a reader never sees half a model. A new model becomes active only if
//! it validates at least as well as the active one.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, TimeZone};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::features::{feature_names, Target};
use super::models::Model;
use super::{LearningError, TrainReport, Trained};

/// One row of `model_versions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    pub id: i64,
    pub target: Target,
    /// File name (in the target's directory).
    pub file: String,
    pub algorithm: String,
    pub trained_at_ms: i64,
    pub rows: i64,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub active: bool,
}

impl Version {
    /// Balanced accuracy then accuracy, as candidates are compared.
    fn key(&self) -> (f64, f64) {
        (self.balanced_accuracy, self.accuracy)
    }
}

const FORMAT: u32 = 1;

/// What a model file holds.
#[derive(Serialize)]
struct ModelFileOut<'a> {
    format: u32,
    target: Target,
    algorithm: String,
    trained_at: String,
    rows: usize,
    feature_names: Vec<String>,
    accuracy: f64,
    balanced_accuracy: f64,
    model: &'a Model,
}

#[derive(Deserialize)]
struct ModelFileIn {
    format: u32,
    target: String,
    algorithm: String,
    feature_names: Vec<String>,
    model: Model,
}

/// A model ready to predict, with where it came from.
#[derive(Debug)]
pub struct LoadedModel {
    pub version: Version,
    pub model: Model,
}

impl LoadedModel {
    pub fn file_name(&self) -> &str {
        &self.version.file
    }
}

/// What registering a freshly trained model did.
#[derive(Debug)]
pub enum Outcome {
    /// The new model is the active one now.
    Promoted(Version),
    /// The active model validated better: the new one was not kept.
    KeptActive {
        active: Version,
        candidate: TrainReport,
    },
}

pub fn target_dir(models_dir: &Path, target: Target) -> PathBuf {
    models_dir.join(target.as_str())
}

fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Version> {
    let target: String = r.get(1)?;
    Ok(Version {
        id: r.get(0)?,
        target: Target::parse(&target).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown target {target}").into(),
            )
        })?,
        file: r.get(2)?,
        algorithm: r.get(3)?,
        trained_at_ms: r.get(4)?,
        rows: r.get(5)?,
        accuracy: r.get(6)?,
        balanced_accuracy: r.get(7)?,
        active: r.get(8)?,
    })
}

const COLUMNS: &str =
    "id, target, file, algorithm, trained_at_ms, rows, accuracy, balanced_accuracy, active";

/// The active version of a target, if any.
pub fn active_version(conn: &Connection, target: Target) -> Result<Option<Version>, LearningError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM model_versions WHERE target = ?1 AND active = 1 ORDER BY id DESC LIMIT 1"),
            [target.as_str()],
            version_from_row,
        )
        .optional()?)
}

/// Every version of a target, newest first.
pub fn versions(conn: &Connection, target: Target) -> Result<Vec<Version>, LearningError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM model_versions WHERE target = ?1 ORDER BY id DESC"
    ))?;
    let rows = stmt.query_map([target.as_str()], version_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), LearningError> {
    let io = |source| LearningError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Saves a trained model and makes it active, unless the active model validated better.
pub fn register(
    db_path: &Path,
    models_dir: &Path,
    trained: &Trained,
    now: DateTime<Local>,
) -> Result<Outcome, LearningError> {
    let mut conn = crate::store::open_migrated(db_path)?;
    let report = trained.report();
    let target = trained.target;
    let new_key = (report.balanced_accuracy, report.accuracy);
    let algorithm = trained.spec.name();
    let metrics = serde_json::to_string(&report).unwrap_or_default();
    let id = {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(active) = active_version(&tx, target)? {
            // An active model whose file is gone or corrupt protects nothing: any new model wins.
            let usable =
                || load_file(&target_dir(models_dir, target).join(&active.file), target).is_ok();
            if new_key < active.key() && usable() {
                tracing::info!(
                    target = target.as_str(),
                    active = active.file,
                    active_balanced_accuracy = active.balanced_accuracy,
                    new_balanced_accuracy = report.balanced_accuracy,
                    "new model validates worse than the active one: not kept"
                );
                return Ok(Outcome::KeptActive {
                    active,
                    candidate: report,
                });
            }
        }
        tx.execute(
            "INSERT INTO model_versions (target, file, algorithm, trained_at_ms, rows, accuracy, balanced_accuracy, metrics, active)
             VALUES (?1, '', ?2, ?3, ?4, ?5, ?6, ?7, 0)",
            params![
                target.as_str(),
                algorithm,
                now.timestamp_millis(),
                trained.rows as i64,
                report.accuracy,
                report.balanced_accuracy,
                metrics
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        id
    };
    let file = format!(
        "{}-{}-{id}.json",
        target.as_str(),
        now.format("%Y%m%dT%H%M%S")
    );
    let dir = target_dir(models_dir, target);
    let saved = std::fs::create_dir_all(&dir)
        .map_err(|source| LearningError::Io {
            path: dir.clone(),
            source,
        })
        .and_then(|()| {
            let out = ModelFileOut {
                format: FORMAT,
                target,
                algorithm: algorithm.clone(),
                trained_at: now.to_rfc3339(),
                rows: trained.rows,
                feature_names: feature_names(target),
                accuracy: report.accuracy,
                balanced_accuracy: report.balanced_accuracy,
                model: &trained.model,
            };
            write_atomically(&dir.join(&file), |w| {
                serde_json::to_writer(&mut *w, &out).map_err(std::io::Error::other)
            })?;
            let metrics_file = dir.join(file.replace(".json", ".metrics.json"));
            write_atomically(&metrics_file, |w| {
                serde_json::to_writer_pretty(
                    &mut *w,
                    &serde_json::json!({
                        "id": id,
                        "file": file,
                        "trained_at": now.to_rfc3339(),
                        "report": report,
                    }),
                )
                .map_err(std::io::Error::other)
            })
        });
    if let Err(e) = saved {
        let _ = conn.execute("DELETE FROM model_versions WHERE id = ?1", [id]);
        return Err(e);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE model_versions SET file = ?2 WHERE id = ?1",
        params![id, file],
    )?;
    tx.execute(
        "UPDATE model_versions SET active = (id = ?2) WHERE target = ?1",
        params![target.as_str(), id],
    )?;
    let version = tx.query_row(
        &format!("SELECT {COLUMNS} FROM model_versions WHERE id = ?1"),
        [id],
        version_from_row,
    )?;
    tx.commit()?;
    prune(&conn, models_dir, target);
    Ok(Outcome::Promoted(version))
}

/// Versions kept per target (the active one and the newest before it); older ones and their files
/// go, so a nightly retrain does not fill the disk.
pub const KEEP_VERSIONS: usize = 5;

fn prune(conn: &Connection, models_dir: &Path, target: Target) {
    let old = match versions(conn, target) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "old model versions not pruned");
            return;
        }
    };
    let dir = target_dir(models_dir, target);
    for v in old.iter().filter(|v| !v.active).skip(KEEP_VERSIONS - 1) {
        for file in [v.file.clone(), v.file.replace(".json", ".metrics.json")] {
            if !file.is_empty() {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
        if let Err(e) = conn.execute("DELETE FROM model_versions WHERE id = ?1", [v.id]) {
            tracing::warn!(error = %e, "old model version not pruned");
        }
    }
}

/// Reads and checks a model file of `target`. Missing or corrupt files are errors, never panics.
pub fn load_file(path: &Path, target: Target) -> Result<Model, LearningError> {
    let bad = |why: String| LearningError::ModelFile {
        path: path.to_owned(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
    // Our trees are flat arrays: no model needs deep nesting, so serde_json's recursion limit stays.
    let parsed =
        ModelFileIn::deserialize(&mut de).map_err(|e| bad(format!("not a model file ({e})")))?;
    if parsed.format != FORMAT {
        return Err(bad(format!("format {} is not {FORMAT}", parsed.format)));
    }
    if parsed.target != target.as_str() {
        return Err(bad(format!(
            "holds a {} model, not {target}",
            parsed.target
        )));
    }
    let names = feature_names(target);
    if parsed.feature_names != names {
        return Err(bad(format!(
            "made for other features ({}); retrain with `smarthub train`",
            parsed.feature_names.join(",")
        )));
    }
    let mut model = parsed.model;
    model
        .validate(names.len())
        .map_err(|e| bad(format!("{} model: {e}", parsed.algorithm)))?;
    model.prepare().map_err(|e| bad(e.to_string()))?;
    Ok(model)
}

/// Loads the active model of a target. `Ok(None)`: no model yet.
pub fn load_active(
    conn: &Connection,
    models_dir: &Path,
    target: Target,
) -> Result<Option<LoadedModel>, LearningError> {
    let Some(version) = active_version(conn, target)? else {
        return Ok(None);
    };
    let path = target_dir(models_dir, target).join(&version.file);
    let model = load_file(&path, target)?;
    Ok(Some(LoadedModel { version, model }))
}

/// The trained time of a version as local time.
pub fn trained_at(version: &Version) -> DateTime<Local> {
    Local
        .timestamp_millis_opt(version.trained_at_ms)
        .single()
        .unwrap_or_else(Local::now)
}
