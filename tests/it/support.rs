//! Helpers: a hub on free ports, an MQTT client that collects what it receives, polling with deadlines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use smarthub::config::Config;
use smarthub::readings::ReadingKind;
use smarthub::Hub;
use tokio::sync::mpsc;

/// A loopback port nobody holds right now (rumqttd cannot report a port it bound to 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The default config on free loopback ports.
pub fn test_config() -> Config {
    let mut config = Config::default_config();
    config
        .set_mqtt_listen(format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config
}

pub struct TestHub {
    pub hub: Option<Hub>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestHub {
    pub async fn start() -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config();
        TestHub::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> TestHub {
        let hub = Hub::start(config.clone(), dir.path())
            .await
            .expect("hub starts");
        TestHub {
            hub: Some(hub),
            dir,
            config,
        }
    }

    pub fn hub(&self) -> &Hub {
        self.hub.as_ref().unwrap()
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.hub().mqtt_listeners[0].1
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.hub().http_addr, path)
    }

    pub fn db_path(&self) -> PathBuf {
        smarthub::database_path(self.dir.path())
    }

    pub async fn stop(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await;
        }
    }

    /// Stops this hub and starts a new one on the same data directory and ports.
    pub async fn restart(mut self) -> TestHub {
        self.stop().await;
        let TestHub { dir, config, .. } = self;
        TestHub::start_in(dir, config).await
    }

    pub async fn mqtt(&self, id: &str) -> Mqtt {
        Mqtt::connect(self.mqtt_addr(), id).await
    }

    pub fn count(&self, kind: ReadingKind) -> u64 {
        count_in(&self.db_path(), kind)
    }

    /// Waits until the table holds `n` rows (panics after a generous deadline).
    pub async fn wait_count(&self, kind: ReadingKind, n: u64) {
        let path = self.db_path();
        eventually(&format!("{n} {} readings stored", kind.as_str()), || {
            count_in(&path, kind) >= n
        })
        .await;
        assert_eq!(count_in(&path, kind), n, "exactly {n} rows");
    }

    pub async fn metric(&self, line_prefix: &str) -> u64 {
        metric_value(&self.url("/metrics"), line_prefix).await
    }
}

pub async fn metric_value(url: &str, line_prefix: &str) -> u64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no metric line starting with {line_prefix}:\n{text}"))
}

pub fn count_in(path: &Path, kind: ReadingKind) -> u64 {
    let conn = smarthub::store::open_reader(path).unwrap();
    smarthub::store::count_readings(&conn, kind).unwrap()
}

/// Polls `check` until it holds, for at most 30 s (a deadline, not a timing assertion).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real MQTT 3.1.1 client that collects incoming publishes and counts acks.
pub struct Mqtt {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    pub acked: Arc<AtomicUsize>,
    subacked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    pub async fn connect(addr: SocketAddr, id: &str) -> Mqtt {
        Mqtt::connect_with(addr, id, |_| {}).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        tune: impl FnOnce(&mut MqttOptions),
    ) -> Mqtt {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        tune(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let acked = Arc::new(AtomicUsize::new(0));
        let subacked = Arc::new(AtomicUsize::new(0));
        let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
        let mut conn_tx = Some(conn_tx);
        let acks = acked.clone();
        let subacks = subacked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(t) = conn_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if conn_tx.is_none() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), conn_rx)
            .await
            .expect("MQTT connect in time")
            .expect("MQTT connected");
        Mqtt {
            client,
            rx,
            acked,
            subacked,
            task,
        }
    }

    /// Subscribes and waits for the SUBACK, so nothing published after this returns is missed.
    pub async fn subscribe(&self, filter: &str) {
        let before = self.subacked.load(Ordering::SeqCst);
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let subacked = self.subacked.clone();
        eventually(&format!("SUBACK for {filter}"), || {
            subacked.load(Ordering::SeqCst) > before
        })
        .await;
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// The next message on `topic` (others are skipped), within 10 s.
    pub async fn next_on(&mut self, topic: &str) -> Publish {
        self.try_next_on(topic, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("nothing received on {topic}"))
    }

    pub async fn try_next_on(&mut self, topic: &str, wait: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic => return Some(p),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Everything received until nothing more arrives for `quiet` (at most 30 s in all).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(quiet, self.rx.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => break,
            }
        }
        out
    }

    /// Waits until `n` publishes in all were acknowledged.
    pub async fn wait_acked(&self, n: usize) {
        let acked = self.acked.clone();
        eventually(&format!("{n} PUBACKs"), || {
            acked.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.task.abort();
    }
}

pub fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

pub fn json(p: &Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("{}: {e}", text(p)))
}
