//! `smarthub eval`: scores every candidate on the old backend's CSV exports, by 5-fold
//! cross-validation (row index mod 5), or trained on one directory and scored on another.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::cv::{self, Score};
use super::legacy_csv::{self, LegacyFile};
use super::models::Spec;
use super::{core_columns, LearningError, TrainOptions, TrainingSet};

/// The result for one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetEval {
    pub target: super::Target,
    /// The candidate chosen by cross-validation on the training directory.
    pub chosen: String,
    /// The chosen candidate's score: cross-validated, or on the holdout when there is one.
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_rows: Option<usize>,
    /// With `--nested`: the selection-free estimate (see [`cv::nested`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<Nested>,
    pub candidates: Vec<Score>,
}

/// Nested cross-validation of the whole selection procedure.
#[derive(Debug, Clone, Serialize)]
pub struct Nested {
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    /// The candidate each outer fold chose.
    pub chosen: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub targets: Vec<TargetEval>,
}

fn to_set(file: &LegacyFile) -> TrainingSet {
    let mut set = TrainingSet::new(file.target);
    for row in &file.rows {
        set.push(&row.inputs, row.label);
    }
    set
}

/// Evaluates every target whose export is in `dataset_dir`. `progress` hears each candidate done.
pub fn evaluate(
    dataset_dir: &Path,
    holdout_dir: Option<&Path>,
    nested: bool,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<EvalReport, LearningError> {
    let files = legacy_csv::read_dir(dataset_dir)?;
    let mut targets = Vec::new();
    for file in &files {
        let set = to_set(file);
        super::check_trainable(&set, opts.min_rows)?;
        let holdout = match holdout_dir {
            Some(dir) => {
                let (_, name, _) = legacy_csv::FILES
                    .iter()
                    .find(|(t, _, _)| *t == file.target)
                    .copied()
                    .unwrap_or(legacy_csv::FILES[0]);
                let path = dir.join(name);
                if !path.is_file() {
                    return Err(LearningError::Csv {
                        path,
                        why: "missing from the holdout directory".into(),
                    });
                }
                Some(to_set(&legacy_csv::read(&path, file.target)?))
            }
            None => None,
        };
        let (classes, y) = set.encode();
        let core = core_columns(file.target);
        let candidates = opts
            .candidates
            .clone()
            .unwrap_or_else(|| Spec::candidates(set.x.cols));
        let cv_scores: Vec<Score> = candidates
            .iter()
            .map(|spec| {
                let s =
                    cv::cross_validate(spec, &set.x, &y, &classes, &core, opts.threads, opts.seed);
                progress(&format!("{} {}", file.target, s.candidate));
                s
            })
            .collect();
        let best = cv::best(&cv_scores).ok_or_else(|| LearningError::NoCandidate {
            target: file.target,
            why: "every candidate failed".into(),
        })?;
        let (scores, holdout_rows) = match &holdout {
            None => (cv_scores, None),
            Some(test) => {
                let test_y: Vec<usize> = test
                    .labels
                    .iter()
                    .map(|l| classes.binary_search(l).unwrap_or(classes.len()))
                    .collect();
                let start = Instant::now();
                let scores = candidates
                    .iter()
                    .map(|spec| {
                        cv::holdout(
                            spec,
                            &set.x,
                            &y,
                            &classes,
                            &core,
                            &test.x,
                            &test_y,
                            opts.threads,
                            opts.seed,
                        )
                    })
                    .collect();
                tracing::debug!(seconds = start.elapsed().as_secs_f64(), "holdout scored");
                (scores, Some(test.len()))
            }
        };
        let nested = if nested {
            progress(&format!("{} nested cross-validation", file.target));
            let (accuracy, balanced_accuracy, chosen) = cv::nested(
                &candidates,
                &set.x,
                &y,
                &classes,
                &core,
                opts.threads,
                opts.seed,
            )?;
            Some(Nested {
                accuracy,
                balanced_accuracy,
                chosen,
            })
        } else {
            None
        };
        targets.push(TargetEval {
            nested,
            target: file.target,
            chosen: scores[best].candidate.clone(),
            accuracy: scores[best].accuracy,
            balanced_accuracy: scores[best].balanced_accuracy,
            rows: set.len(),
            holdout_rows,
            candidates: scores,
        });
    }
    Ok(EvalReport { targets })
}

impl EvalReport {
    /// The human-readable table (Markdown, so it can be pasted into BENCHMARKS.md).
    pub fn table(&self) -> String {
        let mut out = String::new();
        for t in &self.targets {
            out.push_str(&format!(
                "\n{} ({} rows{}): chosen {} — accuracy {:.4}, balanced accuracy {:.4}\n\n",
                t.target,
                t.rows,
                t.holdout_rows
                    .map(|n| format!(", scored on {n} holdout rows"))
                    .unwrap_or_else(|| ", 5-fold CV".into()),
                t.chosen,
                t.accuracy,
                t.balanced_accuracy
            ));
            if let Some(n) = &t.nested {
                out.push_str(&format!(
                    "Nested 5x5-fold CV of the whole choice: accuracy {:.4}, balanced accuracy {:.4} (chosen per outer fold: {})\n\n",
                    n.accuracy,
                    n.balanced_accuracy,
                    n.chosen.join(", ")
                ));
            }
            out.push_str("| candidate | accuracy | balanced accuracy | time (s) |\n");
            out.push_str("|---|---|---|---|\n");
            for c in &t.candidates {
                match &c.error {
                    None => out.push_str(&format!(
                        "| {}{} | {:.4} | {:.4} | {:.2} |\n",
                        c.candidate,
                        if c.candidate == t.chosen {
                            " **(chosen)**"
                        } else {
                            ""
                        },
                        c.accuracy,
                        c.balanced_accuracy,
                        c.seconds
                    )),
                    Some(e) => out.push_str(&format!(
                        "| {} | failed: {e} | | {:.2} |\n",
                        c.candidate, c.seconds
                    )),
                }
            }
        }
        out
    }
}
