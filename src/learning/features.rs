//! Feature vectors, built in one place for training, evaluation and live predictions. A row's raw
//! [`Inputs`] come from a stored reading, a live reading plus the latest readings of the home, or a
//! legacy CSV row; [`features`] turns them into the numbers a model sees.

use std::f64::consts::TAU;

use serde::Serialize;

use crate::home::Thing;
use crate::readings::{Measurement, Reading, ReadingKind};

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The light is on (1) or off (0).
    Light,
    /// The TV channel, 0 = off.
    Tv,
    /// The fan level.
    Fan,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Light, Target::Tv, Target::Fan];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Light => "light",
            Target::Tv => "tv",
            Target::Fan => "fan",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The reading kind whose rows train this target.
    pub fn kind(self) -> ReadingKind {
        match self {
            Target::Light => ReadingKind::Light,
            Target::Tv => ReadingKind::Tv,
            Target::Fan => ReadingKind::Climate,
        }
    }

    pub fn from_kind(kind: ReadingKind) -> Target {
        match kind {
            ReadingKind::Light => Target::Light,
            ReadingKind::Tv => Target::Tv,
            ReadingKind::Climate => Target::Fan,
        }
    }

    /// The thing of the home a prediction of this target would change.
    pub fn thing(self) -> Thing {
        match self {
            Target::Light => Thing::Light,
            Target::Tv => Thing::Tv,
            Target::Fan => Thing::Fan,
        }
    }

    /// The legacy app's name of the item (`itemControlled`).
    pub fn legacy_item(self) -> &'static str {
        match self {
            Target::Light => "light",
            Target::Tv => "tv",
            Target::Fan => "weather",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The raw inputs of one row. Fields a target does not use are ignored; `None` means not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Inputs {
    /// Local seconds since midnight.
    pub time_of_day_s: f64,
    /// ISO day of week, 1 = Monday.
    pub day_of_week: u8,
    /// 1..=12; 0 = unknown (imported light and TV rows carry no date).
    pub month: u8,
    pub motion: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub humidity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light_intensity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_humidity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_luminosity: Option<f64>,
}

impl Inputs {
    /// The inputs of a reading, with its label (if any) as the second value.
    pub fn from_reading(reading: &Reading) -> (Inputs, Option<i64>) {
        let mut inputs = Inputs {
            time_of_day_s: reading.time.time_of_day_s,
            day_of_week: reading.time.day_of_week,
            month: reading.time.month,
            ..Inputs::default()
        };
        if let Some(o) = &reading.outside {
            inputs.outside_temperature = o.temperature;
            inputs.outside_humidity = o.humidity;
            inputs.outside_luminosity = o.luminosity;
        }
        let label = match &reading.measurement {
            Measurement::Light {
                temperature,
                motion,
                light_intensity,
                active,
            } => {
                inputs.temperature = Some(*temperature);
                inputs.motion = *motion;
                inputs.light_intensity = Some(*light_intensity);
                active.map(i64::from)
            }
            Measurement::Tv { motion, channel } => {
                inputs.motion = *motion;
                channel.map(i64::from)
            }
            Measurement::Climate {
                temperature,
                humidity,
                motion,
                fan_level,
            } => {
                inputs.temperature = Some(*temperature);
                inputs.humidity = Some(*humidity);
                inputs.motion = *motion;
                fan_level.map(i64::from)
            }
        };
        (inputs, label)
    }
}

/// Width of the coarse time-of-day bins (one-hot): they let a linear model learn "evening" as a step.
const HOUR_BIN_HOURS: f64 = 4.0;
const HOUR_BINS: usize = 6;

/// Names of the features of a target, in the order [`features`] writes them.
pub fn feature_names(target: Target) -> Vec<String> {
    let mut names: Vec<String> = ["hour", "time_sin", "time_cos"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for b in 0..HOUR_BINS {
        let from = b as f64 * HOUR_BIN_HOURS;
        names.push(format!("hours_{from:02}_{:02}", from + HOUR_BIN_HOURS));
    }
    names.extend(["day_of_week", "weekend", "motion"].map(String::from));
    match target {
        Target::Light => names.extend(["temperature", "light_intensity"].map(String::from)),
        Target::Tv => {}
        Target::Fan => names.extend(
            [
                "month",
                "temperature",
                "humidity",
                "outside_known",
                "outside_temperature",
                "outside_humidity",
                "outside_luminosity",
            ]
            .map(String::from),
        ),
    }
    names
}

/// Whether a feature is one of the compact set distance-based models use (the one-hot bins and
/// derived flags only add distance jumps there).
pub fn is_core_feature(name: &str) -> bool {
    !(name.starts_with("hours_") || name == "weekend" || name == "hour" || name == "outside_known")
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// The feature vector of a target (missing measurements are 0, with a flag where it matters).
pub fn features(target: Target, inputs: &Inputs) -> Vec<f64> {
    let mut out = Vec::with_capacity(20);
    write_features(target, inputs, &mut out);
    out
}

/// Appends the feature vector of a target to `out` (training builds one flat matrix).
pub fn write_features(target: Target, i: &Inputs, out: &mut Vec<f64>) {
    let tod = finite(i.time_of_day_s).clamp(0.0, 86_400.0);
    let hour = tod / 3600.0;
    let angle = TAU * tod / 86_400.0;
    out.extend([hour, angle.sin(), angle.cos()]);
    let bin = ((hour / HOUR_BIN_HOURS) as usize).min(HOUR_BINS - 1);
    out.extend((0..HOUR_BINS).map(|b| if b == bin { 1.0 } else { 0.0 }));
    let dow = f64::from(i.day_of_week);
    out.extend([
        dow,
        if i.day_of_week >= 6 { 1.0 } else { 0.0 },
        if i.motion { 1.0 } else { 0.0 },
    ]);
    let v = |x: Option<f64>| finite(x.unwrap_or(0.0));
    match target {
        Target::Light => out.extend([v(i.temperature), v(i.light_intensity)]),
        Target::Tv => {}
        Target::Fan => {
            let known = i.outside_temperature.is_some()
                || i.outside_humidity.is_some()
                || i.outside_luminosity.is_some();
            out.extend([
                f64::from(i.month),
                v(i.temperature),
                v(i.humidity),
                if known { 1.0 } else { 0.0 },
                v(i.outside_temperature),
                v(i.outside_humidity),
                v(i.outside_luminosity),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_values() {
        let inputs = Inputs {
            time_of_day_s: 6.0 * 3600.0,
            day_of_week: 6,
            month: 5,
            motion: true,
            temperature: Some(21.0),
            humidity: Some(40.0),
            light_intensity: Some(300.0),
            outside_temperature: Some(30.0),
            ..Inputs::default()
        };
        for target in Target::ALL {
            let names = feature_names(target);
            let values = features(target, &inputs);
            assert_eq!(names.len(), values.len(), "{target}");
            let get = |n: &str| values[names.iter().position(|x| x == n).unwrap()];
            assert_eq!(get("hour"), 6.0);
            assert!(
                (get("time_sin") - 1.0).abs() < 1e-12,
                "06:00 is a quarter turn"
            );
            assert_eq!(get("hours_04_08"), 1.0);
            assert_eq!(get("hours_00_04"), 0.0);
            assert_eq!(get("weekend"), 1.0);
            assert_eq!(get("motion"), 1.0);
        }
        let fan = features(Target::Fan, &inputs);
        let names = feature_names(Target::Fan);
        let get = |n: &str| fan[names.iter().position(|x| x == n).unwrap()];
        assert_eq!(get("outside_known"), 1.0);
        assert_eq!(get("outside_humidity"), 0.0, "missing is 0 beside the flag");
        assert_eq!(get("month"), 5.0);
    }
}
