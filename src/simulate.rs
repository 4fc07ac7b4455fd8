//! The sensor simulator: a household of light, TV and climate nodes that publish realistic readings to a
//! hub over MQTT, so a new user sees the hub ingest (and, with back-dated history, learn) within minutes,
//! and so load can be generated.
//!
//! The household is deterministic for a seed: daylight and room temperature follow the clock, people
//! leave on weekday mornings and come back in the evening, motion comes in bursts while someone is home
//! and awake, the light is on when it is dark and someone is up, the TV follows habits by hour and day,
//! and the fan follows the temperature. Every reading carries its label (`active`, `channel`,
//! `fan_level`) so that the data is learnable. Each node is a real MQTT client of its own, with its last
//! will (`offline`, retained) on its status topic and `online` published (retained) once connected, as the
//! firmware contract asks.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Local, TimeZone, Timelike};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::readings::ReadingKind;
use crate::topics::{is_valid_node_id, Topics};

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Options(String),
    #[error("node {node}: cannot connect to the MQTT broker at {addr}: {why} (is the hub running there? see --broker)")]
    Connect {
        node: String,
        addr: String,
        why: String,
    },
    #[error("node {node}: the broker at {addr} refused the connection ({code}); does the hub require MQTT passwords?")]
    Refused {
        node: String,
        addr: String,
        code: String,
    },
    #[error("node {node}: the connection to the broker failed: {why}")]
    Publish { node: String, why: String },
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The broker's host name or address.
    pub host: String,
    pub port: u16,
    /// How many nodes; node `i` is of kind `ReadingKind::ALL[i % 3]`.
    pub nodes: usize,
    /// Each node publishes one reading per interval.
    pub interval: Duration,
    /// Stop after this long (live phase only); `None` runs until the stop future resolves.
    pub duration: Option<Duration>,
    /// QoS of live readings. History is always published at QoS 1 so that none of it is lost.
    pub qos: QoS,
    /// Days of back-dated readings (with `ts`) to publish before going live.
    pub history_days: u32,
    /// Spacing of back-dated readings per node.
    pub history_step: Duration,
    pub seed: u64,
    /// The hub's base topic (`[hub] base_topic`).
    pub base_topic: String,
}

impl SimOptions {
    /// Three nodes (one of each kind), one reading per second each, until stopped.
    pub fn new(host: impl Into<String>, port: u16) -> SimOptions {
        SimOptions {
            host: host.into(),
            port,
            nodes: 3,
            interval: Duration::from_secs(1),
            duration: None,
            qos: QoS::AtLeastOnce,
            history_days: 0,
            history_step: Duration::from_secs(300),
            seed: 1,
            base_topic: "smarthub".into(),
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Options(m));
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad(format!(
                "--nodes: {} is outside 1..={MAX_NODES}",
                self.nodes
            ));
        }
        if self.interval.is_zero() {
            return bad("--interval-ms: must be at least 1".into());
        }
        if self.history_step < Duration::from_secs(1) {
            return bad("history step: must be at least 1 s".into());
        }
        if self.history_days > MAX_HISTORY_DAYS {
            return bad(format!(
                "--history-days: {} is more than {MAX_HISTORY_DAYS}",
                self.history_days
            ));
        }
        if matches!(self.qos, QoS::ExactlyOnce) {
            return bad("--qos: use 0 or 1 (the hub's contract is QoS 1)".into());
        }
        Ok(())
    }

    /// How many back-dated readings the history phase publishes in all.
    pub fn history_total(&self) -> u64 {
        self.history_steps() * self.nodes as u64
    }

    fn history_steps(&self) -> u64 {
        u64::from(self.history_days) * 86_400 / self.history_step.as_secs().max(1)
    }
}

/// More nodes than this is a typo, not a household (10,000 fits a file-descriptor limit of 20,000).
pub const MAX_NODES: usize = 10_000;
/// More history than this would take long to publish and is no use for training.
pub const MAX_HISTORY_DAYS: u32 = 366;

