//! The retrain benchmark (`smarthub bench-train --rows N`): generates N synthetic rows per target into
//! a fresh database, then runs the nightly retrain of every target while a writer keeps ingesting
//! readings through the hub's own batching writer, and reports how long each part took and how long
//! the writer's commits waited meanwhile.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{registry, retrain, synthetic, LearningError, Target, TrainOptions};
use crate::config::StorageSection;
use crate::metrics::Metrics;
use crate::readings::{parse_reading, ReadingKind, Source};
use crate::store::{Store, WriteOp};

#[derive(Debug, Clone, Serialize)]
pub struct TargetBench {
    pub target: Target,
    pub rows: usize,
    pub chosen: String,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    /// Loading, selection, final fit and saving.
    pub seconds: f64,
    pub model_file_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub rows_per_target: usize,
    pub generate_seconds: f64,
    pub retrain_seconds: f64,
    pub targets: Vec<TargetBench>,
    /// Readings committed by the concurrent writer while retraining ran.
    pub ingested_during_retrain: u64,
    /// Longest wait for a commit of the concurrent writer (a flush), milliseconds.
    pub worst_commit_wait_ms: f64,
}

/// Runs the benchmark in `dir` (a fresh, empty directory).
pub fn run(
    dir: &Path,
    rows: usize,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, LearningError> {
    let db = crate::database_path(dir);
    let models = crate::models_dir(dir);
    let start = Instant::now();
    {
        let mut conn = crate::store::open_migrated(&db)?;
        for (n, target) in Target::ALL.into_iter().enumerate() {
            progress(&format!("generating {rows} {target} rows"));
            synthetic::fill(&mut conn, target, rows, 7 + n as u64, &mut |_| {})?;
        }
    }
    let generate_seconds = start.elapsed().as_secs_f64();

    // The hub's writer keeps committing readings while training reads the same database.
    let metrics = Arc::new(Metrics::default());
    let (store, _) = Store::open(&db, &StorageSection::default(), metrics.clone())?;
    let writer = store.writer();
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let stop = stop.clone();
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut sent = 0u64;
            // Unlabelled, as a node that does not know the TV's channel sends it: stored like any
            // reading, but not a training row (the benchmark's training sets stay as generated).
            let reading =
                parse_reading(ReadingKind::Tv, br#"{"motion": true}"#).expect("literal reading");
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    let r = reading
                        .clone()
                        .stamp(
                            "bench",
                            chrono::Utc::now().timestamp_millis(),
                            300,
                            Source::Mqtt,
                        )
                        .expect("a current reading");
                    writer.send(WriteOp::Reading(std::sync::Arc::new(r)));
                    sent += 1;
                }
                let t = Instant::now();
                writer.flush(Duration::from_secs(30));
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            (sent, worst)
        })
    };
    let retrain_start = Instant::now();
    let mut targets = Vec::new();
    let mut failure = None;
    for target in Target::ALL {
        progress(&format!("retraining {target}"));
        let t = Instant::now();
        match retrain(&db, &models, target, opts) {
            Ok(done) => {
                let file = match &done.outcome {
                    registry::Outcome::Promoted(v) => v.file.clone(),
                    registry::Outcome::KeptActive { active, .. } => active.file.clone(),
                };
                let bytes = std::fs::metadata(registry::target_dir(&models, target).join(&file))
                    .map(|m| m.len())
                    .unwrap_or(0);
                targets.push(TargetBench {
                    target,
                    rows: done.report.rows,
                    chosen: done.report.chosen,
                    accuracy: done.report.accuracy,
                    balanced_accuracy: done.report.balanced_accuracy,
                    seconds: t.elapsed().as_secs_f64(),
                    model_file_bytes: bytes,
                });
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let retrain_seconds = retrain_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (sent, worst) = ingest.join().unwrap_or((0, Duration::ZERO));
    drop(writer);
    store.close();
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(BenchReport {
        rows_per_target: rows,
        generate_seconds,
        retrain_seconds,
        targets,
        ingested_during_retrain: sent,
        worst_commit_wait_ms: worst.as_secs_f64() * 1000.0,
    })
}
