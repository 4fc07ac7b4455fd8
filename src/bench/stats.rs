//! Summaries of repeated runs (median and spread) and of latency samples (percentiles).

use serde::Serialize;

/// The figures of several runs of one measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Runs {
    pub values: Vec<f64>,
}

impl Runs {
    pub fn push(&mut self, v: f64) {
        if v.is_finite() {
            self.values.push(v);
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }

    /// "median (min–max)" with `fmt` applied to each, or "n/a".
    pub fn show(&self, fmt: impl Fn(f64) -> String) -> String {
        match (self.median(), self.min(), self.max()) {
            (Some(m), Some(lo), Some(hi)) if self.values.len() > 1 => {
                format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
            }
            (Some(m), _, _) => fmt(m),
            _ => "n/a".into(),
        }
    }
}

/// The `p`-th percentile (0..=100) of `samples` (nearest rank), or `None` when empty.
pub fn percentile(samples: &mut [f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// 12345.6 -> "12,346".
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        let mut r = Runs::default();
        for v in [3.0, 1.0, 2.0] {
            r.push(v);
        }
        assert_eq!(r.median(), Some(2.0));
        assert_eq!(r.show(|v| format!("{v:.0}")), "2 (1–3)");
        let mut s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut s, 50.0), Some(50.0));
        assert_eq!(percentile(&mut s, 99.0), Some(99.0));
        assert_eq!(percentile(&mut s, 100.0), Some(100.0));
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
