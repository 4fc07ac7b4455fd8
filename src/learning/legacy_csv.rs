//! The old backend's CSV exports (`light_dataset.csv`, `tv_dataSert.csv`, `wether_dataset.csv`, headers
//! as in the legacy contract): read for `smarthub eval`, and imported into the database by
//! `smarthub import` so an existing installation keeps its history.

use std::path::{Path, PathBuf};

use chrono::{Local, Offset};
use rusqlite::{params, Connection};

use super::features::{Inputs, Target};
use super::LearningError;

/// Each target's file name and exact header in the old export format.
pub const FILES: [(Target, &str, &str); 3] = [
    (
        Target::Light,
        "light_dataset.csv",
        "id,timeOfDay,temperature,dayOfWeek,weatherConditions,motionDetection,LightIntensity,active",
    ),
    (
        Target::Tv,
        "tv_dataSert.csv",
        "id,timeOfDay,dayOfWeek,motionDetection,channelOn",
    ),
    (
        Target::Fan,
        "wether_dataset.csv",
        "id,time,day,month,outside_temperature,room_temperature,outside_humidity,room_humidity,outside_luminosity,motionDetection,fanLevel",
    ),
];

/// One row of an old export.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRow {
    /// The old database's id (what makes an import idempotent).
    pub legacy_id: i64,
    /// Line in the file (1 = header).
    pub line: u64,
    /// Time of day as written: UTC, as the old backend stored it.
    pub inputs: Inputs,
    pub label: i64,
    /// Light rows: the outside weather description.
    pub weather: Option<String>,
    /// Why the row breaks the firmware contract's ranges (it is still used for evaluation, where the
    /// old models saw it too, but not imported).
    pub problem: Option<String>,
}

/// One export file, parsed.
#[derive(Debug, Clone)]
pub struct LegacyFile {
    pub path: PathBuf,
    pub target: Target,
    pub rows: Vec<LegacyRow>,
}

fn time_of_day(s: &str) -> Option<f64> {
    let mut parts = s.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(0.0..24.0).contains(&h) || !(0.0..60.0).contains(&m) {
        return None;
    }
    let t = h * 3600.0 + m * 60.0 + sec;
    (0.0..86_400.0).contains(&t).then_some(t)
}

