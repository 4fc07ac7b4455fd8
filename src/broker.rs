//! Hosts rumqttd's router and listeners on a runtime the hub owns, so that shutdown closes every
//! connection and frees the ports (rumqttd's own `Broker::start` cannot be stopped).
//!
//! The engine's link is drained by a thread of its own into the engine's queue: rumqttd acknowledges a
//! QoS 1 publish once it is in its in-memory log and drops the oldest segment of a full log whoever has
//! not read it, so the hub reads as fast as the router appends, whatever SQLite is doing, up to a
//! bounded backlog (`[hub] ingest_backlog`); beyond it the log's overflow is counted as lost.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flume::RecvTimeoutError;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{LinkType, Notification, Server};

use crate::auth::PasswordFile;
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{proto} listen address {addr} is already in use (another smarthub or MQTT broker?): stop it or choose another with --mqtt-listen / the config")]
    AddrInUse {
        proto: &'static str,
        addr: SocketAddr,
    },
    #[error("{proto} listen address {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{proto} listener on {addr} did not start: {why}")]
    NotListening {
        proto: &'static str,
        addr: SocketAddr,
        why: String,
    },
    #[error("cannot link to the embedded broker: {0}")]
    Link(String),
    #[error("cannot start the broker runtime: {0}")]
    Runtime(std::io::Error),
}

/// A message the engine's link received.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// Publishes into the broker on behalf of the hub.
pub struct Publisher {
    tx: LinkTx,
}

impl Publisher {
    /// Publishes at QoS 0 (rumqttd's local links cannot do more); `retain` keeps it for new subscribers.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>, retain: bool) {
        let packet = Packet::Publish(
            Publish::new(
                Bytes::copy_from_slice(topic.as_bytes()),
                payload.into(),
                retain,
            ),
            None,
        );
        // `LinkTx::send` is async in name only: it has no await point, so one poll completes it.
        let fut = std::pin::pin!(self.tx.send(packet));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(Ok(_)) => {}
            std::task::Poll::Ready(Err(e)) => {
                tracing::error!(topic, error = %e, "publish into the broker failed")
            }
            std::task::Poll::Pending => {
                tracing::error!(topic, "publish into the broker did not complete")
            }
        }
    }
}

/// The running broker.
pub struct Broker {
    runtime: Option<tokio::runtime::Runtime>,
    pub listeners: Vec<(&'static str, SocketAddr)>,
    gate: Arc<ListenerGate>,
}

/// Worker threads of the runtime that runs rumqttd's listeners and connection tasks.
const CONNECTION_WORKERS: usize = 2;

/// What [`Broker::start`] hands to the hub: the engine's link and, when asked for, Home Assistant's.
pub struct EngineLink {
    pub publisher: Publisher,
    pub rx: LinkRx,
    /// Home Assistant's own link, subscribed to its status topic.
    pub homeassistant: Option<SideLink>,
    /// Holds the connections back while the hub is far behind (see [`spawn_drainer`]).
    pub gate: Arc<ListenerGate>,
}

/// A link of its own for an adapter that publishes outside the base topic and listens to a few topics.
/// Its reader must answer `Notification::Unschedule` like the engine's drainer does.
pub struct SideLink {
    pub publisher: Publisher,
    pub rx: LinkRx,
}

/// Fails with a clear error when `addr` is taken. rumqttd itself only logs a bind failure.
pub fn check_free(proto: &'static str, addr: SocketAddr) -> Result<(), BrokerError> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(BrokerError::AddrInUse { proto, addr })
        }
        Err(source) => Err(BrokerError::Bind {
            proto,
            addr,
            source,
        }),
    }
}

impl Broker {
    /// Starts the router, links the engine and subscribes it to `filter` (and Home Assistant's link to
    /// `homeassistant_filter`), and only then opens the listeners (a publish made before the hub's
    /// subscription exists would be acked and kept nowhere).
    pub fn start(
        config: &Config,
        filter: &str,
        homeassistant_filter: Option<&str>,
        passwords: Option<Arc<PasswordFile>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Broker, EngineLink), BrokerError> {
        let listeners = config.mqtt_listeners();
        for (proto, addr) in &listeners {
            check_free(proto, *addr)?;
        }
        let nice = config.hub.broker_nice;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CONNECTION_WORKERS)
            .thread_name("mqtt")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .map_err(BrokerError::Runtime)?;
        let router = rumqttd::Router::new(config.broker.id, config.broker.router.clone());
        // The router stays at the hub's priority: it forwards to the engine's link as well as
        // taking in what the connections read.
        let router_tx = router.spawn();
        let (mut tx, rx, _ack) =
            rumqttd::local::LinkBuilder::new("smarthub-engine", router_tx.clone())
                .build()
                .map_err(|e| BrokerError::Link(e.to_string()))?;
        tx.subscribe(filter)
            .map_err(|e| BrokerError::Link(e.to_string()))?;
        let homeassistant = match homeassistant_filter {
            Some(ha_filter) => {
                let (mut ha_tx, ha_rx, _ack) =
                    rumqttd::local::LinkBuilder::new("smarthub-homeassistant", router_tx.clone())
                        .build()
                        .map_err(|e| BrokerError::Link(e.to_string()))?;
                ha_tx
                    .subscribe(ha_filter)
                    .map_err(|e| BrokerError::Link(e.to_string()))?;
                Some(SideLink {
                    publisher: Publisher { tx: ha_tx },
                    rx: ha_rx,
                })
            }
            None => None,
        };

