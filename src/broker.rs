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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
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
}

/// What [`Broker::start`] hands to the hub: the engine's link and, when asked for, Home Assistant's.
pub struct EngineLink {
    pub publisher: Publisher,
    pub rx: LinkRx,
    /// Home Assistant's own link, subscribed to its status topic.
    pub homeassistant: Option<SideLink>,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mqtt")
            .enable_all()
            .build()
            .map_err(BrokerError::Runtime)?;
        let router = rumqttd::Router::new(config.broker.id, config.broker.router.clone());
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
        Ok((
            Broker {
                runtime: Some(runtime),
                listeners: listeners.clone(),
            },
            EngineLink {
                publisher: Publisher { tx },
                rx,
                homeassistant,
            },
        ))
    }

    /// Closes every listener and client connection; the ports are free when this returns.
    pub fn stop(&mut self) {
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

/// Drains the engine's link on a thread of its own into `out`, answering rumqttd's flow control,
/// and counts messages the broker's log dropped before we read them (gaps in the cursor).
///
/// At most `backlog` messages are in the hub at once (`metrics.ingest_backlog`: +1 here, -1 when the
/// engine has refused or finished a message, or the writer has committed its reading). When it is full
/// this thread stops reading the link until there is room: the router keeps appending to its log, and
/// what overflows the log shows up as a counted gap. Without the bound a flood the engine or SQLite
/// cannot keep up with grows the hub's memory without limit.
pub fn spawn_drainer(
    mut rx: LinkRx,
    out: Sender<crate::engine::Input>,
    metrics: Arc<Metrics>,
    backlog: u64,
) -> std::io::Result<()> {
    let backlog = backlog.max(1);
    std::thread::Builder::new()
        .name("mqtt-drain".into())
        .spawn(move || {
            let mut last: Option<u64> = None;
            loop {
                if !wait_for_room(&metrics, backlog) {
                    return;
                }
                match rx.recv() {
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
                    Err(_) => return,
                }
            }
        })
        .map(|_| ())
}

/// Waits while the ingest backlog is full; false when the engine stopped meanwhile.
fn wait_for_room(metrics: &Metrics, backlog: u64) -> bool {
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
    // Resume at 3/4 so that a full backlog does not toggle on every message.
    let resume = backlog - backlog / 4;
    let mut pause = Duration::from_micros(100);
    while metrics.ingest_backlog.load(Relaxed) >= resume.max(1) {
        if metrics.ingest_closed.load(Relaxed) {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    !metrics.ingest_closed.load(Relaxed)
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