fn boolean(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

fn month(s: &str) -> Option<u8> {
    const NAMES: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let lower = s.to_ascii_lowercase();
    NAMES
        .iter()
        .position(|n| *n == lower || n[..3] == lower)
        .map(|i| i as u8 + 1)
        .or_else(|| s.parse::<u8>().ok().filter(|m| (1..=12).contains(m)))
}

/// Reads one export file; the header must be the old format's.
pub fn read(path: &Path, target: Target) -> Result<LegacyFile, LearningError> {
    let err = |why: String| LearningError::Csv {
        path: path.to_owned(),
        why,
    };
    let expected = FILES
        .iter()
        .find(|(t, _, _)| *t == target)
        .map(|(_, _, h)| *h)
        .unwrap_or_default();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| err(e.to_string()))?;
    let header = reader
        .headers()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .collect::<Vec<_>>()
        .join(",");
    if header.trim_start_matches('\u{feff}') != expected {
        return Err(err(format!(
            "header is `{header}`; a {target} export has `{expected}`"
        )));
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n as u64 + 2;
        let record = record.map_err(|e| err(format!("line {line}: {e}")))?;
        let field = |i: usize, name: &str| -> Result<&str, LearningError> {
            record
                .get(i)
                .map(str::trim)
                .ok_or_else(|| err(format!("line {line}: {name}: missing")))
        };
        let number = |i: usize, name: &str| -> Result<f64, LearningError> {
            let s = field(i, name)?;
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(format!("line {line}: {name}: `{s}` is not a number")))
        };
        let optional = |i: usize, name: &str| -> Result<Option<f64>, LearningError> {
            if field(i, name)?.is_empty() {
                Ok(None)
            } else {
                number(i, name).map(Some)
            }
        };
        let flag = |i: usize, name: &str| -> Result<bool, LearningError> {
            let s = field(i, name)?;
            boolean(s).ok_or_else(|| {
                err(format!(
                    "line {line}: {name}: `{s}` is not Yes/No/True/False"
                ))
            })
        };
        let tod = |i: usize, name: &str| -> Result<f64, LearningError> {
            let s = field(i, name)?;
            time_of_day(s).ok_or_else(|| err(format!("line {line}: {name}: `{s}` is not HH:MM:SS")))
        };
        let day = |i: usize, name: &str| -> Result<u8, LearningError> {
            let s = field(i, name)?;
            s.parse::<u8>()
                .ok()
                .filter(|d| (1..=7).contains(d))
                .ok_or_else(|| err(format!("line {line}: {name}: `{s}` is not a day 1..=7")))
        };
        let integer = |i: usize, name: &str| -> Result<i64, LearningError> {
            let s = field(i, name)?;
            s.parse::<i64>()
                .ok()
                .ok_or_else(|| err(format!("line {line}: {name}: `{s}` is not an integer")))
        };
        let legacy_id = integer(0, "id")?;
        let mut problems = Vec::new();
        let mut check = |name: &str, v: f64, lo: f64, hi: f64| {
            if !(lo..=hi).contains(&v) {
                problems.push(if hi.is_finite() {
                    format!("{name} {v} is outside {lo}..={hi}")
                } else {
                    format!("{name} {v} is below {lo}")
                });
            }
        };
        let (inputs, label, weather) = match target {
            Target::Light => {
                let temperature = number(2, "temperature")?;
                let intensity = number(6, "LightIntensity")?;
                check("temperature", temperature, -50.0, 100.0);
                check("LightIntensity", intensity, 0.0, f64::INFINITY);
                let weather = field(4, "weatherConditions")?;
                (
                    Inputs {
                        time_of_day_s: tod(1, "timeOfDay")?,
                        day_of_week: day(3, "dayOfWeek")?,
                        motion: flag(5, "motionDetection")?,
                        temperature: Some(temperature),
                        light_intensity: Some(intensity),
                        ..Inputs::default()
                    },
                    i64::from(flag(7, "active")?),
                    (!weather.is_empty()).then(|| weather.to_owned()),
                )
            }
            Target::Tv => {
                let channel = integer(4, "channelOn")?;
                check(
                    "channelOn",
                    channel as f64,
                    0.0,
                    f64::from(crate::home::MAX_CHANNEL),
                );
                (
                    Inputs {
                        time_of_day_s: tod(1, "timeOfDay")?,
                        day_of_week: day(2, "dayOfWeek")?,
                        motion: flag(3, "motionDetection")?,
                        ..Inputs::default()
                    },
                    channel,
                    None,
                )
            }
            Target::Fan => {
                let m = field(3, "month")?;
                let temperature = number(5, "room_temperature")?;
                let humidity = number(7, "room_humidity")?;
                let fan = integer(10, "fanLevel")?;
                check("room_temperature", temperature, -50.0, 100.0);
                check("room_humidity", humidity, 0.0, 100.0);
                check(
                    "fanLevel",
                    fan as f64,
                    0.0,
                    f64::from(crate::readings::MAX_FAN_LABEL),
                );
                (
                    Inputs {
                        time_of_day_s: tod(1, "time")?,
                        day_of_week: day(2, "day")?,
                        month: month(m).ok_or_else(|| {
                            err(format!("line {line}: month: `{m}` is not a month name"))
                        })?,
                        motion: flag(9, "motionDetection")?,
                        temperature: Some(temperature),
                        humidity: Some(humidity),
                        outside_temperature: optional(4, "outside_temperature")?,
                        outside_humidity: optional(6, "outside_humidity")?,
                        outside_luminosity: optional(8, "outside_luminosity")?,
                        ..Inputs::default()
                    },
                    fan,
                    None,
                )
            }
        };
        rows.push(LegacyRow {
            legacy_id,
            line,
            inputs,
            label,
            weather,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        });
    }
    Ok(LegacyFile {
        path: path.to_owned(),
        target,
        rows,
    })
}

/// Reads every export present in `dir` (at least one must be).
pub fn read_dir(dir: &Path) -> Result<Vec<LegacyFile>, LearningError> {
    let mut out = Vec::new();
    for (target, name, _) in FILES {
        let path = dir.join(name);
        if path.is_file() {
            out.push(read(&path, target)?);
        }
    }
    if out.is_empty() {
        return Err(LearningError::Csv {
            path: dir.to_owned(),
            why: format!(
                "no export found; expected one of {}",
                FILES.map(|(_, n, _)| n).join(", ")
            ),
        });
    }
    Ok(out)
}

/// What an import did with one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportCounts {
    pub imported: u64,
    /// Rows an earlier import already brought in.
    pub already: u64,
    /// Rows outside the contract's ranges, with the first few reasons.
    pub skipped: u64,
    pub skipped_examples: Vec<String>,
}

/// Shifts a UTC time of day to local time (the database keeps local time) with the local zone's
/// current offset — the rows carry no date, so a DST change between then and now cannot be known.
fn to_local(tod_utc: f64, day: u8) -> (f64, u8) {
    let offset = f64::from(Local::now().offset().fix().local_minus_utc());
    let t = tod_utc + offset;
    if t < 0.0 {
        (t + 86_400.0, if day == 1 { 7 } else { day - 1 })
    } else if t >= 86_400.0 {
        (t - 86_400.0, if day == 7 { 1 } else { day + 1 })
    } else {
        (t, day)
    }
}