/// Counters the caller can watch while the simulator runs (the CLI's progress line).
#[derive(Debug, Default)]
pub struct SimStats {
    /// Nodes connected so far.
    pub connected: AtomicU64,
    /// Back-dated readings published.
    pub history_sent: AtomicU64,
    /// Live readings published.
    pub sent: AtomicU64,
    /// QoS 1 publishes the broker acknowledged (history, live and status).
    pub acked: AtomicU64,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSummary {
    pub nodes: usize,
    pub history_sent: u64,
    pub live_sent: u64,
    /// Live QoS 1 readings and history not acknowledged when the simulator stopped (0 is good).
    pub unacked: u64,
}

/// The id of node `index` (0-based): `sim-light-1`, `sim-tv-1`, `sim-climate-1`, `sim-light-2`, ...
pub fn node_id(index: usize) -> String {
    let kind = ReadingKind::ALL[index % 3];
    format!("sim-{}-{}", kind.as_str(), index / 3 + 1)
}

/// The household's habits, the same for every node of one seed.
#[derive(Debug, Clone, Copy)]
pub struct Habits {
    seed: u64,
}

/// What is going on in the home at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Moment {
    hour: f64,
    home: bool,
    awake: bool,
    /// 0 at night .. 1 at noon on a clear day.
    daylight: f64,
    room_temperature: f64,
    /// The channel the household watches at this hour, when it does.
    tv_habit: Option<u32>,
}

