//! Latency: publish of a reading → prediction on `smarthub/prediction/light`, at 1,000 and 10,000 readings
//! per second. Background load is TV readings from 4 paced clients; among it a probe client sends light
//! readings (answered by light predictions, paired by a light intensity unique to each probe, which the
//! prediction echoes in its `inputs`) and climate readings (answered by the hub's retained
//! `smarthub/climate/state`, paired by a unique humidity).
//!
//! Predictions need a trained model: [`trained_hub`] gives a fresh hub 7 days of back-dated history from
//! the simulator, asks it to train (`POST /api/v1/train`), waits until `/prediction_light/` answers 200,
//! and checks that a light reading is answered by a prediction. When no prediction comes, the report says
//! so and shows publish → climate state (the engine processed the reading and published the state it
//! changed) instead: never an invented prediction figure.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use smarthub::simulate::{self, SimOptions, SimStats};
use tokio::io::AsyncWriteExt;

use super::http::HttpConn;
use super::mqtt::{publish_until, put_publish, Conn, Message, Pace};
use super::procs::{CpuMark, CpuUse, Programs, Running};
use super::stats::{percentile, thousands, Runs};

const PREDICTION_TOPIC: &str = "smarthub/prediction/light";
const STATE_TOPIC: &str = "smarthub/climate/state";

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn summarise(mut ms: Vec<f64>) -> Option<Percentiles> {
    let samples = ms.len();
    Some(Percentiles {
        samples,
        p50_ms: percentile(&mut ms, 50.0)?,
        p99_ms: percentile(&mut ms, 99.0)?,
        max_ms: percentile(&mut ms, 100.0)?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub light_probes: usize,
    pub climate_probes: usize,
    /// Light predictions received, and how many of them answered a light probe.
    pub predictions: usize,
    pub answered_light: usize,
    /// publish → `smarthub/prediction/light`.
    pub prediction: Option<Percentiles>,
    /// publish → `smarthub/climate/state`.
    pub state: Option<Percentiles>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub predictions_available: bool,
    /// What the harness found about predictions, in words.
    pub prediction_note: String,
    pub runs: Vec<LatencyRun>,
}

impl LatencyResult {
    /// The runs at `rate`, summarised by `pick`.
    pub fn series(&self, rate: f64, pick: impl Fn(&LatencyRun) -> Option<f64>) -> Runs {
        let mut r = Runs::default();
        for run in self.runs.iter().filter(|r| r.target_rate == rate) {
            if let Some(v) = pick(run) {
                r.push(v);
            }
        }
        r
    }
}

/// What the subscriber saw: when, and the probe number it answers (light: from the prediction's
/// `inputs.light_intensity`; climate: from the state's humidity).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Prediction(Option<usize>),
    State(Option<usize>),
}

type Seen = Arc<Mutex<Vec<(Instant, Answer)>>>;

async fn watch(mqtt: std::net::SocketAddr) -> anyhow::Result<(Seen, tokio::task::JoinHandle<()>)> {
    let mut c = Conn::connect(mqtt, "bench-latency-watch", 60).await?;
    c.subscribe(&[PREDICTION_TOPIC, STATE_TOPIC], 0).await?;
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let (reader, wr) = c.into_split();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let _ = reader
            .run(
                Some(wr),
                |t, m| {
                    let value = serde_json::from_slice::<serde_json::Value>(m.payload).ok();
                    let answer = if m.topic == PREDICTION_TOPIC.as_bytes() {
                        Answer::Prediction(
                            value
                                .and_then(|v| v["inputs"]["light_intensity"].as_f64())
                                .and_then(|lux| probe_index(lux, LIGHT_BASE)),
                        )
                    } else {
                        Answer::State(
                            value
                                .and_then(|v| v["humidity"].as_f64())
                                .and_then(|h| probe_index(h, HUMIDITY_BASE)),
                        )
                    };
                    if let Ok(mut s) = s.lock() {
                        s.push((t, answer));
                    }
                },
                |_| {},
            )
            .await;
    });
    // Retained messages arrive first: let them pass, then forget them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.lock().map(|mut s| s.clear()).ok();
    Ok((seen, task))
}

/// Probe k carries `BASE + (k mod 8000) / 100` in a field the answer echoes: unique within a run.
const LIGHT_BASE: f64 = 100.0;
const HUMIDITY_BASE: f64 = 10.0;

fn probe_value(base: f64, k: usize) -> f64 {
    base + (k % 8000) as f64 / 100.0
}

