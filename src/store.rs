//! SQLite persistence. One writer thread owns the only write connection and commits in batches (group
//! commit bounded by count and time); readers open their own read-only WAL connections. Failed commits
//! are kept in a bounded buffer and retried; what cannot be kept is counted.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::config::StorageSection;
use crate::home::{HomeState, Origin, Thing};
use crate::metrics::Metrics;
use crate::readings::{Measurement, Reading, ReadingKind, Source};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} has schema version {found}, newer than this smarthub knows ({known}); upgrade smarthub")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// Schema migrations; `PRAGMA user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE light_readings (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    measured_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    time_of_day_s REAL NOT NULL,
    day_of_week INTEGER NOT NULL,
    month INTEGER NOT NULL,
    backdated INTEGER NOT NULL,
    source TEXT NOT NULL,
    temperature REAL NOT NULL,
    motion INTEGER NOT NULL,
    light_intensity REAL NOT NULL,
    active INTEGER,
    label_source TEXT,
    weather TEXT
);
CREATE INDEX light_readings_measured ON light_readings (measured_ms);
CREATE TABLE tv_readings (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    measured_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    time_of_day_s REAL NOT NULL,
    day_of_week INTEGER NOT NULL,
    month INTEGER NOT NULL,
    backdated INTEGER NOT NULL,
    source TEXT NOT NULL,
    motion INTEGER NOT NULL,
    channel INTEGER,
    label_source TEXT
);
CREATE INDEX tv_readings_measured ON tv_readings (measured_ms);
CREATE TABLE climate_readings (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    measured_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    time_of_day_s REAL NOT NULL,
    day_of_week INTEGER NOT NULL,
    month INTEGER NOT NULL,
    backdated INTEGER NOT NULL,
    source TEXT NOT NULL,
    temperature REAL NOT NULL,
    humidity REAL NOT NULL,
    motion INTEGER NOT NULL,
    fan_level INTEGER,
    label_source TEXT,
    outside_temperature REAL,
    outside_humidity REAL,
    outside_luminosity REAL
);
CREATE INDEX climate_readings_measured ON climate_readings (measured_ms);
CREATE TABLE home_state (
    thing TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    origin TEXT NOT NULL,
    changed_ms INTEGER NOT NULL
);
CREATE TABLE state_changes (
    id INTEGER PRIMARY KEY,
    changed_ms INTEGER NOT NULL,
    thing TEXT NOT NULL,
    payload TEXT NOT NULL,
    origin TEXT NOT NULL
);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    status TEXT,
    kinds TEXT NOT NULL DEFAULT '',
    messages INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0
);
"#,
    // 2: learning — the model registry, Assisted-mode suggestions, and which old CSV rows were imported.
    r#"
CREATE TABLE model_versions (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    file TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    trained_at_ms INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    balanced_accuracy REAL NOT NULL,
    metrics TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX model_versions_active ON model_versions (target, active);
CREATE TABLE suggestions (
    id INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    target TEXT NOT NULL,
    prediction INTEGER NOT NULL,
    probability REAL NOT NULL,
    model_used TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    answer INTEGER,
    answered_ms INTEGER
);
CREATE TABLE legacy_imports (
    target TEXT NOT NULL,
    legacy_id INTEGER NOT NULL,
    PRIMARY KEY (target, legacy_id)
);
"#,
    // 3: Home Assistant discovery configs the hub has published (retained), so that entities which no
    // longer exist can be removed even after a restart lost the broker's memory. A withdrawn config
    // (`withdrawn_ms` set) is withdrawn again whenever Home Assistant comes online: it may not have been
    // connected when the empty config went out, and an empty retained message leaves nothing behind.
    r#"
CREATE TABLE ha_discovery (
    topic TEXT PRIMARY KEY,
    node_id TEXT,
    announced_ms INTEGER NOT NULL,
    withdrawn_ms INTEGER
);
"#,
];

/// The table holding readings of a kind.
pub fn table(kind: ReadingKind) -> &'static str {
    match kind {
        ReadingKind::Light => "light_readings",
        ReadingKind::Tv => "tv_readings",
        ReadingKind::Climate => "climate_readings",
    }
}