/// A number in [-1, 1] fixed by (seed, day, salt): day-to-day variation of the household's routine.
fn day_noise(seed: u64, day: i64, salt: u64) -> f64 {
    // splitmix64: a good spread from consecutive inputs.
    let mut z = seed
        .wrapping_add((day as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

impl Habits {
    pub fn new(seed: u64) -> Habits {
        Habits { seed }
    }

    fn at(&self, at_ms: i64) -> Moment {
        let local = Local
            .timestamp_millis_opt(at_ms)
            .earliest()
            .unwrap_or_else(|| Local.timestamp_millis_opt(0).unwrap());
        let hour = f64::from(local.num_seconds_from_midnight()) / 3600.0;
        let weekend = local.weekday().number_from_monday() >= 6;
        let day = i64::from(local.date_naive().num_days_from_ce());
        let n = |salt| day_noise(self.seed, day, salt);

        let wake = if weekend { 8.0 } else { 6.5 } + 0.4 * n(1);
        let bedtime = 23.0 + 0.5 * n(2);
        let awake = hour >= wake && hour < bedtime;
        let home = if weekend {
            // A weekend outing on about half of the days.
            !(n(3) > 0.0 && (13.0 + n(4)..16.5 + n(4)).contains(&hour))
        } else {
            let leave = 8.0 + 0.4 * n(5);
            let back = 17.5 + 0.75 * n(6);
            !(leave..back).contains(&hour)
        };
        let daylight = if (6.0..19.5).contains(&hour) {
            let sun = (std::f64::consts::PI * (hour - 6.0) / 13.5).sin().max(0.0);
            // Cloudy days are darker.
            sun * (0.75 + 0.25 * n(7))
        } else {
            0.0
        };
        // Coolest around 4:00, warmest around 16:00; warm and cool days.
        let room_temperature =
            22.0 + 2.0 * n(8) + 4.5 * (2.0 * std::f64::consts::PI * (hour - 10.0) / 24.0).sin();
        let tv_habit = if !(home && awake) || n(9) > 0.7 {
            // Not home, asleep, or one of the evenings without TV.
            None
        } else if weekend {
            match hour {
                h if (wake + 0.5..11.0).contains(&h) => Some(2),
                h if (11.0..12.5).contains(&h) => Some(4),
                h if (18.0..21.0).contains(&h) => Some(5),
                h if h >= 21.0 => Some(3),
                _ => None,
            }
        } else {
            match hour {
                h if (19.0..20.0).contains(&h) => Some(1),
                h if (20.0..21.5).contains(&h) => Some(3),
                h if h >= 21.5 => Some(6),
                _ => None,
            }
        };
        Moment {
            hour,
            home,
            awake,
            daylight,
            room_temperature,
            tv_habit,
        }
    }
}

/// One simulated node: its identity and the state that makes its readings plausible over time.
#[derive(Debug)]
pub struct SimNode {
    pub id: String,
    pub kind: ReadingKind,
    rng: StdRng,
    /// Per-node calibration: sensors in different rooms read a little differently.
    offset: f64,
    /// Motion keeps being seen until then (unix ms).
    burst_until_ms: i64,
    last_ms: Option<i64>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl SimNode {
    /// Node `index` of a household seeded with `seed`.
    pub fn new(index: usize, seed: u64) -> SimNode {
        let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
        let offset = rng.gen_range(-0.8..0.8);
        SimNode {
            id: node_id(index),
            kind: ReadingKind::ALL[index % 3],
            rng,
            offset,
            burst_until_ms: i64::MIN,
            last_ms: None,
        }
    }

    /// Motion comes in bursts of a few minutes, more often while someone is home and awake.
    fn motion(&mut self, m: &Moment, at_ms: i64) -> bool {
        let gap_ms = self
            .last_ms
            .map_or(60_000, |l| (at_ms - l).clamp(0, 3_600_000));
        self.last_ms = Some(at_ms);
        // Mean time between bursts.
        let mean_gap_min = match (m.home, m.awake) {
            (true, true) => 20.0,
            (true, false) => 240.0,
            (false, _) => 720.0,
        };
        if at_ms >= self.burst_until_ms {
            let p_start = 1.0 - (-(gap_ms as f64) / 60_000.0 / mean_gap_min).exp();
            if self.rng.gen_bool(p_start.clamp(0.0, 1.0)) {
                self.burst_until_ms = at_ms + self.rng.gen_range(60_000..480_000);
            }
        }
        if at_ms < self.burst_until_ms {
            self.rng.gen_bool(0.9)
        } else {
            self.rng.gen_bool(0.02)
        }
    }

    /// The reading this node takes at `at_ms` (unix ms), labels included, without `ts`.
    pub fn reading(&mut self, habits: &Habits, at_ms: i64) -> serde_json::Value {
        let m = habits.at(at_ms);
        let motion = self.motion(&m, at_ms);
        let temperature = round1(m.room_temperature + self.offset + self.rng.gen_range(-0.3..0.3));
        match self.kind {
            ReadingKind::Light => {
                let dark = m.daylight < 0.3;
                let mut active = m.home && m.awake && (dark || (motion && m.daylight < 0.5));
                // People sometimes forget the light, or sit in the dark.
                if self.rng.gen_bool(0.03) {
                    active = !active;
                }
                let lux = m.daylight * 700.0
                    + if active { 320.0 } else { 0.0 }
                    + self.rng.gen_range(0.0..15.0);
                json!({
                    "temperature": temperature,
                    "motion": motion,
                    "light_intensity": round1(lux),
                    "active": active,
                })
            }
            ReadingKind::Tv => {
                let channel = match m.tv_habit {
                    Some(c) if self.rng.gen_bool(0.95) => c,
                    // Zapping, or the TV left on by someone home.
                    _ if m.home && m.awake && self.rng.gen_bool(0.02) => self.rng.gen_range(1..=6),
                    _ => 0,
                };
                let motion = if channel > 0 {
                    self.rng.gen_bool(0.5)
                } else {
                    motion
                };
                json!({"motion": motion, "channel": channel})
            }
            ReadingKind::Climate => {
                let humidity = (58.0 - 2.0 * (temperature - 22.0)
                    + 3.0 * (m.hour / 24.0 * std::f64::consts::TAU).cos()
                    + self.rng.gen_range(-1.5..1.5))
                .clamp(15.0, 95.0);
                // Nobody runs the fan in an empty home or a cool one.
                let mut fan_level: i64 = if !m.home || temperature < 23.5 {
                    0
                } else if temperature < 25.5 {
                    1
                } else if temperature < 27.0 {
                    2
                } else {
                    3
                };
                if self.rng.gen_bool(0.04) {
                    fan_level =
                        (fan_level + if self.rng.gen_bool(0.5) { 1 } else { -1 }).clamp(0, 3);
                }
                json!({
                    "temperature": temperature,
                    "humidity": round1(humidity),
                    "motion": motion,
                    "fan_level": fan_level,
                })
            }
        }
    }

    /// The payload of the reading at `at_ms`; `with_ts` adds the `ts` (unix seconds) of a back-dated one.
    pub fn payload(&mut self, habits: &Habits, at_ms: i64, with_ts: bool) -> Vec<u8> {
        let mut value = self.reading(habits, at_ms);
        if with_ts {
            value["ts"] = json!(at_ms.div_euclid(1000));
        }
        value.to_string().into_bytes()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One connected node: its client and how many QoS 1 publishes it made and got acknowledged.
struct Connected {
    node: SimNode,
    client: AsyncClient,
    topic: String,
    status_topic: String,
    qos1_sent: u64,
    acked: Arc<AtomicU64>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn connect(
    options: &SimOptions,
    topics: &Topics,
    index: usize,
    stats: Arc<SimStats>,
) -> Result<Connected, SimError> {
    let node = SimNode::new(index, options.seed);
    let addr = format!("{}:{}", options.host, options.port);
    let status_topic = topics.node_status(&node.id);
    let mut mqtt = MqttOptions::new(node.id.clone(), options.host.clone(), options.port);
    // rumqttd refuses keep-alive 0.
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_inflight(100);
    mqtt.set_last_will(LastWill::new(
        status_topic.clone(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 256);
    let acked = Arc::new(AtomicU64::new(0));
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), SimError>>();
    let task = {
        let acked = acked.clone();
        let closing = closing.clone();
        let client = client.clone();
        let status_topic = status_topic.clone();
        let node_id = node.id.clone();
        let addr = addr.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            if let Some(tx) = first.take() {
                                let _ = tx.send(Err(SimError::Refused {
                                    node: node_id.clone(),
                                    addr: addr.clone(),
                                    code: format!("{:?}", ack.code),
                                }));
                            }
                            return;
                        }
                        match first.take() {
                            Some(tx) => {
                                let _ = tx.send(Ok(()));
                            }
                            None => {
                                // Reconnected: the broker published our will; say we are back.
                                let _ = client.try_publish(
                                    status_topic.as_str(),
                                    QoS::AtLeastOnce,
                                    true,
                                    "online",
                                );
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Relaxed);
                        stats.acked.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err(SimError::Connect {
                                node: node_id.clone(),
                                addr: addr.clone(),
                                why: e.to_string(),
                            }));
                            return;
                        }
                        if closing.load(Relaxed) {
                            return;
                        }
                        tracing::warn!(node = node_id, error = %e, "connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), first_rx).await;
    let fail = |why: &str| SimError::Connect {
        node: node.id.clone(),
        addr: addr.clone(),
        why: why.into(),
    };
    match outcome {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err(fail("the connection task ended")),
        Err(_) => {
            task.abort();
            return Err(fail("no CONNACK within 10 s"));
        }
    }
    stats.connected.fetch_add(1, Relaxed);
    let mut c = Connected {
        topic: topics.node_reading(&node.id, node.kind),
        node,
        client,
        status_topic,
        qos1_sent: 0,
        acked,
        closing,
        task,
    };
    c.publish_status("online").await?;
    Ok(c)
}

impl Connected {
    async fn publish(&mut self, qos: QoS, payload: Vec<u8>) -> Result<(), SimError> {
        self.client
            .publish(self.topic.as_str(), qos, false, payload)
            .await
            .map_err(|e| SimError::Publish {
                node: self.node.id.clone(),
                why: e.to_string(),
            })?;
        if qos != QoS::AtMostOnce {
            self.qos1_sent += 1;
        }
        Ok(())
    }

    async fn publish_status(&mut self, status: &str) -> Result<(), SimError> {
        self.client
            .publish(self.status_topic.as_str(), QoS::AtLeastOnce, true, status)
            .await
            .map_err(|e| SimError::Publish {
                node: self.node.id.clone(),
                why: e.to_string(),
            })?;
        self.qos1_sent += 1;
        Ok(())
    }

    fn unacked(&self) -> u64 {
        self.qos1_sent.saturating_sub(self.acked.load(Relaxed))
    }

    /// Publishes `offline` (retained), waits for outstanding acks (bounded), and disconnects cleanly.
    async fn close(mut self) -> u64 {
        let _ = self.publish_status("offline").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.unacked() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closing.store(true, Relaxed);
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
        self.task.abort();
        self.unacked()
    }
}

/// Publishes this node's back-dated readings from `days` ago up to two minutes ago.
async fn publish_history(
    c: &mut Connected,
    habits: Habits,
    options: &SimOptions,
    start_ms: i64,
    stats: &SimStats,
) -> Result<(), SimError> {
    let step_ms = options.history_step.as_millis() as i64;
    let steps = options.history_steps() as i64;
    // Older than the hub's one-minute threshold, so every one is stored as back-dated.
    let end_ms = start_ms - 120_000;
    for i in 0..steps {
        let at_ms = end_ms - (steps - 1 - i) * step_ms;
        let payload = c.node.payload(&habits, at_ms, true);
        c.publish(QoS::AtLeastOnce, payload).await?;
        stats.history_sent.fetch_add(1, Relaxed);
    }
    // Live readings must not overtake history the broker has not accepted yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.unacked() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Publishes live readings every `interval` until `until` (or forever).
async fn publish_live(
    c: &mut Connected,
    habits: Habits,
    options: &SimOptions,
    stagger: Duration,
    until: Option<tokio::time::Instant>,
    stats: &SimStats,
) -> Result<(), SimError> {
    let start = tokio::time::Instant::now() + stagger;
    let mut ticks = tokio::time::interval_at(start, options.interval);
    // Catch up after a stall so that the requested rate holds on average (the timer has 1 ms grain).
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        let tick = ticks.tick().await;
        if until.is_some_and(|u| tick >= u) {
            return Ok(());
        }
        let payload = c.node.payload(&habits, now_ms(), false);
        c.publish(options.qos, payload).await?;
        stats.sent.fetch_add(1, Relaxed);
    }
}

/// Runs the simulator: connects every node, publishes history, then live readings until the duration
/// is over or `stop` resolves; then every node says `offline` and disconnects.
pub async fn run(
    options: SimOptions,
    stats: Arc<SimStats>,
    stop: impl Future<Output = ()>,
) -> Result<SimSummary, SimError> {
    options.validate()?;
    let topics = Topics::new(&options.base_topic);
    let node_ids: Vec<String> = (0..options.nodes).map(node_id).collect();
    if let Some(bad) = node_ids.iter().find(|id| !is_valid_node_id(id)) {
        return Err(SimError::Options(format!("node id {bad} is not valid")));
    }
    let options = Arc::new(options);
    let habits = Habits::new(options.seed);

    // Connect in waves: a broker accepts connections one at a time.
    let mut nodes = Vec::with_capacity(options.nodes);
    for wave in (0..options.nodes).collect::<Vec<_>>().chunks(100) {
        let attempts = wave
            .iter()
            .map(|&i| connect(&options, &topics, i, stats.clone()));
        for result in futures_join_all(attempts).await {
            match result {
                Ok(c) => nodes.push(c),
                Err(e) => {
                    for c in nodes {
                        c.close().await;
                    }
                    return Err(e);
                }
            }
        }
    }

    let start_ms = now_ms();
    let work = async {
        let history = nodes.iter_mut().map(|c| {
            let options = options.clone();
            let stats = stats.clone();
            async move { publish_history(c, habits, &options, start_ms, &stats).await }
        });
        for r in futures_join_all(history).await {
            r?;
        }
        let until = options.duration.map(|d| tokio::time::Instant::now() + d);
        let n = nodes.len() as u32;
        let live = nodes.iter_mut().enumerate().map(|(i, c)| {
            let options = options.clone();
            let stats = stats.clone();
            let stagger = options.interval * i as u32 / n;
            async move { publish_live(c, habits, &options, stagger, until, &stats).await }
        });
        for r in futures_join_all(live).await {
            r?;
        }
        Ok::<(), SimError>(())
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = stop => Ok(()),
    };
    let mut unacked = 0;
    let count = nodes.len();
    for c in nodes {
        unacked += c.close().await;
    }
    outcome?;
    Ok(SimSummary {
        nodes: count,
        history_sent: stats.history_sent.load(Relaxed),
        live_sent: stats.sent.load(Relaxed),
        unacked,
    })
}

/// Polls every future to completion concurrently on the current task (no `futures` dependency).
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readings::{parse_reading, Measurement};

    /// Readings over a week, every 5 minutes, for one node of `kind`.
    fn week(kind_index: usize) -> Vec<(i64, Measurement)> {
        let habits = Habits::new(7);
        let mut node = SimNode::new(kind_index, 7);
        let start = Local
            .with_ymd_and_hms(2024, 3, 4, 0, 0, 0)
            .earliest()
            .unwrap()
            .timestamp_millis();
        (0..7 * 288)
            .map(|i| {
                let at = start + i * 300_000;
                let payload = node.payload(&habits, at, true);
                let parsed = parse_reading(node.kind, &payload).expect("valid payload");
                assert_eq!(parsed.ts, Some(at / 1000));
                (at, parsed.measurement)
            })
            .collect()
    }

    fn hour_of(ms: i64) -> u32 {
        Local.timestamp_millis_opt(ms).earliest().unwrap().hour()
    }

    #[test]
    fn every_payload_is_valid_and_labelled() {
        for kind_index in 0..3 {
            for (_, m) in week(kind_index) {
                assert!(m.has_label(), "{m:?}");
            }
        }
    }

    #[test]
    fn light_follows_darkness_and_people() {
        let readings = week(0);
        let share_on = |hours: &[u32]| {
            let sel: Vec<_> = readings
                .iter()
                .filter(|(at, _)| hours.contains(&hour_of(*at)))
                .collect();
            let on = sel
                .iter()
                .filter(|(_, m)| {
                    matches!(
                        m,
                        Measurement::Light {
                            active: Some(true),
                            ..
                        }
                    )
                })
                .count();
            on as f64 / sel.len() as f64
        };
        // Evenings at home are lit, nights and midday are not.
        assert!(share_on(&[20, 21]) > 0.8, "{}", share_on(&[20, 21]));
        assert!(share_on(&[2, 3]) < 0.1);
        assert!(share_on(&[12, 13]) < 0.2);
        let lux = |h: u32| {
            let v: Vec<f64> = readings
                .iter()
                .filter(|(at, _)| hour_of(*at) == h)
                .map(|(_, m)| match m {
                    Measurement::Light {
                        light_intensity, ..
                    } => *light_intensity,
                    _ => unreachable!(),
                })
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(lux(12) > 3.0 * lux(3));
    }

    #[test]
    fn tv_and_fan_have_habits() {
        let tv = week(1);
        let channels: std::collections::BTreeSet<u32> = tv
            .iter()
            .filter_map(|(_, m)| match m {
                Measurement::Tv { channel, .. } => *channel,
                _ => None,
            })
            .collect();
        assert!(channels.contains(&0) && channels.len() >= 4, "{channels:?}");
        let night_on = tv
            .iter()
            .filter(|(at, m)| {
                hour_of(*at) == 3 && matches!(m, Measurement::Tv { channel: Some(c), .. } if *c > 0)
            })
            .count();
        assert_eq!(night_on, 0);

        let climate = week(2);
        let mut by_level = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for (_, m) in &climate {
            if let Measurement::Climate {
                temperature,
                fan_level: Some(f),
                ..
            } = m
            {
                by_level[*f as usize].push(*temperature);
            }
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        assert!(
            by_level.iter().all(|v| !v.is_empty()),
            "every fan level occurs"
        );
        assert!(mean(&by_level[3]) > mean(&by_level[1]));
    }

    #[test]
    fn same_seed_same_household() {
        let a = SimNode::new(4, 9).payload(&Habits::new(9), 1_700_000_000_000, false);
        let b = SimNode::new(4, 9).payload(&Habits::new(9), 1_700_000_000_000, false);
        assert_eq!(a, b);
        assert_eq!(node_id(4), "sim-tv-2");
    }

    #[test]
    fn options_are_checked() {
        let mut o = SimOptions::new("127.0.0.1", 1883);
        o.nodes = 0;
        assert!(o.validate().unwrap_err().to_string().contains("--nodes"));
        o.nodes = 3;
        o.history_days = 2;
        assert_eq!(o.history_total(), 3 * 2 * 288);
    }
}
