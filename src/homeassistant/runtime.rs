//! Keeps Home Assistant's view in step with the hub: publishes every config at start, re-publishes
//! configs then states when Home Assistant comes `online`, adds a node's entities when the node is
//! first seen, and withdraws (empty retained config) what no longer exists: nodes unseen for
//! `node_expiry_days`, forgotten nodes, and anything announced before a restart that is gone since.
//! What was announced is remembered in SQLite because the broker's retained messages are not.
//! After adding entities it has the engine publish the hub's status again (rumqttd does not replay
//! retained messages to a client that subscribes again to a filter it already has).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rumqttd::local::LinkRx;
use rumqttd::Notification;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Catalog;
use crate::broker::{Publisher, SideLink};
use crate::config::HomeAssistantSection;
use crate::engine::{Event, Input};
use crate::readings::ReadingKind;
use crate::store::{self, StoreError, WriteOp, Writer};
use crate::topics::DiscoveryTopics;

/// Why Home Assistant discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum HomeAssistantError {
    #[error("Home Assistant discovery: {0}")]
    Store(#[from] StoreError),
    #[error("Home Assistant discovery: {0}")]
    Task(String),
}

/// Everything the discovery task needs.
pub struct Parts {
    pub config: HomeAssistantSection,
    pub catalog: Catalog,
    /// Its own broker link, subscribed to `<prefix>/status`.
    pub link: SideLink,
    /// Subscribed before the engine took its first input, so no node is missed.
    pub events: broadcast::Receiver<Event>,
    pub engine: Sender<Input>,
    pub writer: Writer,
    pub db_path: PathBuf,
}

/// How often nodes are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);
/// How long a withdrawn config keeps being withdrawn again whenever Home Assistant comes online.
const WITHDRAWN_KEPT_MS: i64 = 30 * 86_400_000;

/// What the task knows of a node.
#[derive(Debug, Clone, Default)]
struct Node {
    kinds: Vec<ReadingKind>,
    last_seen_ms: i64,
    /// Whether its entities should exist in Home Assistant (false once expired).
    listed: bool,
}

/// Publishes every config (retained) and withdraws stale ones before returning, then follows the hub in
/// tasks of its own (returned so the hub can stop them).
pub async fn start(parts: Parts) -> Result<Vec<JoinHandle<()>>, HomeAssistantError> {
    let Parts {
        config,
        catalog,
        link,
        events,
        engine,
        writer,
        db_path,
    } = parts;
    let SideLink { publisher, rx } = link;
    let discovery = DiscoveryTopics::new(&config.discovery_prefix);
    let mut state = Discovery {
        catalog,
        discovery: discovery.clone(),
        publisher: Arc::new(Mutex::new(publisher)),
        writer,
        db_path,
        expiry_ms: (config.node_expiry_days > 0)
            .then(|| i64::from(config.node_expiry_days) * 86_400_000),
        announced: BTreeMap::new(),
        withdrawn: BTreeSet::new(),
        published: HashMap::new(),
        nodes: BTreeMap::new(),
    };
    state.load().await?;
    state.sync(true).await;
    tracing::info!(
        prefix = config.discovery_prefix,
        entities = state.published.len(),
        "Home Assistant discovery published"
    );

    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_status(rx, discovery.status(), status_tx));
    let main = tokio::spawn(state.run(config, events, status_rx, engine));
    Ok(vec![main, reader])
}

/// Reads Home Assistant's status messages off the side link, answering rumqttd's flow control.
async fn read_status(mut rx: LinkRx, topic: String, out: mpsc::UnboundedSender<Bytes>) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(f))) => {
                if f.publish.topic.as_ref() == topic.as_bytes()
                    && out.send(f.publish.payload).is_err()
                {
                    return;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) | Ok(None) => {}
            Err(_) => return,
        }
    }
}