/// Imports one parsed file in one transaction: rows already imported (same file kind and old id) are
/// skipped, so running an import twice changes nothing. `progress` is told each row handled.
pub fn import(
    conn: &mut Connection,
    file: &LegacyFile,
    now_ms: i64,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportCounts, LearningError> {
    let tx = conn.transaction()?;
    let mut counts = ImportCounts::default();
    {
        let mut mark =
            tx.prepare("INSERT OR IGNORE INTO legacy_imports (target, legacy_id) VALUES (?1, ?2)")?;
        let target = file.target.as_str();
        for row in &file.rows {
            progress(1);
            if let Some(p) = &row.problem {
                counts.skipped += 1;
                if counts.skipped_examples.len() < 5 {
                    counts
                        .skipped_examples
                        .push(format!("line {}: {p}", row.line));
                }
                continue;
            }
            if mark.execute(params![target, row.legacy_id])? == 0 {
                counts.already += 1;
                continue;
            }
            let i = &row.inputs;
            let (tod, dow) = to_local(i.time_of_day_s, i.day_of_week);
            match file.target {
                Target::Light => tx.prepare_cached(
                    "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, temperature, motion, light_intensity, active, label_source, weather)
                     VALUES ('import', ?1, ?1, ?2, ?3, ?4, 1, 'import', ?5, ?6, ?7, ?8, 'node', ?9)",
                )?
                .execute(params![
                    now_ms,
                    tod,
                    dow,
                    i.month,
                    i.temperature,
                    i.motion,
                    i.light_intensity,
                    row.label,
                    row.weather
                ])?,
                Target::Tv => tx.prepare_cached(
                    "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, motion, channel, label_source)
                     VALUES ('import', ?1, ?1, ?2, ?3, ?4, 1, 'import', ?5, ?6, 'node')",
                )?
                .execute(params![now_ms, tod, dow, i.month, i.motion, row.label])?,
                Target::Fan => tx.prepare_cached(
                    "INSERT INTO climate_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, temperature, humidity, motion, fan_level, label_source,
                     outside_temperature, outside_humidity, outside_luminosity)
                     VALUES ('import', ?1, ?1, ?2, ?3, ?4, 1, 'import', ?5, ?6, ?7, ?8, 'node', ?9, ?10, ?11)",
                )?
                .execute(params![
                    now_ms,
                    tod,
                    dow,
                    i.month,
                    i.temperature,
                    i.humidity,
                    i.motion,
                    row.label,
                    i.outside_temperature,
                    i.outside_humidity,
                    i.outside_luminosity
                ])?,
            };
            counts.imported += 1;
        }
    }
    tx.commit()?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_format_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("light_dataset.csv"),
            "id,timeOfDay,temperature,dayOfWeek,weatherConditions,motionDetection,LightIntensity,active\r\n\
             99,16:36:03.164237,35.7,7,dust,Yes,1001.0,True\r\n\
             100,01:00:00.5,20.0,1,,No,-2.0,False\r\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("wether_dataset.csv"),
            "id,time,day,month,outside_temperature,room_temperature,outside_humidity,room_humidity,outside_luminosity,motionDetection,fanLevel\r\n\
             1,16:52:26.076536,2,April,,25.00,,70.00,,True,6\r\n",
        )
        .unwrap();
        let files = read_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let light = &files[0];
        assert_eq!(light.rows[0].label, 1);
        assert_eq!(light.rows[0].weather.as_deref(), Some("dust"));
        assert!((light.rows[0].inputs.time_of_day_s - 59_763.164237).abs() < 1e-6);
        assert!(light.rows[1]
            .problem
            .as_deref()
            .unwrap()
            .contains("LightIntensity"));
        let fan = &files[1];
        assert_eq!(fan.rows[0].inputs.month, 4);
        assert_eq!(fan.rows[0].inputs.outside_temperature, None);
        assert_eq!(fan.rows[0].label, 6);

        // Import: rows outside the contract's ranges are skipped and named; a second import of the
        // same files changes nothing; imported rows train like any other.
        let db = dir.path().join("data/smarthub.db");
        let mut conn = crate::store::open_migrated(&db).unwrap();
        let first = import(&mut conn, light, 1, &mut |_| {}).unwrap();
        assert_eq!((first.imported, first.already, first.skipped), (1, 0, 1));
        assert!(first.skipped_examples[0].contains("line 3"), "{first:?}");
        let again = import(&mut conn, light, 2, &mut |_| {}).unwrap();
        assert_eq!((again.imported, again.already, again.skipped), (0, 1, 1));
        import(&mut conn, fan, 1, &mut |_| {}).unwrap();
        let (source, backdated, day, label_source): (String, bool, u8, String) = conn
            .query_row(
                "SELECT source, backdated, day_of_week, label_source FROM light_readings",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(source, "import");
        assert!(backdated);
        assert!((1..=7).contains(&day));
        assert_eq!(label_source, "node");
        let set = super::super::TrainingSet::load(&conn, Target::Fan).unwrap();
        assert_eq!(set.labels, vec![6]);

        std::fs::write(
            dir.path().join("tv_dataSert.csv"),
            "id,timeOfDay,dayOfWeek,motionDetection,channelOn\r\n1,17:05:46.27,3,maybe,2\r\n",
        )
        .unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("motionDetection"),
            "{err}"
        );
        std::fs::write(dir.path().join("tv_dataSert.csv"), "a,b\r\n").unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("header"), "{err}");
    }
}
