//! The model families a target can be fitted with, behind one [`Model`] type:
//! - logistic regression (linfa-logistic, binary or multinomial) on standardised features;
//! - our own histogram CART tree and a bagged forest of them: features are pre-binned into at most 256
//!   quantile bins, each node's rows are partitioned in place, so a depth level costs O(rows ×
//!   features); forest trees are fitted on every core (linfa-trees rescans the whole data set per node
//!   and mis-searches repeated values, linfa-ensemble's forest cannot be saved: see the notes);
//! - k nearest neighbours on standardised features, searched with linfa-nn's KdTree, which is rebuilt
//!   when a model is loaded (the index borrows its points and does not serialise).
//!
//! Every model predicts a probability for each class it was trained on (`classes`, in ascending order).

use std::sync::mpsc;

use linfa::traits::Fit;
use linfa::Dataset;
use linfa_nn::distance::{L1Dist, L2Dist};
use linfa_nn::{CommonNearestNeighbour, NearestNeighbour};
use ndarray::{Array1, Array2, ArrayView2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A row-major matrix of features.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn new(cols: usize) -> Matrix {
        Matrix {
            rows: 0,
            cols,
            data: Vec::new(),
        }
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Matrix {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Only the columns at `cols`.
    pub fn columns(&self, cols: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(self.rows * cols.len());
        for i in 0..self.rows {
            let row = self.row(i);
            data.extend(cols.iter().map(|&c| row[c]));
        }
        Matrix {
            rows: self.rows,
            cols: cols.len(),
            data,
        }
    }
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FitError(pub String);

/// Hyper-parameters of one candidate. Its [`Spec::name`] is what tables and model files show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Spec {
    Logistic {
        alpha: f64,
    },
    Tree {
        /// 0: grown until pure (or `min_samples_leaf`).
        max_depth: usize,
        min_samples_leaf: u32,
    },
    Forest {
        trees: usize,
        /// Features tried per node; 0: the square root of the feature count.
        max_features: usize,
        max_depth: usize,
        min_samples_leaf: u32,
    },
    Knn {
        k: usize,
        manhattan: bool,
    },
}

impl Spec {
    pub fn name(&self) -> String {
        match self {
            Spec::Logistic { alpha } => format!("logistic(alpha={alpha})"),
            Spec::Tree {
                max_depth,
                min_samples_leaf,
            } => format!(
                "tree(depth={},leaf={min_samples_leaf})",
                depth_name(*max_depth)
            ),
            Spec::Forest {
                trees,
                max_features,
                max_depth,
                min_samples_leaf,
            } => format!(
                "forest(trees={trees},features={},depth={},leaf={min_samples_leaf})",
                if *max_features == 0 {
                    "sqrt".to_string()
                } else {
                    max_features.to_string()
                },
                depth_name(*max_depth)
            ),
            Spec::Knn { k, manhattan } => {
                format!("knn(k={k},{})", if *manhattan { "l1" } else { "l2" })
            }
        }
    }

    /// The candidates every target is scored with.
    pub fn candidates(n_features: usize) -> Vec<Spec> {
        vec![
            Spec::Logistic { alpha: 1.0 },
            Spec::Logistic { alpha: 0.001 },
            Spec::Tree {
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Tree {
                max_depth: 12,
                min_samples_leaf: 5,
            },
            Spec::Forest {
                trees: 40,
                max_features: 0,
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Forest {
                trees: 40,
                max_features: n_features.div_ceil(2),
                max_depth: 0,
                min_samples_leaf: 1,
            },
            Spec::Knn {
                k: 1,
                manhattan: false,
            },
            Spec::Knn {
                k: 5,
                manhattan: true,
            },
        ]
    }
}

fn depth_name(d: usize) -> String {
    if d == 0 {
        "full".into()
    } else {
        d.to_string()
    }
}

/// How many threads fitting may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Per-feature mean and standard deviation (a constant feature keeps scale 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Scaler {
    pub fn fit(x: &Matrix) -> Scaler {
        let n = x.rows.max(1) as f64;
        let mut mean = vec![0.0; x.cols];
        for i in 0..x.rows {
            for (m, v) in mean.iter_mut().zip(x.row(i)) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; x.cols];
        for i in 0..x.rows {
            for ((s, v), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let scale = var
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-12 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Scaler { mean, scale }
    }

    pub fn apply_row(&self, row: &[f64], out: &mut Vec<f64>) {
        out.extend(
            row.iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .map(|((v, m), s)| (v - m) / s),
        );
    }

    pub fn apply(&self, x: &Matrix) -> Array2<f64> {
        let mut data = Vec::with_capacity(x.data.len());
        for i in 0..x.rows {
            self.apply_row(x.row(i), &mut data);
        }
        Array2::from_shape_vec((x.rows, x.cols), data).expect("shape matches the data")
    }
}

/// A fitted model of any family. `classes` are the labels it knows, ascending; probabilities follow
/// that order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Model {
    pub classes: Vec<i64>,
    /// Which columns of the target's feature vector the model reads.
    pub columns: Vec<usize>,
    pub kind: ModelKind,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelKind {
    Logistic(Logistic),
    Tree(Tree),
    Forest(Forest),
    Knn(Knn),
}

impl Model {
    /// Fits `spec` on rows `x` with class indices `y` (into `classes`). `threads` bounds parallel work.
    pub fn fit(
        spec: &Spec,
        x: &Matrix,
        y: &[u16],
        classes: &[i64],
        core_columns: &[usize],
        threads: usize,
        seed: u64,
    ) -> Result<Model, FitError> {
        if x.rows == 0 || classes.is_empty() {
            return Err(FitError("no training rows".into()));
        }
        let all: Vec<usize> = (0..x.cols).collect();
        let (columns, kind) = match spec {
            Spec::Logistic { alpha } => (
                all,
                ModelKind::Logistic(Logistic::fit(x, y, classes.len(), *alpha)?),
            ),
            Spec::Tree {
                max_depth,
                min_samples_leaf,
            } => {
                let params = TreeParams {
                    max_depth: *max_depth,
                    min_samples_leaf: scaled_leaf(*min_samples_leaf, x.rows),
                    max_features: x.cols,
                };
                let binned = Binned::new(x);
                let weights = vec![1u32; x.rows];
                let mut rng = StdRng::seed_from_u64(seed);
                let tree = Tree::fit(&binned, y, &weights, classes.len(), &params, &mut rng);
                (all, ModelKind::Tree(tree))
            }
            Spec::Forest {
                trees,
                max_features,
                max_depth,
                min_samples_leaf,
            } => {
                let mf = if *max_features == 0 {
                    ((x.cols as f64).sqrt().round() as usize).max(1)
                } else {
                    (*max_features).min(x.cols)
                };
                let params = TreeParams {
                    max_depth: *max_depth,
                    min_samples_leaf: scaled_leaf(*min_samples_leaf, x.rows),
                    max_features: mf,
                };
                let forest = Forest::fit(x, y, classes.len(), *trees, &params, threads, seed);
                (all, ModelKind::Forest(forest))
            }
            Spec::Knn { k, manhattan } => {
                let cols = core_columns.to_vec();
                let sub = x.columns(&cols);
                (cols, ModelKind::Knn(Knn::fit(&sub, y, *k, *manhattan)))
            }
        };
        Ok(Model {
            classes: classes.to_vec(),
            columns,
            kind,
        })
    }

    /// Makes the model ready to predict after loading (rebuilds a kNN index).
    pub fn prepare(&mut self) -> Result<(), FitError> {
        if let ModelKind::Knn(k) = &mut self.kind {
            k.start_index()?;
        }
        Ok(())
    }

    fn pick(&self, row: &[f64], buf: &mut Vec<f64>) {
        buf.clear();
        buf.extend(
            self.columns
                .iter()
                .map(|&c| row.get(c).copied().unwrap_or(0.0)),
        );
    }

    /// Class probabilities of one feature vector (the target's full vector).
    pub fn predict_proba(&self, row: &[f64]) -> Result<Vec<f64>, FitError> {
        let mut buf = Vec::new();
        self.pick(row, &mut buf);
        match &self.kind {
            ModelKind::Logistic(m) => Ok(m.predict(&buf, self.classes.len())),
            ModelKind::Tree(t) => Ok(t.predict(&buf).iter().map(|p| f64::from(*p)).collect()),
            ModelKind::Forest(f) => Ok(f.predict(&buf, self.classes.len())),
            ModelKind::Knn(k) => k.predict_one(&buf, self.classes.len()),
        }
    }

    /// Class probabilities of many rows (evaluation); a kNN builds its index once for the batch.
    pub fn predict_batch(&self, x: &Matrix) -> Result<Vec<Vec<f64>>, FitError> {
        match &self.kind {
            ModelKind::Knn(k) => k.predict_batch(&x.columns(&self.columns), self.classes.len()),
            _ => (0..x.rows).map(|i| self.predict_proba(x.row(i))).collect(),
        }
    }
}

/// Large histories would grow trees with one leaf per few rows: the leaf size grows with the data so
/// a model stays small enough to save and load quickly (1 up to 10,000 rows).
fn scaled_leaf(min_samples_leaf: u32, rows: usize) -> u32 {
    min_samples_leaf.max((rows / 10_000) as u32).max(1)
}

/// Index of the largest probability (the first on ties: the smallest class).
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------- logistic regression

#[derive(Debug, Serialize, Deserialize)]
pub struct Logistic {
    scaler: Scaler,
    fitted: LogisticFit,
}

#[derive(Debug, Serialize, Deserialize)]
enum LogisticFit {
    /// linfa orders the two labels its own way: `positive` says which class index its probability is.
    Binary {
        model: linfa_logistic::FittedLogisticRegression<f64, usize>,
        positive: usize,
    },
    Multi(linfa_logistic::MultiFittedLogisticRegression<f64, usize>),
}

impl Logistic {
    fn fit(x: &Matrix, y: &[u16], n_classes: usize, alpha: f64) -> Result<Logistic, FitError> {
        let scaler = Scaler::fit(x);
        let xs = scaler.apply(x);
        let targets: Array1<usize> = y.iter().map(|c| usize::from(*c)).collect();
        let distinct = {
            let mut seen = vec![false; n_classes];
            y.iter().for_each(|c| seen[usize::from(*c)] = true);
            seen.iter().filter(|s| **s).count()
        };
        if distinct < 2 {
            return Err(FitError("logistic regression needs two classes".into()));
        }
        let fitted = if n_classes == 2 {
            let model = linfa_logistic::LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(100)
                .fit(&Dataset::new(xs, targets))
                .map_err(|e| FitError(e.to_string()))?;
            let positive = model.labels().pos.class;
            LogisticFit::Binary { model, positive }
        } else {
            let model = linfa_logistic::MultiLogisticRegression::default()
                .alpha(alpha)
                .max_iterations(100)
                .fit(&Dataset::new(xs, targets))
                .map_err(|e| FitError(e.to_string()))?;
            LogisticFit::Multi(model)
        };
        Ok(Logistic { scaler, fitted })
    }

    fn predict(&self, row: &[f64], n_classes: usize) -> Vec<f64> {
        let mut buf = Vec::with_capacity(row.len());
        self.scaler.apply_row(row, &mut buf);
        let x = Array2::from_shape_vec((1, buf.len()), buf).expect("one row");
        let mut out = vec![0.0; n_classes];
        match &self.fitted {
            LogisticFit::Binary { model, positive } => {
                let p = model.predict_probabilities(&x)[0];
                let positive = (*positive).min(n_classes - 1);
                out[positive] = p;
                out[1 - positive] = 1.0 - p;
            }
            LogisticFit::Multi(model) => {
                let p = model.predict_probabilities(&x);
                // linfa's class list maps its columns to our class indices (classes absent from the
                // training fold keep probability 0).
                for (col, class) in model.classes().iter().enumerate() {
                    if let Some(o) = out.get_mut(*class) {
                        *o = p[[0, col]];
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------- histogram tree and forest

/// Features cut into at most 256 bins: `cuts[f]` are ascending thresholds, and a value's bin is the
/// number of cuts below it, so "bin <= k" is exactly "value <= cuts[f][k]".
struct Binned {
    cuts: Vec<Vec<f64>>,
    /// Column-major bins: `bins[f][row]`.
    bins: Vec<Vec<u8>>,
}

/// Values looked at to place quantile cuts (an evenly spaced sample of large data).
const BIN_SAMPLE: usize = 200_000;
const MAX_BINS: usize = 256;

impl Binned {
    fn new(x: &Matrix) -> Binned {
        let step = x.rows.div_ceil(BIN_SAMPLE).max(1);
        let mut cuts = Vec::with_capacity(x.cols);
        let mut bins = Vec::with_capacity(x.cols);
        for f in 0..x.cols {
            let mut sample: Vec<f64> = (0..x.rows).step_by(step).map(|i| x.row(i)[f]).collect();
            sample.sort_by(f64::total_cmp);
            let mut uniq = sample.clone();
            uniq.dedup();
            let c: Vec<f64> = if uniq.len() <= MAX_BINS {
                // Every distinct value gets its bin; cut half-way, as scikit-learn places thresholds.
                uniq.windows(2)
                    .map(|w| w[0] + (w[1] - w[0]) / 2.0)
                    .collect()
            } else {
                let mut c: Vec<f64> = Vec::with_capacity(MAX_BINS - 1);
                for q in 1..MAX_BINS {
                    let v = sample[q * sample.len() / MAX_BINS];
                    let next = uniq.partition_point(|u| *u <= v);
                    if next < uniq.len() {
                        let cut = v + (uniq[next] - v) / 2.0;
                        if c.last().is_none_or(|l| *l < cut) {
                            c.push(cut);
                        }
                    }
                }
                c
            };
            let col: Vec<u8> = (0..x.rows)
                .map(|i| c.partition_point(|cut| *cut < x.row(i)[f]) as u8)
                .collect();
            cuts.push(c);
            bins.push(col);
        }
        Binned { cuts, bins }
    }

    fn n_bins(&self, f: usize) -> usize {
        self.cuts[f].len() + 1
    }
}

#[derive(Debug, Clone)]
struct TreeParams {
    max_depth: usize,
    min_samples_leaf: u32,
    max_features: usize,
}

/// A CART classification tree (Gini), stored flat. Node `i` is a leaf when `feature[i] == LEAF`;
/// then `left[i]` indexes its row of `leaf_probs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tree {
    n_classes: usize,
    feature: Vec<u32>,
    threshold: Vec<f64>,
    left: Vec<u32>,
    right: Vec<u32>,
    leaf_probs: Vec<f32>,
}

const LEAF: u32 = u32::MAX;

/// Reused per-feature histogram: `counts[bin * n_classes + class]`, with the bins touched listed.
struct Scratch {
    counts: Vec<u64>,
    touched: Vec<u8>,
    seen: [bool; MAX_BINS],
}

struct Split {
    feature: usize,
    bin: u8,
    score: f64,
    left_counts: Vec<u64>,
}

impl Tree {
    fn fit(
        data: &Binned,
        y: &[u16],
        weights: &[u32],
        n_classes: usize,
        params: &TreeParams,
        rng: &mut StdRng,
    ) -> Tree {
        let mut tree = Tree {
            n_classes,
            feature: Vec::new(),
            threshold: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
            leaf_probs: Vec::new(),
        };
        let mut idx: Vec<u32> = (0..y.len() as u32)
            .filter(|&i| weights[i as usize] > 0)
            .collect();
        let mut totals = vec![0u64; n_classes];
        for &i in &idx {
            totals[usize::from(y[i as usize])] += u64::from(weights[i as usize]);
        }
        let mut scratch = Scratch {
            counts: vec![0; MAX_BINS * n_classes],
            touched: Vec::with_capacity(MAX_BINS),
            seen: [false; MAX_BINS],
        };
        let n_features = data.bins.len();
        let mut order: Vec<usize> = (0..n_features).collect();
        // (node id, start, end, depth, class totals)
        let mut stack = vec![(tree.new_node(), 0usize, idx.len(), 0usize, totals)];
        while let Some((node, start, end, depth, totals)) = stack.pop() {
            let n: u64 = totals.iter().sum();
            let pure = totals.iter().filter(|c| **c > 0).count() <= 1;
            let depth_ok = params.max_depth == 0 || depth < params.max_depth;
            let min_leaf = u64::from(params.min_samples_leaf);
            let split = if pure || !depth_ok || n < 2 * min_leaf {
                None
            } else {
                // Features in random order; stop after `max_features` that could split (as
                // scikit-learn does, constant features do not count).
                for k in 0..n_features.min(params.max_features).max(1) {
                    let j = rng.gen_range(k..n_features);
                    order.swap(k, j);
                }
                if params.max_features < n_features {
                    // The rest stay shuffled for the fall-back when the drawn ones cannot split.
                    for k in params.max_features..n_features {
                        let j = rng.gen_range(k..n_features);
                        order.swap(k, j);
                    }
                }
                best_split(
                    data,
                    y,
                    weights,
                    &idx[start..end],
                    &totals,
                    &order,
                    params,
                    &mut scratch,
                )
            };
            match split {
                None => tree.make_leaf(node, &totals),
                Some(s) => {
                    let col = &data.bins[s.feature];
                    let rows = &mut idx[start..end];
                    let mut mid = 0;
                    for k in 0..rows.len() {
                        if col[rows[k] as usize] <= s.bin {
                            rows.swap(k, mid);
                            mid += 1;
                        }
                    }
                    let right_counts: Vec<u64> = totals
                        .iter()
                        .zip(&s.left_counts)
                        .map(|(t, l)| t - l)
                        .collect();
                    let l = tree.new_node();
                    let r = tree.new_node();
                    tree.feature[node] = s.feature as u32;
                    tree.threshold[node] = data.cuts[s.feature][usize::from(s.bin)];
                    tree.left[node] = l as u32;
                    tree.right[node] = r as u32;
                    stack.push((r, start + mid, end, depth + 1, right_counts));
                    stack.push((l, start, start + mid, depth + 1, s.left_counts));
                }
            }
        }
        tree
    }

    fn new_node(&mut self) -> usize {
        self.feature.push(LEAF);
        self.threshold.push(0.0);
        self.left.push(0);
        self.right.push(0);
        self.feature.len() - 1
    }

    fn make_leaf(&mut self, node: usize, totals: &[u64]) {
        let n: u64 = totals.iter().sum::<u64>().max(1);
        self.feature[node] = LEAF;
        self.left[node] = (self.leaf_probs.len() / self.n_classes) as u32;
        self.leaf_probs
            .extend(totals.iter().map(|c| (*c as f64 / n as f64) as f32));
    }

    fn predict(&self, row: &[f64]) -> &[f32] {
        let mut i = 0usize;
        // A corrupt file could hold a cycle: a path is never longer than the node count.
        for _ in 0..=self.feature.len() {
            let f = self.feature[i];
            if f == LEAF {
                let at = self.left[i] as usize * self.n_classes;
                return self.leaf_probs.get(at..at + self.n_classes).unwrap_or(&[]);
            }
            let v = row.get(f as usize).copied().unwrap_or(0.0);
            let next = if v <= self.threshold[i] {
                self.left[i]
            } else {
                self.right[i]
            } as usize;
            if next >= self.feature.len() {
                return &[];
            }
            i = next;
        }
        &[]
    }

    /// Whether every index in the tree points inside it (checked when a file is loaded).
    fn is_consistent(&self) -> bool {
        let n = self.feature.len();
        let leaves = self.leaf_probs.len() / self.n_classes.max(1);
        n > 0
            && self.threshold.len() == n
            && self.left.len() == n
            && self.right.len() == n
            && self.leaf_probs.len() % self.n_classes.max(1) == 0
            && (0..n).all(|i| {
                if self.feature[i] == LEAF {
                    (self.left[i] as usize) < leaves
                } else {
                    (self.left[i] as usize) < n && (self.right[i] as usize) < n
                }
            })
    }

    pub fn node_count(&self) -> usize {
        self.feature.len()
    }
}

#[allow(clippy::too_many_arguments)]
fn best_split(
    data: &Binned,
    y: &[u16],
    weights: &[u32],
    rows: &[u32],
    totals: &[u64],
    order: &[usize],
    params: &TreeParams,
    s: &mut Scratch,
) -> Option<Split> {
    let nc = totals.len();
    let n: u64 = totals.iter().sum();
    let parent = totals.iter().map(|c| (*c * *c) as f64).sum::<f64>() / n as f64;
    let min_leaf = u64::from(params.min_samples_leaf);
    let mut best: Option<Split> = None;
    let mut tried = 0;
    let mut left = vec![0u64; nc];
    for &f in order {
        if tried >= params.max_features {
            break;
        }
        let col = &data.bins[f];
        for &r in rows {
            let b = col[r as usize];
            if !s.seen[usize::from(b)] {
                s.seen[usize::from(b)] = true;
                s.touched.push(b);
            }
            s.counts[usize::from(b) * nc + usize::from(y[r as usize])] +=
                u64::from(weights[r as usize]);
        }
        if s.touched.len() > 1 {
            tried += 1;
            // Sweep the bins present, ascending: a dense scan for big nodes, a sort for small ones.
            if s.touched.len() * 8 < data.n_bins(f) {
                s.touched.sort_unstable();
            } else {
                s.touched.clear();
                s.touched
                    .extend((0..data.n_bins(f)).filter(|b| s.seen[*b]).map(|b| b as u8));
            }
            left.iter_mut().for_each(|c| *c = 0);
            let mut n_left = 0u64;
            for &b in &s.touched[..s.touched.len() - 1] {
                let at = usize::from(b) * nc;
                for (l, cnt) in left.iter_mut().zip(&s.counts[at..at + nc]) {
                    *l += cnt;
                    n_left += cnt;
                }
                let n_right = n - n_left;
                if n_left < min_leaf || n_right < min_leaf {
                    continue;
                }
                let mut sl = 0.0;
                let mut sr = 0.0;
                for (l, t) in left.iter().zip(totals) {
                    let r = (t - l) as f64;
                    let l = *l as f64;
                    sl += l * l;
                    sr += r * r;
                }
                let score = sl / n_left as f64 + sr / n_right as f64;
                if score > parent + 1e-9 && best.as_ref().is_none_or(|bst| score > bst.score) {
                    best = Some(Split {
                        feature: f,
                        bin: b,
                        score,
                        left_counts: left.clone(),
                    });
                }
            }
        }
        for &b in &s.touched {
            s.seen[usize::from(b)] = false;
            s.counts[usize::from(b) * nc..usize::from(b) * nc + nc]
                .iter_mut()
                .for_each(|c| *c = 0);
        }
        s.touched.clear();
    }
    best
}

/// Rows drawn for each forest tree's bootstrap sample: all of them up to this many (as scikit-learn
/// does), then this many (scikit-learn's `max_samples`), so a forest on a year of readings fits in
/// seconds while its trees together still see every row.
pub const MAX_TREE_SAMPLES: usize = 100_000;

/// Trees on bootstrap samples (as counts), probabilities averaged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forest {
    trees: Vec<Tree>,
}

impl Forest {
    fn fit(
        x: &Matrix,
        y: &[u16],
        n_classes: usize,
        n_trees: usize,
        params: &TreeParams,
        threads: usize,
        seed: u64,
    ) -> Forest {
        let binned = Binned::new(x);
        let threads = threads.clamp(1, n_trees.max(1));
        let fit_one = |t: usize| {
            // Each tree's randomness depends only on its number: the forest is the same on any
            // number of threads.
            let mut rng =
                StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut weights = vec![0u32; y.len()];
            for _ in 0..y.len().min(MAX_TREE_SAMPLES) {
                weights[rng.gen_range(0..y.len())] += 1;
            }
            // The tree works on a compact copy of its sample (a few MB at most): node scans then
            // stay in cache instead of striding across every row of a large history.
            let rows: Vec<usize> = (0..y.len()).filter(|&i| weights[i] > 0).collect();
            let local = Binned {
                cuts: binned.cuts.clone(),
                bins: binned
                    .bins
                    .iter()
                    .map(|col| rows.iter().map(|&i| col[i]).collect())
                    .collect(),
            };
            let local_y: Vec<u16> = rows.iter().map(|&i| y[i]).collect();
            let local_w: Vec<u32> = rows.iter().map(|&i| weights[i]).collect();
            Tree::fit(&local, &local_y, &local_w, n_classes, params, &mut rng)
        };
        let mut trees: Vec<(usize, Tree)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|w| {
                    let fit_one = &fit_one;
                    scope.spawn(move || {
                        (w..n_trees)
                            .step_by(threads)
                            .map(|t| (t, fit_one(t)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        trees.sort_by_key(|(t, _)| *t);
        Forest {
            trees: trees.into_iter().map(|(_, t)| t).collect(),
        }
    }

    fn predict(&self, row: &[f64], n_classes: usize) -> Vec<f64> {
        let mut out = vec![0.0; n_classes];
        for t in &self.trees {
            for (o, p) in out.iter_mut().zip(t.predict(row)) {
                *o += f64::from(*p);
            }
        }
        let n = self.trees.len().max(1) as f64;
        out.iter_mut().for_each(|o| *o /= n);
        out
    }

    pub fn node_count(&self) -> usize {
        self.trees.iter().map(Tree::node_count).sum()
    }
}

// ---------------------------------------------------------------- k nearest neighbours

/// Standardised training points and their classes. The KdTree borrows the points, so a loaded model
/// keeps it on a thread of its own that answers queries over a channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Knn {
    k: usize,
    manhattan: bool,
    scaler: Scaler,
    cols: usize,
    points: Vec<f64>,
    labels: Vec<u16>,
    #[serde(skip)]
    index: Option<KnnIndex>,
}

type Query = (Vec<f64>, usize, mpsc::Sender<Result<Vec<usize>, String>>);

#[derive(Debug)]
struct KnnIndex {
    tx: std::sync::Mutex<mpsc::Sender<Query>>,
}

/// Most rows a kNN keeps (the most recent): it bounds the model file and the rebuild on load.
pub const KNN_MAX_POINTS: usize = 100_000;

impl Knn {
    fn fit(x: &Matrix, y: &[u16], k: usize, manhattan: bool) -> Knn {
        let skip = x.rows.saturating_sub(KNN_MAX_POINTS);
        let idx: Vec<usize> = (skip..x.rows).collect();
        let x = x.select(&idx);
        let scaler = Scaler::fit(&x);
        let mut points = Vec::with_capacity(x.data.len());
        for i in 0..x.rows {
            scaler.apply_row(x.row(i), &mut points);
        }
        Knn {
            k: k.max(1),
            manhattan,
            scaler,
            cols: x.cols,
            points,
            labels: y[skip..].to_vec(),
            index: None,
        }
    }

    fn view(&self) -> Result<ArrayView2<'_, f64>, FitError> {
        ArrayView2::from_shape((self.labels.len(), self.cols), &self.points)
            .map_err(|e| FitError(format!("kNN points: {e}")))
    }

    fn vote(&self, neighbours: &[usize], n_classes: usize) -> Vec<f64> {
        let mut out = vec![0.0; n_classes];
        for &i in neighbours {
            if let Some(o) = self
                .labels
                .get(i)
                .and_then(|c| out.get_mut(usize::from(*c)))
            {
                *o += 1.0;
            }
        }
        let n = neighbours.len().max(1) as f64;
        out.iter_mut().for_each(|o| *o /= n);
        out
    }

    fn predict_batch(&self, x: &Matrix, n_classes: usize) -> Result<Vec<Vec<f64>>, FitError> {
        let view = self.view()?;
        let index = build_index(&view, self.manhattan)?;
        let mut buf = Vec::with_capacity(self.cols);
        (0..x.rows)
            .map(|i| {
                buf.clear();
                self.scaler.apply_row(x.row(i), &mut buf);
                let found = index
                    .k_nearest(ndarray::ArrayView1::from(&buf[..]), self.k)
                    .map_err(|e| FitError(e.to_string()))?;
                let ids: Vec<usize> = found.into_iter().map(|(_, i)| i).collect();
                Ok(self.vote(&ids, n_classes))
            })
            .collect()
    }

    fn start_index(&mut self) -> Result<(), FitError> {
        if self.points.len() != self.labels.len() * self.cols || self.labels.is_empty() {
            return Err(FitError("kNN points and labels disagree".into()));
        }
        let points = Array2::from_shape_vec((self.labels.len(), self.cols), self.points.clone())
            .map_err(|e| FitError(e.to_string()))?;
        let manhattan = self.manhattan;
        let (tx, rx) = mpsc::channel::<Query>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("knn-index".into())
            .spawn(move || {
                let index = match build_index(&points, manhattan) {
                    Ok(i) => {
                        let _ = ready_tx.send(Ok(()));
                        i
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when the model (the only sender) is dropped.
                while let Ok((q, k, reply)) = rx.recv() {
                    let result = index
                        .k_nearest(ndarray::ArrayView1::from(&q[..]), k)
                        .map(|v| v.into_iter().map(|(_, i)| i).collect())
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| FitError(format!("cannot start the kNN thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| FitError("the kNN thread stopped".into()))??;
        self.index = Some(KnnIndex {
            tx: std::sync::Mutex::new(tx),
        });
        Ok(())
    }

    fn predict_one(&self, row: &[f64], n_classes: usize) -> Result<Vec<f64>, FitError> {
        let Some(index) = &self.index else {
            // Not prepared (a freshly fitted model): a one-off index.
            let m = Matrix {
                rows: 1,
                cols: row.len(),
                data: row.to_vec(),
            };
            return self
                .predict_batch(&m, n_classes)?
                .pop()
                .ok_or_else(|| FitError("no prediction".into()));
        };
        let mut q = Vec::with_capacity(self.cols + 1);
        self.scaler.apply_row(row, &mut q);
        let (reply_tx, reply_rx) = mpsc::channel();
        index
            .tx
            .lock()
            .map_err(|_| FitError("kNN index lock poisoned".into()))?
            .send((q, self.k, reply_tx))
            .map_err(|_| FitError("the kNN thread stopped".into()))?;
        let ids = reply_rx
            .recv()
            .map_err(|_| FitError("the kNN thread stopped".into()))?
            .map_err(FitError)?;
        Ok(self.vote(&ids, n_classes))
    }
}

fn build_index<'a, D: ndarray::Data<Elem = f64>>(
    points: &'a ndarray::ArrayBase<D, ndarray::Ix2>,
    manhattan: bool,
) -> Result<Box<dyn linfa_nn::NearestNeighbourIndex<f64> + Send + Sync + 'a>, FitError> {
    let built = if manhattan {
        CommonNearestNeighbour::KdTree.from_batch(points, L1Dist)
    } else {
        CommonNearestNeighbour::KdTree.from_batch(points, L2Dist)
    };
    built.map_err(|e| FitError(format!("kNN index: {e}")))
}

impl Model {
    /// Checks what a loaded file claims before it is used (a hand-edited or truncated file must not
    /// panic the hub).
    pub fn validate(&self, n_features: usize) -> Result<(), FitError> {
        let nc = self.classes.len();
        if nc == 0 {
            return Err(FitError("no classes".into()));
        }
        if self.columns.iter().any(|c| *c >= n_features) {
            return Err(FitError(
                "a column index is outside the feature vector".into(),
            ));
        }
        let cols = self.columns.len();
        let scaler_ok = |s: &Scaler| {
            s.mean.len() == cols
                && s.scale.len() == cols
                && s.mean.iter().all(|m| m.is_finite())
                && s.scale.iter().all(|v| v.is_finite() && *v > 0.0)
        };
        let ok = match &self.kind {
            ModelKind::Logistic(l) => {
                scaler_ok(&l.scaler)
                    && match &l.fitted {
                        LogisticFit::Binary { model, positive } => {
                            nc == 2 && *positive < 2 && model.params().len() == cols
                        }
                        LogisticFit::Multi(m) => {
                            m.params().nrows() == cols
                                && m.params().ncols() == m.classes().len()
                                && m.intercept().len() == m.classes().len()
                        }
                    }
            }
            ModelKind::Tree(t) => t.n_classes == nc && t.is_consistent(),
            ModelKind::Forest(f) => {
                !f.trees.is_empty()
                    && f.trees
                        .iter()
                        .all(|t| t.n_classes == nc && t.is_consistent())
            }
            ModelKind::Knn(k) => {
                k.cols == cols
                    && scaler_ok(&k.scaler)
                    && k.k > 0
                    && k.points.iter().all(|p| p.is_finite())
                    && k.points.len() == k.labels.len() * cols
                    && k.labels.iter().all(|c| usize::from(*c) < nc)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(FitError("the model's parts do not fit together".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes split by x0 > 5, with an irrelevant second feature.
    fn data() -> (Matrix, Vec<u16>) {
        let mut x = Matrix::new(2);
        let mut y = Vec::new();
        for i in 0..200 {
            let a = (i % 10) as f64;
            let b = ((i * 7) % 13) as f64;
            x.data.extend([a, b]);
            x.rows += 1;
            y.push(u16::from(a > 5.0));
        }
        (x, y)
    }

    #[test]
    fn every_family_learns_a_threshold_and_round_trips() {
        let (x, y) = data();
        for spec in Spec::candidates(2) {
            let model = Model::fit(&spec, &x, &y, &[0, 1], &[0, 1], 2, 7).unwrap();
            let p = model.predict_proba(&[8.0, 3.0]).unwrap();
            assert_eq!(argmax(&p), 1, "{}: {p:?}", spec.name());
            let p = model.predict_proba(&[1.0, 3.0]).unwrap();
            assert_eq!(argmax(&p), 0, "{}: {p:?}", spec.name());
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
            let text = serde_json::to_string(&model).unwrap();
            let mut back: Model = serde_json::from_str(&text).unwrap();
            back.validate(2).unwrap();
            back.prepare().unwrap();
            for row in [[8.0, 3.0], [1.0, 0.0], [5.5, 12.0]] {
                assert_eq!(
                    model.predict_proba(&row).unwrap(),
                    back.predict_proba(&row).unwrap(),
                    "{} reloads bit-exactly",
                    spec.name()
                );
            }
        }
    }

    #[test]
    fn tree_thresholds_sit_between_values_like_scikit_learn() {
        let (x, y) = data();
        let binned = Binned::new(&x);
        let params = TreeParams {
            max_depth: 0,
            min_samples_leaf: 1,
            max_features: 2,
        };
        let tree = Tree::fit(
            &binned,
            &y,
            &vec![1; y.len()],
            2,
            &params,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(tree.node_count(), 3, "one split separates the classes");
        assert_eq!(tree.threshold[0], 5.5);
        assert_eq!(tree.feature[0], 0);
    }

    #[test]
    fn forests_are_the_same_on_any_number_of_threads() {
        let (x, y) = data();
        let spec = Spec::Forest {
            trees: 6,
            max_features: 1,
            max_depth: 0,
            min_samples_leaf: 1,
        };
        let a = Model::fit(&spec, &x, &y, &[0, 1], &[0, 1], 1, 3).unwrap();
        let b = Model::fit(&spec, &x, &y, &[0, 1], &[0, 1], 2, 3).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn binary_logistic_probabilities_follow_our_classes() {
        // Class index 1 is the rare one: whichever label linfa calls positive, the probability of
        // index 1 must be high where x0 is high.
        let (x, y) = data();
        let model = Model::fit(
            &Spec::Logistic { alpha: 0.001 },
            &x,
            &y,
            &[0, 1],
            &[0, 1],
            1,
            0,
        )
        .unwrap();
        let p = model.predict_proba(&[9.0, 0.0]).unwrap();
        assert!(p[1] > 0.9, "{p:?}");
        let flipped: Vec<u16> = y.iter().map(|c| 1 - c).collect();
        let model = Model::fit(
            &Spec::Logistic { alpha: 0.001 },
            &x,
            &flipped,
            &[0, 1],
            &[0, 1],
            1,
            0,
        )
        .unwrap();
        let p = model.predict_proba(&[9.0, 0.0]).unwrap();
        assert!(p[0] > 0.9, "{p:?}");
    }

    #[test]
    fn a_corrupt_tree_is_refused_not_followed() {
        let (x, y) = data();
        let model = Model::fit(
            &Spec::Tree {
                max_depth: 0,
                min_samples_leaf: 1,
            },
            &x,
            &y,
            &[0, 1],
            &[0, 1],
            1,
            0,
        )
        .unwrap();
        let text = serde_json::to_string(&model)
            .unwrap()
            .replace("\"left\":[1,", "\"left\":[99,");
        let back: Model = serde_json::from_str(&text).unwrap();
        assert!(back.validate(2).is_err());
    }
}