struct Discovery {
    catalog: Catalog,
    discovery: DiscoveryTopics,
    /// Shared with the blocking task that publishes (a publish may wait on the router's queue).
    publisher: Arc<Mutex<Publisher>>,
    writer: Writer,
    db_path: PathBuf,
    expiry_ms: Option<i64>,
    /// Config topic → node id, as remembered in SQLite.
    announced: BTreeMap<String, Option<String>>,
    /// Configs withdrawn (recently), withdrawn again each time Home Assistant comes online.
    withdrawn: BTreeSet<String>,
    /// Config topic → the payload last published this run.
    published: HashMap<String, String>,
    nodes: BTreeMap<String, Node>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Discovery {
    async fn run(
        mut self,
        config: HomeAssistantSection,
        mut events: broadcast::Receiver<Event>,
        mut status: mpsc::UnboundedReceiver<Bytes>,
        engine: Sender<Input>,
    ) {
        let mut republish_at: Option<Instant> = None;
        // Entities added while Home Assistant is connected subscribe again to topics it already
        // subscribed to (the hub's status), and rumqttd does not re-send retained messages for a
        // filter the client already has (MQTT 3.1.1 says it must): without a fresh `online` on
        // `<base>/status` such an entity would stay unavailable. So, once Home Assistant has had time
        // to subscribe, the engine publishes its status (and states) again.
        let mut refresh_at: Option<Instant> = None;
        let refresh_after = Duration::from_millis(config.republish_delay_ms);
        let mut expiry = tokio::time::interval(EXPIRY_CHECK);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Event::Reading { reading }) => {
                        let kind = reading.measurement.kind();
                        if self.seen(&reading.node_id, kind, reading.received_ms)
                            && self.sync(false).await
                        {
                            refresh_at.get_or_insert(Instant::now() + refresh_after);
                        }
                    }
                    Ok(Event::NodeForgotten { node_id }) => {
                        if self.nodes.remove(&node_id).is_some() {
                            self.sync(false).await;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "Home Assistant discovery fell behind the engine; re-reading the nodes");
                        match self.resync().await {
                            Ok(true) => {
                                refresh_at.get_or_insert(Instant::now() + refresh_after);
                            }
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "Home Assistant discovery: cannot re-read the nodes"),
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                payload = status.recv() => match payload.as_deref() {
                    Some(b"online") => {
                        // Several `online`s within the wait are answered once.
                        if republish_at.is_none() {
                            let jitter = if config.republish_jitter_ms > 0 {
                                rand::thread_rng().gen_range(0..=config.republish_jitter_ms)
                            } else {
                                0
                            };
                            let wait = Duration::from_millis(config.republish_delay_ms + jitter);
                            tracing::info!(wait_ms = wait.as_millis() as u64, "Home Assistant is online; re-publishing soon");
                            republish_at = Some(Instant::now() + wait);
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = sleep_until(republish_at), if republish_at.is_some() => {
                    republish_at = None;
                    self.sync(true).await;
                    // Configs first, states after: Home Assistant subscribes to an entity's state
                    // topic when its config arrives.
                    if engine.send(Input::RepublishStates).is_err() {
                        return;
                    }
                }
                _ = sleep_until(refresh_at), if refresh_at.is_some() => {
                    refresh_at = None;
                    if engine.send(Input::RepublishStates).is_err() {
                        return;
                    }
                }
                _ = expiry.tick() => {
                    if self.expire(now_ms()) {
                        self.sync(false).await;
                    }
                }
            }
        }
    }

    /// Reads what was announced (and withdrawn) before and the known nodes.
    async fn load(&mut self) -> Result<(), HomeAssistantError> {
        let db = self.db_path.clone();
        let since_ms = now_ms() - WITHDRAWN_KEPT_MS;
        let (announced, withdrawn, nodes) = tokio::task::spawn_blocking(move || {
            let conn = store::open_reader(&db)?;
            Ok::<_, StoreError>((
                store::discovery_announced(&conn)?,
                store::discovery_withdrawn(&conn, since_ms)?,
                store::nodes(&conn)?,
            ))
        })
        .await
        .map_err(|e| HomeAssistantError::Task(e.to_string()))??;
        self.writer.send(WriteOp::DiscoveryPrune {
            before_ms: since_ms,
        });
        self.announced = announced.into_iter().collect();
        self.withdrawn = withdrawn.into_iter().collect();
        self.replace_nodes(nodes);
        Ok(())
    }

    /// After missing events: wait for the writer to commit what the engine sent it, then take the
    /// nodes from the database.
    async fn resync(&mut self) -> Result<bool, HomeAssistantError> {
        let writer = self.writer.clone();
        let db = self.db_path.clone();
        let nodes = tokio::task::spawn_blocking(move || {
            writer.flush(Duration::from_secs(10));
            let conn = store::open_reader(&db)?;
            store::nodes(&conn)
        })
        .await
        .map_err(|e| HomeAssistantError::Task(e.to_string()))??;
        self.replace_nodes(nodes);
        Ok(self.sync(false).await)
    }

    fn replace_nodes(&mut self, rows: Vec<store::NodeRow>) {
        let now = now_ms();
        self.nodes = rows
            .into_iter()
            .filter(|row| !row.kinds.is_empty())
            .map(|row| {
                let node = Node {
                    listed: !self.is_expired(row.last_seen_ms, now),
                    kinds: row.kinds,
                    last_seen_ms: row.last_seen_ms,
                };
                (row.node_id, node)
            })
            .collect();
    }

    fn is_expired(&self, last_seen_ms: i64, now: i64) -> bool {
        self.expiry_ms
            .is_some_and(|expiry| now.saturating_sub(last_seen_ms) > expiry)
    }

    /// Notes a reading; true when the node's entities change (a new node, a new kind, or back after
    /// expiring).
    fn seen(&mut self, node_id: &str, kind: ReadingKind, at_ms: i64) -> bool {
        if !self.nodes.contains_key(node_id) {
            self.nodes.insert(node_id.to_owned(), Node::default());
        }
        let Some(node) = self.nodes.get_mut(node_id) else {
            return false;
        };
        node.last_seen_ms = node.last_seen_ms.max(at_ms);
        let mut changed = !node.listed;
        node.listed = true;
        if !node.kinds.contains(&kind) {
            node.kinds.push(kind);
            // One order whatever the arrival order, so configs do not change on restart.
            node.kinds = ReadingKind::ALL
                .into_iter()
                .filter(|k| node.kinds.contains(k))
                .collect();
            changed = true;
        }
        changed
    }

    /// Unlists nodes unseen for too long; true when any was.
    fn expire(&mut self, now: i64) -> bool {
        let Some(expiry) = self.expiry_ms else {
            return false;
        };
        let mut any = false;
        for (node_id, node) in &mut self.nodes {
            if node.listed && now.saturating_sub(node.last_seen_ms) > expiry {
                tracing::info!(node_id, "node unseen too long: removed from Home Assistant");
                node.listed = false;
                any = true;
            }
        }
        any
    }

    /// Every config that should exist now: topic → (payload, node id).
    fn desired(&self) -> BTreeMap<String, (String, Option<String>)> {
        let hub = self.catalog.hub_entities();
        let nodes = self
            .nodes
            .iter()
            .filter(|(_, n)| n.listed)
            .flat_map(|(id, n)| self.catalog.node_entities(id, &n.kinds));
        hub.into_iter()
            .chain(nodes)
            .map(|e| (e.config_topic(&self.discovery), (e.payload(), e.node_id)))
            .collect()
    }

    /// Publishes what changed (everything, and every withdrawal again, when `all`), withdraws what
    /// should no longer exist, and records both. True when an entity was added.
    async fn sync(&mut self, all: bool) -> bool {
        let desired = self.desired();
        let mut batch: Vec<(String, String)> = Vec::new();
        let at_ms = now_ms();
        self.withdrawn.retain(|topic| !desired.contains_key(topic));
        if all {
            batch.extend(self.withdrawn.iter().map(|t| (t.clone(), String::new())));
        }
        let stale: Vec<String> = self
            .announced
            .keys()
            .filter(|topic| !desired.contains_key(*topic))
            .cloned()
            .collect();
        for topic in stale {
            self.announced.remove(&topic);
            self.published.remove(&topic);
            self.writer.send(WriteOp::DiscoveryWithdrawn {
                topic: topic.clone(),
                at_ms,
            });
            self.withdrawn.insert(topic.clone());
            batch.push((topic, String::new()));
        }
        let mut added = false;
        for (topic, (payload, node_id)) in desired {
            added |= !self.published.contains_key(&topic);
            if all || self.published.get(&topic) != Some(&payload) {
                batch.push((topic.clone(), payload.clone()));
            }
            if self.announced.get(&topic) != Some(&node_id) {
                self.writer.send(WriteOp::DiscoveryAnnounced {
                    topic: topic.clone(),
                    node_id: node_id.clone(),
                    at_ms,
                });
                self.announced.insert(topic.clone(), node_id);
            }
            self.published.insert(topic, payload);
        }
        if batch.is_empty() {
            return added;
        }
        let withdrawn = batch.iter().filter(|(_, p)| p.is_empty()).count();
        tracing::debug!(
            published = batch.len() - withdrawn,
            withdrawn,
            "Home Assistant discovery"
        );
        let publisher = self.publisher.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut publisher = publisher.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, payload) in batch {
                publisher.publish(&topic, payload, true);
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "Home Assistant discovery: publishing failed");
        }
        added
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
