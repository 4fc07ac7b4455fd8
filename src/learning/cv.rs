//! Model selection: 5-fold cross-validation with folds interleaved by row (row index mod 5), scored
//! by accuracy and balanced accuracy (mean per-class recall) over the pooled out-of-fold predictions.
//! The best candidate is the one with the highest balanced accuracy, then accuracy.

use std::time::Instant;

use serde::Serialize;

use super::models::{argmax, FitError, Matrix, Model, Spec};

pub const FOLDS: usize = 5;

/// How one candidate scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub candidate: String,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    /// Time of the whole evaluation (every fold's fit and predictions).
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Score {
    fn failed(spec: &Spec, why: String, seconds: f64) -> Score {
        Score {
            candidate: spec.name(),
            accuracy: 0.0,
            balanced_accuracy: 0.0,
            seconds,
            error: Some(why),
        }
    }

    /// Ordering used to choose: balanced accuracy, then accuracy.
    pub fn better_or_equal(&self, other: &Score) -> bool {
        (self.balanced_accuracy, self.accuracy) >= (other.balanced_accuracy, other.accuracy)
    }
}

/// Accuracy and balanced accuracy (mean recall over the classes present in `truth`). A truth index
/// `>= n_classes` stands for a class the model never saw: always wrong.
pub fn scores(truth: &[usize], predicted: &[usize], n_classes: usize) -> (f64, f64) {
    if truth.is_empty() {
        return (0.0, 0.0);
    }
    let mut hits = vec![0usize; n_classes + 1];
    let mut totals = vec![0usize; n_classes + 1];
    let mut correct = 0;
    for (t, p) in truth.iter().zip(predicted) {
        let t = (*t).min(n_classes);
        totals[t] += 1;
        if t == *p && t < n_classes {
            hits[t] += 1;
            correct += 1;
        }
    }
    let present: Vec<f64> = totals
        .iter()
        .zip(&hits)
        .filter(|(n, _)| **n > 0)
        .map(|(n, h)| *h as f64 / *n as f64)
        .collect();
    let balanced = present.iter().sum::<f64>() / present.len() as f64;
    (correct as f64 / truth.len() as f64, balanced)
}

/// Cross-validates one candidate; folds run on up to `threads` threads.
pub fn cross_validate(
    spec: &Spec,
    x: &Matrix,
    y: &[u16],
    classes: &[i64],
    core_columns: &[usize],
    threads: usize,
    seed: u64,
) -> Score {
    let start = Instant::now();
    let fold = |k: usize| -> Result<Vec<(usize, usize)>, FitError> {
        let train: Vec<usize> = (0..x.rows).filter(|i| i % FOLDS != k).collect();
        let test: Vec<usize> = (0..x.rows).filter(|i| i % FOLDS == k).collect();
        let ty: Vec<u16> = train.iter().map(|&i| y[i]).collect();
        let model = Model::fit(spec, &x.select(&train), &ty, classes, core_columns, 1, seed)?;
        let probs = model.predict_batch(&x.select(&test))?;
        Ok(test
            .iter()
            .zip(probs)
            .map(|(&i, p)| (i, argmax(&p)))
            .collect())
    };
    let threads = threads.clamp(1, FOLDS);
    let results: Vec<Result<Vec<(usize, usize)>, FitError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let fold = &fold;
                s.spawn(move || (w..FOLDS).step_by(threads).map(fold).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(FitError("a fold panicked".into()))])
            })
            .collect()
    });
    let mut predicted = vec![0usize; x.rows];
    for r in results {
        match r {
            Ok(pairs) => pairs.into_iter().for_each(|(i, p)| predicted[i] = p),
            Err(e) => return Score::failed(spec, e.0, start.elapsed().as_secs_f64()),
        }
    }
    let truth: Vec<usize> = y.iter().map(|c| usize::from(*c)).collect();
    let (accuracy, balanced_accuracy) = scores(&truth, &predicted, classes.len());
    Score {
        candidate: spec.name(),
        accuracy,
        balanced_accuracy,
        seconds: start.elapsed().as_secs_f64(),
        error: None,
    }
}

