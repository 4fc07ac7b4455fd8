//! The rule engine: the one path every message, reading and command takes. It runs on a thread of its
//! own, owns the home state, hands rows to the SQLite writer and publishes state changes. MQTT, REST and
//! Home Assistant are adapters that send it [`Input`]s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::broker::{Inbound, Publisher};
use crate::config::{DoorSection, HubSection};
use crate::home::{
    channel_name, check_climate, parse_set_payload, Command, CommandError, HomeState, LightAction,
    Origin, Thing,
};
use crate::metrics::Metrics;
use crate::readings::{
    parse_reading, parse_status, LabelSource, Measurement, ParsedReading, Reading, Reason,
    Rejection, Source,
};
use crate::store::{WriteOp, Writer};
use crate::topics::{Route, Topics};

/// What filling a reading's label and the climate check need of the home state.
struct LabelState {
    light: bool,
    tv_channel: u32,
    fan_level: u8,
    temperature: f64,
    humidity: f64,
    auto: [bool; 3],
}

impl LabelState {
    fn of(s: &HomeState) -> LabelState {
        LabelState {
            light: s.light,
            tv_channel: s.tv_channel,
            fan_level: s.fan_level,
            temperature: s.temperature,
            humidity: s.humidity,
            auto: [Thing::Light, Thing::Tv, Thing::Fan].map(|t| s.is_auto(t)),
        }
    }

    fn is_auto(&self, thing: Thing) -> bool {
        match thing {
            Thing::Light => self.auto[0],
            Thing::Tv => self.auto[1],
            Thing::Fan => self.auto[2],
            _ => false,
        }
    }
}

/// Something for the engine to do.
pub enum Input {
    /// A message the broker forwarded under the base topic.
    Mqtt(Inbound),
    Command {
        command: Command,
        origin: Origin,
        reply: Option<oneshot::Sender<Result<HomeState, CommandError>>>,
    },
    /// A reading that arrived another way than MQTT (the legacy HTTP routes).
    Reading {
        node_id: String,
        parsed: ParsedReading,
        source: Source,
        reply: Option<oneshot::Sender<Result<(), Rejection>>>,
    },
    /// Publish a message the hub produced elsewhere (predictions, suggestions) on the engine's link.
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
    /// Answer once every message the broker accepted before this is committed.
    Drain(Sender<bool>),
    /// Publish `offline` on the hub's status topic.
    PublishOffline,
    /// Publish every state and `online` again (Home Assistant restarted and asked for them).
    RepublishStates,
    /// Forget a sensor node (its `nodes` row; readings stay) and tell the listeners.
    ForgetNode {
        node_id: String,
        reply: Option<oneshot::Sender<()>>,
    },
    Stop,
}

/// What the engine announces to live listeners (WebSocket clients, Home Assistant).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    State {
        thing: Thing,
        payload: String,
        origin: Origin,
    },
    Reading {
        reading: Arc<Reading>,
    },
    /// A node was forgotten (`DELETE /api/v1/nodes/<id>`).
    NodeForgotten {
        node_id: String,
    },
    /// A prediction was published on `<base>/prediction/<target>`.
    Prediction {
        target: String,
        message: serde_json::Value,
    },
    /// An Assisted-mode suggestion was published on `<base>/suggestion`.
    Suggestion {
        message: serde_json::Value,
    },
}

/// A cheap handle to the engine, shared by the adapters.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Input>,
    state: Arc<RwLock<HomeState>>,
    events: broadcast::Sender<Event>,
}

impl EngineHandle {
    pub fn sender(&self) -> Sender<Input> {
        self.tx.clone()
    }