/// One write for the writer thread.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Reading(Arc<Reading>),
    State {
        thing: Thing,
        payload: String,
        origin: Origin,
        changed_ms: i64,
        /// Also append to `state_changes` (false when only re-asserting the same value).
        changed: bool,
    },
    /// A node sent something: `kind` when a reading was accepted, `rejected` when refused.
    NodeSeen {
        node_id: String,
        at_ms: i64,
        kind: Option<ReadingKind>,
        rejected: bool,
    },
    NodeStatus {
        node_id: String,
        status: String,
        at_ms: i64,
    },
    /// Delete readings measured before this time.
    Prune {
        before_ms: i64,
    },
    /// Forget a node: delete its `nodes` row (its readings stay).
    ForgetNode {
        node_id: String,
    },
    /// A Home Assistant discovery config was published on `topic` (for `node_id`'s device, if any).
    DiscoveryAnnounced {
        topic: String,
        node_id: Option<String>,
        at_ms: i64,
    },
    /// The config on `topic` was withdrawn (an empty retained message).
    DiscoveryWithdrawn {
        topic: String,
        at_ms: i64,
    },
    /// Stop remembering configs withdrawn before this time.
    DiscoveryPrune {
        before_ms: i64,
    },
}

/// A request to the writer that is not itself a row.
enum Request {
    Write(WriteOp),
    /// Commit everything queued before this, then answer whether the database holds it all.
    Flush(mpsc::Sender<bool>),
}

/// Sends writes to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: Sender<Request>,
}

impl Writer {
    /// Queues a write. Never blocks.
    pub fn send(&self, op: WriteOp) {
        // The writer only goes away at shutdown, after every sender has finished.
        let _ = self.tx.send(Request::Write(op));
    }

    /// Waits until everything queued before this call is committed (or kept for retry: false).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.flush_to(tx);
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// Like [`Writer::flush`], answering on `reply` instead of waiting.
    pub fn flush_to(&self, reply: Sender<bool>) {
        if let Err(mpsc::SendError(Request::Flush(reply))) = self.tx.send(Request::Flush(reply)) {
            let _ = reply.send(false);
        }
    }
}

/// What the database remembered at open.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub hub_id: String,
    pub state: HomeState,
}

/// The database: a writer thread and the path readers open.
pub struct Store {
    path: PathBuf,
    writer: Writer,
    thread: Option<JoinHandle<()>>,
}

fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    let hub_id: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'hub_id'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let hub_id = match hub_id {
        Some(id) => id,
        None => {
            let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            conn.execute("INSERT INTO meta (key, value) VALUES ('hub_id', ?1)", [&id])?;
            id
        }
    };
    let mut state = HomeState::default();
    let mut stmt = conn.prepare("SELECT thing, payload, origin FROM home_state")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (thing, payload, origin) = row?;
        match Thing::parse(&thing) {
            Some(t) if state.restore(t, &payload) => {
                state.auto_set[t as usize] = origin == Origin::Auto.as_str();
            }
            _ => tracing::warn!(
                thing,
                payload,
                "stored state not understood; using the default"
            ),
        }
    }
    Ok(Loaded { hub_id, state })
}

impl Store {
    /// Opens (creating and migrating) the database and starts the writer thread.
    pub fn open(
        path: &Path,
        config: &StorageSection,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, Loaded), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut conn = open_rw(path)?;
        migrate(&mut conn, path)?;
        let loaded = load(&conn)?;
        let (tx, rx) = mpsc::channel();
        let batch = BatchWriter {
            conn,
            rx,
            config: config.clone(),
            metrics,
            retry: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || batch.run())
            .map_err(|source| StoreError::Dir {
                path: path.to_owned(),
                source,
            })?;
        Ok((
            Store {
                path: path.to_owned(),
                writer: Writer { tx },
                thread: Some(thread),
            },
            loaded,
        ))
    }

    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new read-only connection (WAL: it never blocks the writer).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        open_reader(&self.path)
    }

    /// Commits everything queued and stops the writer thread. Every other [`Writer`] must be dropped.
    pub fn close(mut self) {
        self.writer.flush(Duration::from_secs(10));
        let Store { writer, thread, .. } = &mut self;
        drop(std::mem::replace(
            writer,
            Writer {
                tx: mpsc::channel().0,
            },
        ));
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

/// A read-write connection to a database file, created and migrated when needed: for rare writes
/// outside the writer thread (the model registry, suggestions, `smarthub import`). SQLite serialises
/// them with the writer's commits (busy timeout 5 s).
pub fn open_migrated(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut conn = open_rw(path)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// A read-only connection to a database file.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Copies a live database to `dest` with SQLite's online backup API (safe while the hub writes).
pub fn backup(db: &Path, dest: &Path) -> Result<(), StoreError> {
    if !db.is_file() {
        return Err(StoreError::Open {
            path: db.to_owned(),
            source: rusqlite::Error::InvalidPath(db.to_owned()),
        });
    }
    let src = Connection::open(db).map_err(|source| StoreError::Open {
        path: db.to_owned(),
        source,
    })?;
    src.busy_timeout(Duration::from_secs(5))?;
    let mut dst = Connection::open(dest).map_err(|source| StoreError::Open {
        path: dest.to_owned(),
        source,
    })?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // One step copies every page under one read transaction: a consistent snapshot that WAL
        // lets the writer go on beside.
        backup.step(-1)?;
    }
    dst.execute_batch("PRAGMA journal_mode = DELETE;")?;
    Ok(())
}

/// A row of the `nodes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node_id: String,
    pub last_seen_ms: i64,
    /// Reading kinds the node has sent (accepted).
    pub kinds: Vec<ReadingKind>,
}