        let mut tasks = Vec::new();
        for (proto, servers) in [(V4, &config.broker.v4), (V5, &config.broker.v5)] {
            for settings in servers.iter().flat_map(|s| s.values()) {
                let mut settings = settings.clone();
                if let Some(pw) = &passwords {
                    let pw = pw.clone();
                    let metrics = metrics.clone();
                    settings
                        .connections
                        .set_auth_handler(move |client, user, pass| {
                            let pw = pw.clone();
                            let metrics = metrics.clone();
                            async move {
                                let name = user.clone();
                                let ok =
                                    tokio::task::spawn_blocking(move || pw.verify(&user, &pass))
                                        .await
                                        .unwrap_or(false);
                                if !ok {
                                    metrics.rejected(crate::readings::Reason::Unauthorized);
                                    tracing::warn!(client, user = name, "MQTT login refused");
                                }
                                ok
                            }
                        });
                }
                let listen = settings.listen;
                let router_tx = router_tx.clone();
                let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
                runtime.spawn(async move {
                    let outcome = if proto == V4 {
                        let mut server =
                            Server::new(settings, router_tx, rumqttd::protocol::v4::V4);
                        server.start(LinkType::Remote).await
                    } else {
                        let mut server =
                            Server::new(settings, router_tx, rumqttd::protocol::v5::V5);
                        server.start(LinkType::Remote).await
                    };
                    let why = match outcome {
                        Ok(()) => "stopped".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(%listen, error = why, "MQTT listener stopped");
                    let _ = done_tx.send(why);
                });
                tasks.push((proto_name(proto), listen, done_rx));
            }
        }
        // Ready once every listener holds its port: our own bind then fails with AddrInUse.
        for (proto, addr, done) in &tasks {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(why) = done.try_recv() {
                    runtime.shutdown_background();
                    return Err(BrokerError::NotListening {
                        proto,
                        addr: *addr,
                        why,
                    });
                }
                if is_listening(*addr) {
                    break;
                }
                if Instant::now() > deadline {
                    runtime.shutdown_background();
                    return Err(BrokerError::NotListening {
                        proto,
                        addr: *addr,
                        why: "timed out".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let gate = Arc::new(ListenerGate::new(runtime.handle().clone()));
        Ok((
            Broker {
                runtime: Some(runtime),
                listeners: listeners.clone(),
                gate: gate.clone(),
            },
            EngineLink {
                publisher: Publisher { tx },
                rx,
                homeassistant,
                gate,
            },
        ))
    }

    /// Closes every listener and client connection; the ports are free when this returns.
    pub fn stop(&mut self) {
        // A held worker would never see the runtime shut down.
        self.gate.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.listeners.iter().any(|(_, a)| is_listening(*a)) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

const V4: u8 = 4;
const V5: u8 = 5;

fn proto_name(p: u8) -> &'static str {
    if p == V4 {
        "MQTT 3.1.1"
    } else {
        "MQTT 5"
    }
}

/// Makes the calling thread `nice` steps less favoured by the scheduler than the hub's own threads
/// (`[hub] broker_nice`). On Linux the nice value belongs to the thread, not the process.
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
        let (tid, current) = unsafe {
            let tid = libc::gettid();
            (
                tid,
                libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
            )
        };
        let target = (current + i32::from(nice)).min(19);
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, target) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the broker thread's priority");
        }
    }
}

/// How far the hub may fall behind the broker (`[hub] ingest_backlog`, `ingest_pause_max_ms`).
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// At most this many messages taken from the broker and not yet finished.
    pub backlog: u64,
    /// The longest the connections are held back while the hub finishes nothing; 0: never hold them.
    pub max_pause: Duration,
}

/// Holds rumqttd's connection tasks back while the hub is far behind the broker.
///
/// rumqttd acknowledges a QoS 1 publish as soon as it is in its log, reads every socket as fast as
/// it can, and drops the oldest part of a full log whoever has not read it: it has no backpressure of
/// its own. Holding every worker of the runtime that runs the connections stops them reading their
/// sockets, so TCP pushes back on the publishers (QoS 0 too) and nothing more is acknowledged, while
/// the router, the engine and the writer go on with what they already have.
pub struct ListenerGate {
    handle: tokio::runtime::Handle,
    state: Mutex<GateState>,
    released: Condvar,
}