    /// Runs a command through the same path as an MQTT `/set`.
    pub async fn command(
        &self,
        command: Command,
        origin: Origin,
    ) -> Result<HomeState, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Command {
                command,
                origin,
                reply: Some(reply),
            })
            .map_err(|_| CommandError::Unavailable)?;
        rx.await.map_err(|_| CommandError::Unavailable)?
    }

    /// Stores a reading that arrived over HTTP, through the same checks as MQTT.
    pub async fn reading(
        &self,
        node_id: &str,
        parsed: ParsedReading,
        source: Source,
    ) -> Result<(), Rejection> {
        let (reply, rx) = oneshot::channel();
        let unavailable = || Rejection::new(Reason::Malformed, "the hub is shutting down");
        self.tx
            .send(Input::Reading {
                node_id: node_id.to_owned(),
                parsed,
                source,
                reply: Some(reply),
            })
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Forgets a node: its `nodes` row goes (readings stay) and listeners hear of it.
    pub async fn forget_node(&self, node_id: &str) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::ForgetNode {
                node_id: node_id.to_owned(),
                reply: Some(reply),
            })
            .map_err(|_| CommandError::Unavailable)?;
        rx.await.map_err(|_| CommandError::Unavailable)
    }

    /// The current state (a snapshot).
    pub fn state(&self) -> HomeState {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Publishes a message through the engine's broker link (never blocks).
    pub fn publish(&self, topic: String, payload: String, retain: bool) {
        let _ = self.tx.send(Input::Publish {
            topic,
            payload,
            retain,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Limits how often refusals are logged; counters and error topics still see each one.
struct LogLimiter {
    per_minute: u32,
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "refusals not logged in the last minute"
                );
            }
            self.window = Instant::now();
            self.count = 0;
            self.suppressed = 0;
        }
        if self.count < self.per_minute {
            self.count += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Wrong-PIN tracking: after `max_failures` within the window, opening is locked out.
struct DoorGuard {
    pin: String,
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    config: DoorSection,
}

impl DoorGuard {
    fn new(pin: String, config: DoorSection) -> DoorGuard {
        DoorGuard {
            pin,
            failures: VecDeque::new(),
            locked_until: None,
            config,
        }
    }

    fn check(&mut self, pin: &str, now: Instant) -> Result<(), CommandError> {
        if let Some(until) = self.locked_until {
            if now < until {
                return Err(CommandError::LockedOut {
                    retry_after_s: (until - now).as_secs().max(1),
                });
            }
            self.locked_until = None;
        }
        if constant_time_eq(pin.as_bytes(), self.pin.as_bytes()) {
            self.failures.clear();
            return Ok(());
        }
        let window = Duration::from_secs(self.config.failure_window_s);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= self.config.max_failures as usize {
            self.failures.clear();
            self.locked_until = Some(now + Duration::from_secs(self.config.lockout_s));
            tracing::warn!(
                lockout_s = self.config.lockout_s,
                "door: too many wrong PINs, opening locked"
            );
        }
        Err(CommandError::PinInvalid)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the engine needs to start.
pub struct EngineParts {
    pub topics: Topics,
    pub publisher: Publisher,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub hub: HubSection,
    pub door: DoorSection,
    pub door_pin: String,
    pub initial: HomeState,
}

struct Engine {
    topics: Topics,
    publisher: Publisher,
    writer: Writer,
    metrics: Arc<Metrics>,
    hub: HubSection,
    door: DoorGuard,
    state: Arc<RwLock<HomeState>>,
    events: broadcast::Sender<Event>,
    log_limit: LogLimiter,
    nonce: u64,
    drains: Vec<(String, Sender<bool>)>,
}

/// Starts the engine thread. It publishes every state and `online` (retained) before it takes input.
pub fn spawn(parts: EngineParts) -> std::io::Result<(EngineHandle, Sender<Input>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let state = Arc::new(RwLock::new(parts.initial.clone()));
    let (events, _) = broadcast::channel(4096);
    let mut engine = Engine {
        topics: parts.topics,
        publisher: parts.publisher,
        writer: parts.writer,
        metrics: parts.metrics,
        log_limit: LogLimiter {
            per_minute: parts.hub.rejection_log_per_minute,
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        },
        hub: parts.hub,
        door: DoorGuard::new(parts.door_pin, parts.door),
        state: state.clone(),
        events: events.clone(),
        nonce: rand::random(),
        drains: Vec::new(),
    };
    engine.publish_all_states();
    let status = engine.topics.status();
    engine.publisher.publish(&status, "online", true);
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run(rx))?;
    Ok((
        EngineHandle {
            tx: tx.clone(),
            state,
            events,
        },
        tx,
        thread,
    ))
}

/// The payload published on an error topic (the firmware contract's `error` schema).
pub fn error_body(topic: &str, rej: &Rejection) -> String {
    serde_json::json!({
        "topic": topic,
        "error": rej.message,
        "reason": rej.reason.as_str(),
    })
    .to_string()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Engine {
    fn run(mut self, rx: Receiver<Input>) {
        while let Ok(input) = rx.recv() {
            match input {
                Input::Mqtt(msg) => {
                    // An accepted reading stays in the ingest backlog until the writer commits it.
                    if !self.on_mqtt(msg) {
                        self.metrics.ingest_done(1);
                    }
                }
                Input::Command {
                    command,
                    origin,
                    reply,
                } => {
                    let result = self.execute(command, origin);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Input::Reading {
                    node_id,
                    parsed,
                    source,
                    reply,
                } => {
                    let result = self.accept_reading(&node_id, parsed, source);
                    if let Err(rej) = &result {
                        self.metrics.rejected(rej.reason);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Input::Drain(reply) => {
                    self.nonce = self.nonce.wrapping_add(1);
                    let marker = self.topics.flush_marker(self.nonce);
                    self.publisher.publish(&marker, "", false);
                    self.drains.push((marker, reply));
                }
                Input::Publish {
                    topic,
                    payload,
                    retain,
                } => {
                    self.announce(&topic, &payload);
                    self.publisher.publish(&topic, payload, retain)
                }
                Input::PublishOffline => {
                    let status = self.topics.status();
                    self.publisher.publish(&status, "offline", true);
                }
                Input::RepublishStates => {
                    self.publish_all_states();
                    let status = self.topics.status();
                    self.publisher.publish(&status, "online", true);
                }
                Input::ForgetNode { node_id, reply } => {
                    self.writer.send(WriteOp::ForgetNode {
                        node_id: node_id.clone(),
                    });
                    tracing::info!(node_id, "node forgotten");
                    let _ = self.events.send(Event::NodeForgotten { node_id });
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                }
                Input::Stop => break,
            }
        }
        self.metrics.ingest_closed.store(true, Relaxed);
    }

    /// Tells live listeners about a prediction or suggestion published for another component.
    fn announce(&self, topic: &str, payload: &str) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let Ok(message) = serde_json::from_str::<serde_json::Value>(payload) else {
            return;
        };
        if let Some(target) = self.topics.prediction_target(topic) {
            let _ = self.events.send(Event::Prediction {
                target: target.to_owned(),
                message,
            });
        } else if topic == self.topics.suggestion() {
            let _ = self.events.send(Event::Suggestion { message });
        }
    }

    fn publish_all_states(&mut self) {
        let state = self.state.read().map(|s| s.clone()).unwrap_or_default();
        for thing in Thing::ALL {
            let topic = self.topics.state(thing);
            self.publisher.publish(&topic, state.payload(thing), true);
        }
    }

    /// Handles one message from the broker; true when it became a reading queued for the writer.
    fn on_mqtt(&mut self, msg: Inbound) -> bool {
        self.metrics.messages_received.fetch_add(1, Relaxed);
        let Ok(topic) = std::str::from_utf8(&msg.topic) else {
            return false;
        };
        match self.topics.route(topic) {
            Route::Foreign => {}
            Route::Own => {
                if let Some(i) = self.drains.iter().position(|(m, _)| m == topic) {
                    let (_, reply) = self.drains.swap_remove(i);
                    self.writer.flush_to(reply);
                }
            }
            Route::Reading { node_id, kind } => {
                let result = parse_reading(kind, &msg.payload)
                    .and_then(|parsed| self.accept_reading(&node_id, parsed, Source::Mqtt));
                match result {
                    Ok(()) => return true,
                    Err(rej) => self.refuse(topic, Some(&node_id), &rej),
                }
            }
            // An empty retained payload clears a node's status: nothing to record.
            Route::NodeStatus { .. } if msg.payload.is_empty() => {}
            Route::NodeStatus { node_id } => match parse_status(&msg.payload) {
                Ok(online) => {
                    let status = if online { "online" } else { "offline" };
                    self.writer.send(WriteOp::NodeStatus {
                        node_id,
                        status: status.into(),
                        at_ms: now_ms(),
                    });
                }
                Err(rej) => self.refuse(topic, Some(&node_id), &rej),
            },
            Route::Command(thing) => {
                // Our own clearing of a retained command comes back empty: not a command.
                if msg.payload.is_empty() {
                    return false;
                }
                // A retained command must run once only: clear it (rumqttd does not tell us whether
                // it was retained, so clear every time; it costs one small publish).
                let set_topic = self.topics.set(thing);
                self.publisher.publish(&set_topic, "", true);
                let result = parse_set_payload(thing, &msg.payload, self.hub.max_fan_level)
                    .and_then(|cmd| {
                        self.execute(cmd, Origin::Mqtt)
                            .map_err(|e| Rejection::new(e.reason(), e.to_string()))
                    });
                if let Err(rej) = result {
                    self.refuse(topic, None, &rej);
                }
            }
            Route::BadNodeId(id) => {
                let shown: String = id.chars().take(80).collect();
                self.refuse(
                    topic,
                    None,
                    &Rejection::new(
                        Reason::BadNodeId,
                        format!("node id `{shown}`: use 1 to 64 of a-z, 0-9, _ and -"),
                    ),
                )
            }
            Route::Unknown => self.refuse(
                topic,
                None,
                &Rejection::new(
                    Reason::UnknownTopic,
                    format!("unknown topic under `{}/`", self.topics.base()),
                ),
            ),
        }
        false
    }

    /// Counts, reports on the error topic and (rate-limited) logs a refused message.
    fn refuse(&mut self, topic: &str, node_id: Option<&str>, rej: &Rejection) {
        self.metrics.rejected(rej.reason);
        let error_topic = match node_id {
            Some(id) => {
                self.writer.send(WriteOp::NodeSeen {
                    node_id: id.to_owned(),
                    at_ms: now_ms(),
                    kind: None,
                    rejected: true,
                });
                self.topics.node_error(id)
            }
            None => self.topics.error(),
        };
        self.publisher
            .publish(&error_topic, error_body(topic, rej), false);
        if self.log_limit.allow() {
            tracing::warn!(topic, reason = rej.reason.as_str(), error = %rej.message, "message refused");
        }
    }

    fn accept_reading(
        &mut self,
        node_id: &str,
        parsed: ParsedReading,
        source: Source,
    ) -> Result<(), Rejection> {
        if !crate::topics::is_valid_node_id(node_id) {
            return Err(Rejection::new(
                Reason::BadNodeId,
                format!("node id `{node_id}`: use 1 to 64 of a-z, 0-9, _ and -"),
            ));
        }
        let received = now_ms();
        let mut reading = parsed.stamp(node_id, received, self.hub.max_future_skew_s, source)?;
        let kind = reading.measurement.kind();
        if !reading.backdated {
            // Only the labels and the climate are needed: no clone of the whole state per reading.
            let state = match self.state.read() {
                Ok(s) => LabelState::of(&s),
                Err(_) => LabelState::of(&HomeState::default()),
            };
            let filled = |thing: Thing| {
                Some(if state.is_auto(thing) {
                    LabelSource::Auto
                } else {
                    LabelSource::State
                })
            };
            match &mut reading.measurement {
                Measurement::Light { active, .. } if active.is_none() => {
                    *active = Some(state.light);
                    reading.label_source = filled(Thing::Light);
                }
                Measurement::Tv { channel, .. } if channel.is_none() => {
                    *channel = Some(state.tv_channel);
                    reading.label_source = filled(Thing::Tv);
                }
                Measurement::Climate { fan_level, .. } if fan_level.is_none() => {
                    *fan_level = Some(state.fan_level);
                    reading.label_source = filled(Thing::Fan);
                }
                _ => {}
            }
            if let Measurement::Climate {
                temperature,
                humidity,
                ..
            } = reading.measurement
            {
                // The same climate again is not news (commit_state would find the same payload).
                if temperature.to_bits() != state.temperature.to_bits()
                    || humidity.to_bits() != state.humidity.to_bits()
                {
                    let mut next = self.state.read().map(|s| s.clone()).unwrap_or_default();
                    next.temperature = temperature;
                    next.humidity = humidity;
                    self.commit_state(next, Thing::Climate, Origin::Node);
                }
            }
        }
        self.writer.send(WriteOp::NodeSeen {
            node_id: node_id.to_owned(),
            at_ms: received,
            kind: Some(kind),
            rejected: false,
        });
        // Shared by the writer and every listener: no copy per listener.
        let reading = Arc::new(reading);
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Event::Reading {
                reading: reading.clone(),
            });
        }
        self.writer.send(WriteOp::Reading(reading));
        Ok(())
    }

    /// Applies a command to the home state: the single path for MQTT, REST, HA and automation.
    fn execute(&mut self, command: Command, origin: Origin) -> Result<HomeState, CommandError> {
        let mut next = self.state.read().map(|s| s.clone()).unwrap_or_default();
        let thing = command.thing();
        let max_fan = self.hub.max_fan_level;
        match command {
            Command::Light(action) => {
                next.light = match action {
                    LightAction::On => true,
                    LightAction::Off => false,
                    LightAction::Toggle => !next.light,
                }
            }
            Command::DoorOpen { pin } => {
                self.door.check(&pin, Instant::now())?;
                next.door_open = true;
            }
            Command::DoorClose => next.door_open = false,
            Command::Tv { channel, name } => {
                if channel > crate::home::MAX_CHANNEL {
                    return Err(CommandError::invalid(
                        "channel",
                        format!("must be 0..={}", crate::home::MAX_CHANNEL),
                    ));
                }
                next.tv_channel = channel;
                next.tv_name = if channel == 0 {
                    String::new()
                } else {
                    name.unwrap_or_else(|| channel_name(channel).to_owned())
                };
            }
            Command::TvNext => {
                let channel = if next.tv_channel >= 6 {
                    0
                } else {
                    next.tv_channel + 1
                };
                next.tv_channel = channel;
                next.tv_name = channel_name(channel).to_owned();
            }
            Command::Fan(level) => {
                if level > max_fan {
                    return Err(CommandError::invalid(
                        "fanLevel",
                        format!("must be 0..={max_fan}"),
                    ));
                }
                next.fan_level = level;
            }
            Command::FanNext => {
                next.fan_level = if next.fan_level >= max_fan {
                    0
                } else {
                    next.fan_level + 1
                }
            }
            Command::Mode(mode) => next.mode = mode,
            Command::ModeNext => next.mode = next.mode.next(),
            Command::Climate {
                temperature,
                humidity,
            } => {
                check_climate(temperature, humidity)?;
                next.temperature = temperature;
                next.humidity = humidity;
            }
        }
        self.metrics.command(thing);
        self.commit_state(next.clone(), thing, origin);
        Ok(self.state.read().map(|s| s.clone()).unwrap_or(next))
    }

    /// Makes `next` the state of `thing`: stores it, publishes it retained, tells listeners.
    fn commit_state(&mut self, mut next: HomeState, thing: Thing, origin: Origin) {
        let payload = next.payload(thing);
        let previous = match self.state.read() {
            Ok(current) => current.payload(thing),
            Err(_) => HomeState::default().payload(thing),
        };
        let changed = payload != previous;
        // A node re-reporting the same climate is not news; a command is echoed even when it
        // changes nothing, so its sender sees the state.
        if !changed && origin == Origin::Node {
            return;
        }
        next.auto_set[thing as usize] = origin == Origin::Auto;
        if let Ok(mut s) = self.state.write() {
            *s = next;
        }
        self.writer.send(WriteOp::State {
            thing,
            payload: payload.clone(),
            origin,
            changed_ms: now_ms(),
            changed,
        });
        let topic = self.topics.state(thing);
        self.publisher.publish(&topic, payload.clone(), true);
        if changed {
            tracing::debug!(
                thing = thing.as_str(),
                origin = origin.as_str(),
                "state changed"
            );
        }
        let _ = self.events.send(Event::State {
            thing,
            payload,
            origin,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_locks_after_repeated_wrong_pins() {
        let mut g = DoorGuard::new("1234".into(), DoorSection::default());
        let t0 = Instant::now();
        assert_eq!(g.check("1234", t0), Ok(()));
        for i in 0..5 {
            assert_eq!(
                g.check("0000", t0 + Duration::from_secs(i)),
                Err(CommandError::PinInvalid)
            );
        }
        assert!(matches!(
            g.check("1234", t0 + Duration::from_secs(10)),
            Err(CommandError::LockedOut { .. })
        ));
        assert_eq!(g.check("1234", t0 + Duration::from_secs(400)), Ok(()));
    }

    #[test]
    fn failures_outside_the_window_do_not_lock() {
        let mut g = DoorGuard::new("1234".into(), DoorSection::default());
        let t0 = Instant::now();
        for i in 0..8 {
            let _ = g.check("0000", t0 + Duration::from_secs(i * 100));
        }
        assert_eq!(g.check("1234", t0 + Duration::from_secs(800)), Ok(()));
    }
}