fn probe_index(value: f64, base: f64) -> Option<usize> {
    let k = ((value - base) * 100.0).round();
    (0.0..8000.0).contains(&k).then_some(k as usize)
}

fn light_probe(k: usize) -> Vec<u8> {
    serde_json::json!({
        "temperature": 21.5,
        "motion": true,
        "light_intensity": probe_value(LIGHT_BASE, k),
    })
    .to_string()
    .into_bytes()
}

fn climate_probe(k: usize) -> Vec<u8> {
    serde_json::json!({
        "temperature": 22.5,
        "humidity": probe_value(HUMIDITY_BASE, k),
        "motion": false,
        "fan_level": 1,
    })
    .to_string()
    .into_bytes()
}

/// A fresh hub with 7 days of simulated history and, if the build can learn, trained models: whether
/// predictions come, and what was found, in words.
pub async fn trained_hub(programs: &Programs) -> anyhow::Result<(Running, bool, String)> {
    let running = programs.start(super::procs::Target::Smarthub).await?;
    let mut options = SimOptions::new("127.0.0.1", running.mqtt.port());
    options.nodes = 3;
    options.history_days = 7;
    options.duration = Some(Duration::ZERO);
    let history = options.history_total();
    simulate::run(
        options,
        Arc::new(SimStats::default()),
        std::future::pending(),
    )
    .await
    .context("publishing history with the simulator")?;
    let http = running.http.context("hub without HTTP")?;
    let mut client = HttpConn::connect(http).await?;
    let train = client.post("/api/v1/train").await?;
    let mut model = false;
    let mut status = 0;
    if train.status / 100 == 2 {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            status = client.get("/prediction_light/").await?.status;
            if status == 200 {
                model = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let (seen, task) = watch(running.mqtt).await?;
    let mut probe = Conn::connect(running.mqtt, "bench-latency-check", 60).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut available = false;
    while Instant::now() < deadline && !available {
        probe
            .publish_one("smarthub/nodes/bench-probe-light/light", &light_probe(0), 1)
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        available = seen
            .lock()
            .map(|s| s.iter().any(|(_, a)| matches!(a, Answer::Prediction(_))))
            .unwrap_or(false);
    }
    task.abort();
    let how = format!(
        "{history} back-dated readings (7 days × 3 simulated nodes), then `POST /api/v1/train` (HTTP {})",
        train.status
    );
    let note = match (model, available) {
        (_, true) => format!("Predictions arrive on {PREDICTION_TOPIC} after {how}"),
        (true, false) => format!(
            "After {how}, `/prediction_light/` answers 200 but no prediction arrived on {PREDICTION_TOPIC} within 5 s \
             of a light reading: publish → prediction is N/A; publish → climate state is measured instead"
        ),
        (false, false) => format!(
            "After {how}, `/prediction_light/` still answers {status} (no trained model) and no prediction arrived on \
             {PREDICTION_TOPIC}: publish → prediction is N/A; publish → climate state is measured instead"
        ),
    };
    Ok((running, available, note))
}

async fn one(
    running: &Running,
    rate: f64,
    secs: u64,
    predictions_expected: bool,
) -> anyhow::Result<LatencyRun> {
    let (seen, watch_task) = watch(running.mqtt).await?;
    let probe_rate = (rate / 10.0).min(200.0);
    let background_rate = rate - probe_rate;
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut background = Vec::new();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let mark = CpuMark::now(Some(&running.proc));
    for i in 0..4 {
        let conn = Conn::connect(running.mqtt, &format!("bench-bg-{i}"), 60).await?;
        let messages: Vec<Message> = super::ingest::messages_for(1000 + i, 100)
            .iter()
            .filter(|m| m.topic.ends_with(b"/tv"))
            .cloned()
            .collect();
        background.push(tokio::spawn(publish_until(
            conn,
            Arc::new(messages),
            1,
            super::ingest::WINDOW,
            Pace::PerSecond(background_rate / 4.0),
            until,
            sent_total.clone(),
        )));
    }

    // Probes: one packet per write, timed just before it.
    let conn = Conn::connect(running.mqtt, "bench-probe", 60).await?;
    let (reader, mut wr) = conn.into_split();
    let drain = tokio::spawn(async move {
        let _ = reader.run(None, |_, _| {}, |_| {}).await;
    });
    let mut light_sent: Vec<Instant> = Vec::new();
    let mut climate_sent: Vec<Instant> = Vec::new();
    let start = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let mut pkid: u16 = 0;
    let mut probes = 0usize;
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * probe_rate) as usize;
        if probes >= due {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        buf.clear();
        pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
        if probes % 2 == 0 {
            let payload = light_probe(light_sent.len());
            put_publish(
                &mut buf,
                b"smarthub/nodes/bench-probe-light/light",
                &payload,
                1,
                pkid,
            );
            light_sent.push(Instant::now());
        } else {
            let payload = climate_probe(climate_sent.len());
            put_publish(
                &mut buf,
                b"smarthub/nodes/bench-probe-climate/climate",
                &payload,
                1,
                pkid,
            );
            climate_sent.push(Instant::now());
        }
        wr.write_all(&buf).await?;
        probes += 1;
    }
    let mut sent = 0;
    for b in background {
        sent += b.await??.sent;
    }
    let achieved_rate = (sent + probes as u64) as f64 / t0.elapsed().as_secs_f64();
    // Let the last answers arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = mark.since(Some(&running.proc));
    drain.abort();
    watch_task.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();

    // Each probe's first answer, paired by the number it carries.
    let pair = |sent: &[Instant], answers: &mut dyn Iterator<Item = (Instant, Option<usize>)>| {
        let mut answered = vec![false; sent.len()];
        let mut ms = Vec::new();
        let mut count = 0;
        for (at, k) in answers {
            count += 1;
            if let Some(k) = k {
                if let Some(sent_at) = sent.get(k) {
                    if !answered[k] && at >= *sent_at {
                        answered[k] = true;
                        ms.push((at - *sent_at).as_secs_f64() * 1e3);
                    }
                }
            }
        }
        (ms, count)
    };
    let (state_ms, _) = pair(
        &climate_sent,
        &mut seen.iter().filter_map(|(t, a)| match a {
            Answer::State(k) => Some((*t, *k)),
            _ => None,
        }),
    );
    let (prediction_ms, predictions) = pair(
        &light_sent,
        &mut seen.iter().filter_map(|(t, a)| match a {
            Answer::Prediction(k) => Some((*t, *k)),
            _ => None,
        }),
    );
    let answered_light = prediction_ms.len();
    Ok(LatencyRun {
        target_rate: rate,
        achieved_rate,
        light_probes: light_sent.len(),
        climate_probes: climate_sent.len(),
        predictions,
        answered_light,
        prediction: if predictions_expected {
            summarise(prediction_ms)
        } else {
            None
        },
        state: summarise(state_ms),
        cpu,
    })
}

pub async fn run(programs: &Programs, runs: usize, secs: u64) -> anyhow::Result<LatencyResult> {
    let (mut running, available, note) = trained_hub(programs).await?;
    eprintln!("latency: {note}");
    let mut out = Vec::new();
    for rate in [1_000.0, 10_000.0] {
        for rep in 0..runs {
            running.proc.check_alive()?;
            let r = one(&running, rate, secs, available).await?;
            let show = |p: &Option<Percentiles>| match p {
                Some(p) => format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    p.p50_ms, p.p99_ms, p.max_ms
                ),
                None => "n/a".into(),
            };
            eprintln!(
                "latency {}/s run {}/{runs}: achieved {}/s; prediction {} ({} of {} light probes answered); climate state {}; load generator {:.2} cores, hub {:.2}, others {:.2}",
                thousands(rate),
                rep + 1,
                thousands(r.achieved_rate),
                show(&r.prediction),
                r.answered_light,
                r.light_probes,
                show(&r.state),
                r.cpu.generator,
                r.cpu.target,
                r.cpu.others,
            );
            out.push(r);
        }
    }
    running.proc.stop(Duration::from_secs(10));
    Ok(LatencyResult {
        predictions_available: available,
        prediction_note: note,
        runs: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_told_apart_by_the_value_they_carry() {
        for k in [0, 1, 57, 1999, 7999] {
            let payload = climate_probe(k);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(
                probe_index(v["humidity"].as_f64().unwrap(), HUMIDITY_BASE),
                Some(k)
            );
            smarthub::readings::parse_reading(smarthub::readings::ReadingKind::Climate, &payload)
                .unwrap();
            let payload = light_probe(k);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(
                probe_index(v["light_intensity"].as_f64().unwrap(), LIGHT_BASE),
                Some(k)
            );
            smarthub::readings::parse_reading(smarthub::readings::ReadingKind::Light, &payload)
                .unwrap();
        }
        assert_eq!(probe_index(9.0, HUMIDITY_BASE), None);
    }
}