/// Fits on one set and scores on another (`smarthub eval --holdout-dir`). `test_y` uses the training
/// classes' indices, `>= classes.len()` for labels the training set lacks.
#[allow(clippy::too_many_arguments)]
pub fn holdout(
    spec: &Spec,
    x: &Matrix,
    y: &[u16],
    classes: &[i64],
    core_columns: &[usize],
    test_x: &Matrix,
    test_y: &[usize],
    threads: usize,
    seed: u64,
) -> Score {
    let start = Instant::now();
    let result = Model::fit(spec, x, y, classes, core_columns, threads, seed)
        .and_then(|m| m.predict_batch(test_x));
    match result {
        Ok(probs) => {
            let predicted: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
            let (accuracy, balanced_accuracy) = scores(test_y, &predicted, classes.len());
            Score {
                candidate: spec.name(),
                accuracy,
                balanced_accuracy,
                seconds: start.elapsed().as_secs_f64(),
                error: None,
            }
        }
        Err(e) => Score::failed(spec, e.0, start.elapsed().as_secs_f64()),
    }
}

/// Nested cross-validation: in each outer fold the candidate is chosen by an inner 5-fold CV of the
/// training rows alone, then fitted on them and scored on the held-out fold. Unlike the chosen
/// candidate's plain CV score, no choice ever sees the rows it is scored on. Returns (accuracy,
/// balanced accuracy, the candidate chosen in each outer fold).
pub fn nested(
    specs: &[Spec],
    x: &Matrix,
    y: &[u16],
    classes: &[i64],
    core_columns: &[usize],
    threads: usize,
    seed: u64,
) -> Result<(f64, f64, Vec<String>), FitError> {
    let mut predicted = vec![0usize; x.rows];
    let mut chosen = Vec::new();
    for k in 0..FOLDS {
        let train: Vec<usize> = (0..x.rows).filter(|i| i % FOLDS != k).collect();
        let test: Vec<usize> = (0..x.rows).filter(|i| i % FOLDS == k).collect();
        let tx = x.select(&train);
        let ty: Vec<u16> = train.iter().map(|&i| y[i]).collect();
        let scores: Vec<Score> = specs
            .iter()
            .map(|s| cross_validate(s, &tx, &ty, classes, core_columns, threads, seed))
            .collect();
        let best = best(&scores).ok_or_else(|| FitError("every candidate failed".into()))?;
        chosen.push(specs[best].name());
        let model = Model::fit(&specs[best], &tx, &ty, classes, core_columns, threads, seed)?;
        for (&i, p) in test.iter().zip(model.predict_batch(&x.select(&test))?) {
            predicted[i] = argmax(&p);
        }
    }
    let truth: Vec<usize> = y.iter().map(|c| usize::from(*c)).collect();
    let (accuracy, balanced) = scores(&truth, &predicted, classes.len());
    Ok((accuracy, balanced, chosen))
}

/// Index of the best scored candidate (failures never win); the first of equals.
pub fn best(scores: &[Score]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if s.error.is_some() {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                (s.balanced_accuracy, s.accuracy)
                    > (scores[b].balanced_accuracy, scores[b].accuracy)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_accuracy_is_mean_recall() {
        // 8 of class 0 all right, 2 of class 1 half right.
        let truth = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let pred = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let (acc, bal) = scores(&truth, &pred, 2);
        assert!((acc - 0.9).abs() < 1e-12);
        assert!((bal - 0.75).abs() < 1e-12);
        // An unseen class counts as a miss, in its own recall.
        let (acc, bal) = scores(&[0, 5], &[0, 0], 2);
        assert_eq!((acc, bal), (0.5, 0.5));
    }

    #[test]
    fn best_prefers_balanced_then_accuracy() {
        let s = |c: &str, a, b| Score {
            candidate: c.into(),
            accuracy: a,
            balanced_accuracy: b,
            seconds: 0.0,
            error: None,
        };
        let list = [s("a", 0.9, 0.6), s("b", 0.8, 0.7), s("c", 0.85, 0.7)];
        assert_eq!(best(&list), Some(2));
        let mut failed = s("d", 1.0, 1.0);
        failed.error = Some("x".into());
        assert_eq!(best(&[failed, s("e", 0.1, 0.1)]), Some(1));
    }
}