#[derive(Default)]
struct GateState {
    held: bool,
    closed: bool,
}

impl ListenerGate {
    fn new(handle: tokio::runtime::Handle) -> ListenerGate {
        ListenerGate {
            handle,
            state: Mutex::new(GateState::default()),
            released: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds every connection worker until [`release`](Self::release).
    pub fn hold(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.held || state.closed {
                return;
            }
            state.held = true;
        }
        // One task per worker, each blocking the thread that runs it: a worker that is held runs
        // no connection; whatever sits in its queue is stolen by the others until they are held too.
        for _ in 0..CONNECTION_WORKERS {
            let gate = self.clone();
            self.handle.spawn(async move { gate.wait_released() });
        }
    }

    fn wait_released(&self) {
        let mut state = self.lock();
        while state.held && !state.closed {
            state = self.released.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn release(&self) {
        let mut state = self.lock();
        state.held = false;
        self.released.notify_all();
    }

    /// Releases the workers for good (shutdown).
    fn close(&self) {
        self.lock().closed = true;
        self.release();
    }
}

/// Drains the engine's link on a thread of its own into `out`, answering rumqttd's flow control,
/// and counts messages the broker's log dropped before we read them (gaps in the cursor).
///
/// At most `limits.backlog` messages are in the hub at once (`metrics.ingest_backlog`: +1 here, -1
/// when the engine has refused or finished a message, or the writer has committed its reading). When
/// it is full this thread stops reading the link, and the connections are held back through `gate`
/// until the hub has caught up (a quarter of the backlog left, or nothing more in the broker for it):
/// a flood the hub cannot keep up with then slows the publishers down instead of overflowing the
/// broker's log. A hub that finishes nothing for `limits.max_pause` (a stalled disk) lets the
/// connections go on; what then overflows the log shows up as a counted gap. Without the bound a
/// flood the engine or SQLite cannot keep up with grows the hub's memory without limit.
pub fn spawn_drainer(
    mut rx: LinkRx,
    out: Sender<crate::engine::Input>,
    metrics: Arc<Metrics>,
    gate: Arc<ListenerGate>,
    limits: IngestLimits,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mqtt-drain".into())
        .spawn(move || {
            let mut flow = Flow::new(limits, gate);
            let mut last: Option<u64> = None;
            loop {
                if !flow.wait_for_room(&metrics) {
                    return;
                }
                // While the connections are held, wake up now and then to release them in time.
                let next = if flow.hold.is_some() {
                    rx.recv_deadline(Instant::now() + HELD_POLL)
                } else {
                    rx.recv()
                };
                match next {
                    Ok(Some(Notification::Forward(f))) => {
                        if let Some((_, offset)) = f.cursor {
                            if let Some(prev) = last {
                                if offset > prev + 1 {
                                    let lost = offset - prev - 1;
                                    metrics.messages_lost.fetch_add(lost, Relaxed);
                                    tracing::error!(lost, "the broker's log dropped messages before the hub read them; enlarge router.max_segment_size / max_segment_count");
                                }
                            }
                            last = Some(last.map_or(offset, |p| p.max(offset)));
                        }
                        let msg = Inbound {
                            topic: f.publish.topic,
                            payload: f.publish.payload,
                        };
                        metrics.ingest_backlog.fetch_add(1, Relaxed);
                        flow.taken += 1;
                        if out.send(crate::engine::Input::Mqtt(msg)).is_err() {
                            return;
                        }
                    }
                    Ok(Some(Notification::Unschedule)) => {
                        if rx.ready().is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) | Ok(None) => {}
                    // Nothing more from the router: the hub has read all the broker had for it.
                    Err(LinkError::RecvTimeout(RecvTimeoutError::Timeout)) => {
                        flow.maybe_release(&metrics, true);
                        continue;
                    }
                    Err(_) => return,
                }
                flow.maybe_release(&metrics, false);
            }
        })
        .map(|_| ())
}

/// How often the drain thread looks at the backlog while the connections are held.
const HELD_POLL: Duration = Duration::from_millis(5);

/// The drain thread's side of the ingest backlog and the listener gate.
struct Flow {
    limits: IngestLimits,
    gate: Arc<ListenerGate>,
    /// Messages this thread has taken from the link.
    taken: u64,
    /// The hold in force, if any.
    hold: Option<Hold>,
    /// False after a hold ran out of time, until the hub catches up: a stalled disk holds the
    /// connections back once, not again and again.
    may_hold: bool,
}

/// A hold of the connections: when the hub last made progress during it.
struct Hold {
    /// Messages finished (taken and no longer in the backlog) when last looked at.
    finished: u64,
    progress_at: Instant,
}

impl Flow {
    fn new(limits: IngestLimits, gate: Arc<ListenerGate>) -> Flow {
        Flow {
            limits: IngestLimits {
                backlog: limits.backlog.max(1),
                ..limits
            },
            gate,
            taken: 0,
            hold: None,
            may_hold: true,
        }
    }

    /// Below this the connections are let go again.
    fn release_mark(&self) -> u64 {
        self.limits.backlog / 4
    }

    /// Waits while the ingest backlog is full; false when the engine stopped meanwhile.
    fn wait_for_room(&mut self, metrics: &Metrics) -> bool {
        let backlog = self.limits.backlog;
        if metrics.ingest_backlog.load(Relaxed) < backlog {
            return true;
        }
        let stalls = metrics.ingest_stalls.fetch_add(1, Relaxed) + 1;
        // Logged on the 1st, 2nd, 4th, 8th... stall: a sustained flood must not flood the log too.
        if stalls.is_power_of_two() {
            tracing::warn!(
                backlog,
                stalls,
                "the hub is {backlog} messages behind: it reads the broker again once the engine and the database catch up (smarthub_ingest_stalls_total)"
            );
        }
        if self.may_hold && !self.limits.max_pause.is_zero() && self.hold.is_none() {
            self.gate.hold();
            self.hold = Some(Hold {
                finished: self.finished(metrics),
                progress_at: Instant::now(),
            });
            metrics.ingest_holds.fetch_add(1, Relaxed);
        }
        // Read again at 3/4 so that a full backlog does not toggle on every message.
        let resume = backlog - backlog / 4;
        let mut pause = Duration::from_micros(100);
        while metrics.ingest_backlog.load(Relaxed) >= resume.max(1) {
            if metrics.ingest_closed.load(Relaxed) {
                self.gate.release();
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(HELD_POLL);
            self.maybe_release(metrics, false);
        }
        !metrics.ingest_closed.load(Relaxed)
    }

    /// Messages the engine and the writer have finished with since the start.
    fn finished(&self, metrics: &Metrics) -> u64 {
        self.taken
            .saturating_sub(metrics.ingest_backlog.load(Relaxed))
    }

    /// Lets the connections go once the hub has read everything the broker had for it (`link_idle`)
    /// or worked its backlog down to a quarter, or when it has finished nothing for
    /// `limits.max_pause` (a stalled disk): a hub that is slow but moving keeps the publishers
    /// waiting, however long it takes to work through what the broker already holds.
    fn maybe_release(&mut self, metrics: &Metrics, link_idle: bool) {
        let low = || metrics.ingest_backlog.load(Relaxed) < self.release_mark().max(1);
        // Not held (every message passes here): only whether a stalled hub has caught up again.
        if self.hold.is_none() {
            if !self.may_hold {
                self.may_hold = low();
            }
            return;
        }
        let low = low();
        let finished = self.finished(metrics);
        let Some(hold) = &mut self.hold else {
            return;
        };
        let now = Instant::now();
        if finished > hold.finished {
            hold.finished = finished;
            hold.progress_at = now;
        }
        let caught_up = low || link_idle;
        let stuck = now.duration_since(hold.progress_at) >= self.limits.max_pause;
        if caught_up || stuck {
            self.gate.release();
            self.hold = None;
            self.may_hold = caught_up;
            if !caught_up {
                tracing::warn!(
                    max_pause_ms = self.limits.max_pause.as_millis() as u64,
                    "the hub finished nothing while the MQTT connections were held back: letting them go on (what overflows the broker's log is counted in smarthub_messages_lost_total)"
                );
            }
        }
    }
}

/// Whether something listens on `addr`'s port. Reads the socket table where it can: probing with a
/// bind could steal the port from the listener starting beside it.
fn is_listening(addr: SocketAddr) -> bool {
    match count_tcp_sockets("0A", &[addr.port()]) {
        Some(n) => n > 0,
        None => std::net::TcpStream::connect_timeout(
            &SocketAddr::new(
                if addr.ip().is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    addr.ip()
                },
                addr.port(),
            ),
            Duration::from_millis(100),
        )
        .is_ok(),
    }
}

/// Counts TCP sockets in `state` (`01` established, `0A` listening) whose local port is one of `ports`,
/// from Linux's `/proc/net/tcp*`; `None` where that is not available.
pub fn count_tcp_sockets(state_hex: &str, ports: &[u16]) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        any = true;
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(state)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            if state != state_hex {
                continue;
            }
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                total += 1;
            }
        }
    }
    any.then_some(total)
}