/// Every known node.
pub fn nodes(conn: &Connection) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT node_id, last_seen_ms, kinds FROM nodes ORDER BY node_id")?;
    let rows = stmt.query_map([], |r| {
        let kinds: String = r.get(2)?;
        Ok(NodeRow {
            node_id: r.get(0)?,
            last_seen_ms: r.get(1)?,
            kinds: kinds.split(',').filter_map(ReadingKind::parse).collect(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the `nodes` table knows `node_id`.
pub fn node_exists(conn: &Connection, node_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM nodes WHERE node_id = ?1", [node_id], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// Home Assistant discovery topics announced and not withdrawn: (topic, node id).
pub fn discovery_announced(conn: &Connection) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT topic, node_id FROM ha_discovery WHERE withdrawn_ms IS NULL ORDER BY topic",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Home Assistant discovery topics withdrawn at or after `since_ms`.
pub fn discovery_withdrawn(conn: &Connection, since_ms: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT topic FROM ha_discovery WHERE withdrawn_ms >= ?1 ORDER BY topic")?;
    let rows = stmt.query_map([since_ms], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts rows of a reading table (used by tests and the CLI).
pub fn count_readings(conn: &Connection, kind: ReadingKind) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {}", table(kind)), [], |r| {
        r.get(0)
    })?;
    Ok(n as u64)
}

struct BatchWriter {
    conn: Connection,
    rx: Receiver<Request>,
    config: StorageSection,
    metrics: Arc<Metrics>,
    /// Writes whose commit failed, oldest first.
    retry: VecDeque<WriteOp>,
}

#[derive(Default)]
struct NodeDelta {
    first_ms: i64,
    last_ms: i64,
    kinds: Vec<ReadingKind>,
    messages: i64,
    rejections: i64,
}

impl BatchWriter {
    fn run(mut self) {
        let interval = Duration::from_millis(self.config.commit_interval_ms);
        let mut closed = false;
        while !closed {
            let mut batch = Vec::new();
            let mut flushes = Vec::new();
            let first = if self.retry.is_empty() {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(Duration::from_secs(1))
            };
            match first {
                Ok(Request::Write(op)) => batch.push(op),
                Ok(Request::Flush(reply)) => flushes.push(reply),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
            let deadline = Instant::now() + interval;
            while batch.len() < self.config.commit_max_rows && Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(Request::Write(op)) => batch.push(op),
                    Ok(Request::Flush(reply)) => {
                        flushes.push(reply);
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let ok = self.commit(batch);
            for reply in flushes {
                let _ = reply.send(ok);
            }
        }
    }

    /// Commits retried writes then `batch`; on failure keeps them (bounded) for the next try.
    fn commit(&mut self, batch: Vec<WriteOp>) -> bool {
        if batch.is_empty() && self.retry.is_empty() {
            return true;
        }
        let mut ops: Vec<WriteOp> = self.retry.drain(..).collect();
        ops.extend(batch);
        match apply(&mut self.conn, &ops) {
            Ok(stored) => {
                for (kind, n) in stored {
                    self.metrics.stored(kind, n);
                }
                self.metrics.ingest_done(from_broker(&ops));
                if self.metrics.db_degraded.swap(false, Relaxed) {
                    tracing::info!("database writes succeed again");
                }
                self.metrics.db_retry_pending.store(0, Relaxed);
                true
            }
            Err(e) => {
                self.metrics.db_write_failures.fetch_add(1, Relaxed);
                if !self.metrics.db_degraded.swap(true, Relaxed) {
                    tracing::error!(error = %e, rows = ops.len(), "database write failed; keeping the rows to retry");
                }
                let max = self.config.retry_buffer_rows.max(1);
                let excess = ops.len().saturating_sub(max);
                if excess > 0 {
                    self.metrics.ingest_done(from_broker(&ops[..excess]));
                    self.metrics
                        .readings_dropped
                        .fetch_add(excess as u64, Relaxed);
                    tracing::error!(dropped = excess, "retry buffer full: oldest rows dropped");
                }
                self.retry.extend(ops.into_iter().skip(excess));
                self.metrics
                    .db_retry_pending
                    .store(self.retry.len() as u64, Relaxed);
                false
            }
        }
    }
}

/// Readings among `ops` that came from the broker: they count in the ingest backlog until done.
fn from_broker(ops: &[WriteOp]) -> u64 {
    ops.iter()
        .filter(|op| matches!(op, WriteOp::Reading(r) if r.source == Source::Mqtt))
        .count() as u64
}

fn apply(conn: &mut Connection, ops: &[WriteOp]) -> rusqlite::Result<Vec<(ReadingKind, u64)>> {
    let tx = conn.transaction()?;
    let mut stored = [0u64; 3];
    let mut nodes: HashMap<&str, NodeDelta> = HashMap::new();
    let mut inserts = ReadingInserts::default();
    for op in ops {
        match op {
            WriteOp::Reading(r) => {
                inserts.insert(&tx, r)?;
                stored[r.measurement.kind() as usize] += 1;
            }
            WriteOp::State {
                thing,
                payload,
                origin,
                changed_ms,
                changed,
            } => {
                tx.prepare_cached(
                    "INSERT INTO home_state (thing, payload, origin, changed_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (thing) DO UPDATE SET payload = excluded.payload, origin = excluded.origin,
                     changed_ms = excluded.changed_ms",
                )?
                .execute(params![thing.as_str(), payload, origin.as_str(), changed_ms])?;
                if *changed {
                    tx.prepare_cached(
                        "INSERT INTO state_changes (changed_ms, thing, payload, origin) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![changed_ms, thing.as_str(), payload, origin.as_str()])?;
                }
            }
            WriteOp::NodeSeen {
                node_id,
                at_ms,
                kind,
                rejected,
            } => {
                let d = nodes.entry(node_id).or_insert_with(|| NodeDelta {
                    first_ms: *at_ms,
                    ..NodeDelta::default()
                });
                d.first_ms = d.first_ms.min(*at_ms);
                d.last_ms = d.last_ms.max(*at_ms);
                if *rejected {
                    d.rejections += 1;
                } else {
                    d.messages += 1;
                }
                if let Some(k) = kind {
                    if !d.kinds.contains(k) {
                        d.kinds.push(*k);
                    }
                }
            }
            WriteOp::NodeStatus {
                node_id,
                status,
                at_ms,
            } => {
                tx.prepare_cached(
                    "INSERT INTO nodes (node_id, first_seen_ms, last_seen_ms, status) VALUES (?1, ?2, ?2, ?3)
                     ON CONFLICT (node_id) DO UPDATE SET status = excluded.status,
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
                )?
                .execute(params![node_id, at_ms, status])?;
            }
            WriteOp::ForgetNode { node_id } => {
                // Seen earlier in this batch, then forgotten: the forgetting wins.
                nodes.remove(node_id.as_str());
                tx.prepare_cached("DELETE FROM nodes WHERE node_id = ?1")?
                    .execute([node_id])?;
            }
            WriteOp::DiscoveryAnnounced {
                topic,
                node_id,
                at_ms,
            } => {
                tx.prepare_cached(
                    "INSERT INTO ha_discovery (topic, node_id, announced_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (topic) DO UPDATE SET node_id = excluded.node_id,
                     announced_ms = excluded.announced_ms, withdrawn_ms = NULL",
                )?
                .execute(params![topic, node_id, at_ms])?;
            }
            WriteOp::DiscoveryWithdrawn { topic, at_ms } => {
                tx.prepare_cached("UPDATE ha_discovery SET withdrawn_ms = ?2 WHERE topic = ?1")?
                    .execute(params![topic, at_ms])?;
            }
            WriteOp::DiscoveryPrune { before_ms } => {
                tx.prepare_cached("DELETE FROM ha_discovery WHERE withdrawn_ms < ?1")?
                    .execute([before_ms])?;
            }
            WriteOp::Prune { before_ms } => {
                for kind in ReadingKind::ALL {
                    tx.execute(
                        &format!("DELETE FROM {} WHERE measured_ms < ?1", table(kind)),
                        [before_ms],
                    )?;
                }
            }
        }
    }
    for (node_id, d) in nodes {
        let existing: Option<String> = tx
            .prepare_cached("SELECT kinds FROM nodes WHERE node_id = ?1")?
            .query_row([node_id], |r| r.get(0))
            .optional()?;
        let mut kinds: Vec<String> = existing
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for k in d.kinds {
            if !kinds.iter().any(|s| s == k.as_str()) {
                kinds.push(k.as_str().to_owned());
            }
        }
        kinds.sort();
        tx.prepare_cached(
            "INSERT INTO nodes (node_id, first_seen_ms, last_seen_ms, kinds, messages, rejections)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (node_id) DO UPDATE SET last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
             kinds = excluded.kinds, messages = messages + excluded.messages,
             rejections = rejections + excluded.rejections",
        )?
        .execute(params![
            node_id,
            d.first_ms,
            d.last_ms,
            kinds.join(","),
            d.messages,
            d.rejections
        ])?;
    }
    // The statements borrow the transaction: back to rusqlite's cache before it commits.
    drop(inserts);
    tx.commit()?;
    Ok(ReadingKind::ALL
        .into_iter()
        .map(|k| (k, stored[k as usize]))
        .filter(|(_, n)| *n > 0)
        .collect())
}

/// The INSERT statement of each reading table, prepared once per batch: taking it from rusqlite's
/// statement cache for every row (hashing its SQL text, then putting it back) cost 7 % of the hub's
/// instructions per reading under callgrind (BENCHMARKS.md, "What bounds ingest").
#[derive(Default)]
struct ReadingInserts<'t> {
    light: Option<rusqlite::CachedStatement<'t>>,
    tv: Option<rusqlite::CachedStatement<'t>>,
    climate: Option<rusqlite::CachedStatement<'t>>,
}

/// The statement in `slot`, prepared on first use.
fn prepared<'s, 't>(
    slot: &'s mut Option<rusqlite::CachedStatement<'t>>,
    tx: &'t rusqlite::Transaction,
    sql: &str,
) -> rusqlite::Result<&'s mut rusqlite::CachedStatement<'t>> {
    match slot {
        Some(stmt) => Ok(stmt),
        None => Ok(slot.insert(tx.prepare_cached(sql)?)),
    }
}

impl<'t> ReadingInserts<'t> {
    fn insert(&mut self, tx: &'t rusqlite::Transaction, r: &Reading) -> rusqlite::Result<()> {
        let label_source = r.label_source.map(|l| l.as_str());
        let common = (
            &r.node_id,
            r.measured_ms,
            r.received_ms,
            r.time.time_of_day_s,
            r.time.day_of_week,
            r.time.month,
            r.backdated,
            r.source.as_str(),
        );
        let outside = r.outside.as_ref();
        match &r.measurement {
            Measurement::Light {
                temperature,
                motion,
                light_intensity,
                active,
            } => {
                prepared(
                    &mut self.light,
                    tx,
                    "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, temperature, motion, light_intensity, active, label_source, weather)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?
                .execute(params![
                    common.0,
                    common.1,
                    common.2,
                    common.3,
                    common.4,
                    common.5,
                    common.6,
                    common.7,
                    temperature,
                    motion,
                    light_intensity,
                    active,
                    label_source,
                    outside.and_then(|o| o.description.as_deref())
                ])?;
            }
            Measurement::Tv { motion, channel } => {
                prepared(
                    &mut self.tv,
                    tx,
                    "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, motion, channel, label_source)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    common.0,
                    common.1,
                    common.2,
                    common.3,
                    common.4,
                    common.5,
                    common.6,
                    common.7,
                    motion,
                    channel,
                    label_source
                ])?;
            }
            Measurement::Climate {
                temperature,
                humidity,
                motion,
                fan_level,
            } => {
                prepared(
                    &mut self.climate,
                    tx,
                    "INSERT INTO climate_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week, month,
                     backdated, source, temperature, humidity, motion, fan_level, label_source,
                     outside_temperature, outside_humidity, outside_luminosity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )?
                .execute(params![
                    common.0,
                    common.1,
                    common.2,
                    common.3,
                    common.4,
                    common.5,
                    common.6,
                    common.7,
                    temperature,
                    humidity,
                    motion,
                    fan_level,
                    label_source,
                    outside.and_then(|o| o.temperature),
                    outside.and_then(|o| o.humidity),
                    outside.and_then(|o| o.luminosity)
                ])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readings::{parse_reading, Source};

    fn reading(i: i64) -> Reading {
        parse_reading(ReadingKind::Tv, br#"{"motion": true, "channel": 2}"#)
            .unwrap()
            .stamp("n1", 1_700_000_000_000 + i, 300, Source::Mqtt)
            .unwrap()
    }

    #[test]
    fn writes_commit_and_failures_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/smarthub.db");
        let metrics = Arc::new(Metrics::default());
        let (store, loaded) =
            Store::open(&path, &StorageSection::default(), metrics.clone()).unwrap();
        assert_eq!(loaded.hub_id.len(), 12);
        let w = store.writer();
        for i in 0..10 {
            w.send(WriteOp::Reading(Arc::new(reading(i))));
        }
        assert!(w.flush(Duration::from_secs(5)));
        assert_eq!(
            count_readings(&store.reader().unwrap(), ReadingKind::Tv).unwrap(),
            10
        );

        // Lock the database from another connection: the writer fails, keeps the rows, retries.
        let mut blocker = Connection::open(&path).unwrap();
        blocker.busy_timeout(Duration::from_millis(1)).unwrap();
        let txn = blocker
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .unwrap();
        // The writer gives up after its busy timeout, reports degraded, and keeps the row.
        w.send(WriteOp::Reading(Arc::new(reading(100))));
        let give_up = Instant::now() + Duration::from_secs(60);
        while !metrics.db_degraded.load(Relaxed) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(metrics.db_degraded.load(Relaxed));
        assert_eq!(metrics.db_retry_pending.load(Relaxed), 1);
        assert!(metrics.db_write_failures.load(Relaxed) >= 1);
        txn.rollback().unwrap();
        assert!(w.flush(Duration::from_secs(10)));
        assert!(!metrics.db_degraded.load(Relaxed));
        assert_eq!(
            count_readings(&store.reader().unwrap(), ReadingKind::Tv).unwrap(),
            11
        );
        drop(w);
        store.close();

        let (_store, again) = Store::open(&path, &StorageSection::default(), metrics).unwrap();
        assert_eq!(again.hub_id, loaded.hub_id, "the hub id is kept");
    }

    #[test]
    fn forgetting_a_node_keeps_its_readings_and_discovery_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/smarthub.db");
        let (store, _) = Store::open(
            &path,
            &StorageSection::default(),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let w = store.writer();
        let seen = |at_ms| WriteOp::NodeSeen {
            node_id: "n1".into(),
            at_ms,
            kind: Some(ReadingKind::Tv),
            rejected: false,
        };
        w.send(WriteOp::Reading(Arc::new(reading(0))));
        w.send(seen(1));
        w.send(WriteOp::DiscoveryAnnounced {
            topic: "homeassistant/sensor/a/config".into(),
            node_id: Some("n1".into()),
            at_ms: 1,
        });
        w.send(WriteOp::DiscoveryAnnounced {
            topic: "homeassistant/light/b/config".into(),
            node_id: None,
            at_ms: 1,
        });
        // Seen then forgotten in one batch: forgotten.
        w.send(WriteOp::ForgetNode {
            node_id: "n1".into(),
        });
        w.send(WriteOp::DiscoveryWithdrawn {
            topic: "homeassistant/sensor/a/config".into(),
            at_ms: 5,
        });
        assert!(w.flush(Duration::from_secs(5)));
        let conn = store.reader().unwrap();
        assert!(!node_exists(&conn, "n1").unwrap());
        assert_eq!(count_readings(&conn, ReadingKind::Tv).unwrap(), 1);
        assert_eq!(
            discovery_announced(&conn).unwrap(),
            vec![("homeassistant/light/b/config".to_owned(), None)]
        );
        assert_eq!(
            discovery_withdrawn(&conn, 0).unwrap(),
            vec!["homeassistant/sensor/a/config".to_owned()]
        );
        w.send(WriteOp::DiscoveryPrune { before_ms: 6 });
        // Forgotten then seen again: known again, with its kinds.
        w.send(seen(2));
        assert!(w.flush(Duration::from_secs(5)));
        assert!(discovery_withdrawn(&conn, 0).unwrap().is_empty());
        assert_eq!(
            nodes(&conn).unwrap(),
            vec![NodeRow {
                node_id: "n1".into(),
                last_seen_ms: 2,
                kinds: vec![ReadingKind::Tv],
            }]
        );
        drop(w);
        store.close();
    }
}
