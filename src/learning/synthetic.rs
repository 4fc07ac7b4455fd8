//! Generated histories with known habits, for tests and the retrain benchmark (never for claims about
//! real households): the light is on when it is dark and someone moves, the TV channel follows the
//! hour, the fan level follows the room temperature. A small share of labels is flipped as noise.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

use super::features::{Inputs, Target};
use super::LearningError;

/// The light habit: on when dark (under 200 lx) and someone moves.
pub fn light_rule(i: &Inputs) -> i64 {
    i64::from(i.motion && i.light_intensity.unwrap_or(0.0) < 200.0)
}

/// The TV habit: the channel follows the hour.
pub fn tv_rule(i: &Inputs) -> i64 {
    match (i.time_of_day_s / 3600.0) as u32 {
        7..=8 => 3,
        16..=18 => 5,
        19..=22 => 2,
        _ => 0,
    }
}

/// The fan habit: the level follows the room temperature.
pub fn fan_rule(i: &Inputs) -> i64 {
    match i.temperature.unwrap_or(0.0) {
        t if t < 22.0 => 0,
        t if t < 26.0 => 1,
        t if t < 30.0 => 2,
        _ => 3,
    }
}

pub fn rule(target: Target, i: &Inputs) -> i64 {
    match target {
        Target::Light => light_rule(i),
        Target::Tv => tv_rule(i),
        Target::Fan => fan_rule(i),
    }
}

/// Generates labelled rows: one every `step_s` seconds of simulated time, `noise` of labels flipped to
/// another class.
pub struct Generator {
    rng: StdRng,
    t_s: f64,
    step_s: f64,
    noise: f64,
}

impl Generator {
    pub fn new(seed: u64, step_s: f64, noise: f64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            // 2024-01-01 was a Monday.
            t_s: 0.0,
            step_s,
            noise,
        }
    }

    /// The next row of a target: its inputs and label.
    pub fn next(&mut self, target: Target) -> (Inputs, i64) {
        self.t_s += self.step_s * self.rng.gen_range(0.5..1.5);
        let day = (self.t_s / 86_400.0) as u64;
        let tod = self.t_s % 86_400.0;
        let hour = tod / 3600.0;
        let daylight = (((hour - 6.0) / 12.0 * std::f64::consts::PI).sin()).max(0.0);
        let rng = &mut self.rng;
        let inputs = Inputs {
            time_of_day_s: tod,
            day_of_week: (day % 7) as u8 + 1,
            month: ((day / 30) % 12) as u8 + 1,
            motion: rng.gen_bool(0.6),
            temperature: Some(16.0 + 18.0 * rng.gen::<f64>()),
            humidity: Some(30.0 + 50.0 * rng.gen::<f64>()),
            light_intensity: Some((daylight * 900.0 + rng.gen_range(0.0..120.0)).max(0.0)),
            outside_temperature: None,
            outside_humidity: None,
            outside_luminosity: None,
        };
        let mut label = rule(target, &inputs);
        if rng.gen_bool(self.noise) {
            let classes: &[i64] = match target {
                Target::Light => &[0, 1],
                Target::Tv => &[0, 2, 3, 5],
                Target::Fan => &[0, 1, 2, 3],
            };
            label = classes[rng.gen_range(0..classes.len())];
        }
        (inputs, label)
    }
}

/// Writes `rows` generated rows of `target` into a database (one transaction), labelled as a node
/// would (`label_source = 'node'`). `measured_ms` advances with the simulated time.
pub fn fill(
    conn: &mut Connection,
    target: Target,
    rows: usize,
    seed: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), LearningError> {
    let mut generator = Generator::new(seed, 60.0, 0.03);
    let tx = conn.transaction()?;
    {
        let sql = match target {
            Target::Light => {
                "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                 backdated, source, temperature, motion, light_intensity, active, label_source)
                 VALUES ('synthetic', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?5, ?6, ?7, ?8, 'node')"
            }
            Target::Tv => {
                "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                 backdated, source, motion, channel, label_source)
                 VALUES ('synthetic', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?6, ?8, 'node')"
            }
            Target::Fan => {
                "INSERT INTO climate_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                 backdated, source, temperature, humidity, motion, fan_level, label_source)
                 VALUES ('synthetic', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?5, ?9, ?6, ?8, 'node')"
            }
        };
        let mut stmt = tx.prepare(sql)?;
        let base_ms = 1_704_067_200_000i64;
        for _ in 0..rows {
            let (i, label) = generator.next(target);
            let ms = base_ms + (generator.t_s * 1000.0) as i64;
            let values = params![
                ms,
                i.time_of_day_s,
                i.day_of_week,
                i.month,
                i.temperature,
                i.motion,
                i.light_intensity,
                label,
                i.humidity
            ];
            // Each statement names only the parameters it needs (SQLite counts up to the highest).
            for (k, v) in values.iter().enumerate().take(stmt.parameter_count()) {
                stmt.raw_bind_parameter(k + 1, v)?;
            }
            stmt.raw_execute()?;
            progress(1);
        }
    }
    tx.commit()?;
    Ok(())
}
