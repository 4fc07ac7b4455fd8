//! Ingest: sustained readings per second, for 1, 10 and 100 publishing clients at QoS 0 and QoS 1. For the
//! hub, a reading counts once its row is committed: the bench reads the highest row id of each reading
//! table through its own read-only SQLite connection (WAL: it never blocks the writer). Polling the hub's
//! `/metrics` instead would perturb it: rendering it reads `/proc/net/tcp`, and at 40 polls/s that took
//! 15 % of the hub's CPU in a profile. For stock rumqttd
//! and mosquitto, once it is delivered to one subscriber. Each run publishes as fast as flow control
//! allows for a fixed time, then waits until everything accepted has arrived (or nothing moved for 1 s,
//! or [`DRAIN`] passed); the rate is what arrived divided by the time from the first publish to the last
//! arrival.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use smarthub::simulate::{Habits, SimNode};

use super::http::{metric_sum, HttpConn};
use super::mqtt::{publish_until, Conn, Message, Pace};
use super::procs::{CpuMark, CpuUse, Programs, Running, Target};
use super::stats::{thousands, Runs};

/// How long a run waits, after the publishers stop, for what they sent to arrive.
pub const DRAIN: Duration = Duration::from_secs(3);

/// QoS 1 publishes in flight per client (rumqttd's default `max_inflight_count` is 100).
pub const WINDOW: u64 = 100;

/// One run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    pub target: Target,
    pub clients: usize,
    pub qos: u8,
    pub sent: u64,
    pub acked: u64,
    /// Rows committed (hub) or messages delivered to the subscriber (brokers).
    pub arrived: u64,
    /// Seconds from the first publish to the last arrival.
    pub secs: f64,
    pub rate: f64,
    /// What the broker accepted per second of publishing (QoS 1: acknowledged; QoS 0: written).
    pub accepted_rate: f64,
    /// Cores used by each of the hub's threads over the run, busiest first (smarthub only).
    pub hub_threads: Vec<(String, f64)>,
    /// The hub's `smarthub_messages_lost_total` (dropped from rumqttd's log before the hub read them).
    pub hub_lost: Option<u64>,
    pub cpu: CpuUse,
    pub peak_rss_kib: Option<u64>,
}

/// All runs of one (target, clients, QoS).
#[derive(Debug, Clone, Serialize)]
pub struct IngestCell {
    pub target: Target,
    pub clients: usize,
    pub qos: u8,
    pub runs: Vec<IngestRun>,
}

impl IngestCell {
    pub fn rates(&self) -> Runs {
        self.series(|run| run.rate)
    }

    /// One figure of every run.
    pub fn series(&self, pick: impl Fn(&IngestRun) -> f64) -> Runs {
        let mut r = Runs::default();
        for run in &self.runs {
            r.push(pick(run));
        }
        r
    }
}

/// Realistic readings from the simulator's household, on topics of three nodes (one per kind) behind
/// publishing client `client`: a gateway forwarding for its nodes, so every client count sees the same
/// mix of kinds.
pub fn messages_for(client: usize, per_kind: usize) -> Arc<Vec<Message>> {
    let habits = Habits::new(42);
    let mut nodes: Vec<SimNode> = (0..3).map(|k| SimNode::new(client * 3 + k, 42)).collect();
    let day_ms = 86_400_000 / per_kind.max(1) as i64;
    let mut out = Vec::with_capacity(per_kind * 3);
    for i in 0..per_kind {
        for node in nodes.iter_mut() {
            let at = 1_700_000_000_000 + i as i64 * day_ms;
            let id = format!("bench-{client}-{}", node.kind.as_str());
            out.push(Message {
                topic: format!("smarthub/nodes/{id}/{}", node.kind.as_str()).into_bytes(),
                payload: node.payload(&habits, at, false),
            });
        }
    }
    Arc::new(out)
}

/// The hub's `smarthub_messages_lost_total`.
pub async fn hub_lost(http: std::net::SocketAddr) -> anyhow::Result<u64> {
    let r = HttpConn::connect(http).await?.get("/metrics").await?;
    let text = String::from_utf8_lossy(&r.body);
    metric_sum(&text, "smarthub_messages_lost_total").context("no lost-messages counter")
}

/// Rows committed so far: the highest row id of each reading table (rows are only appended here).
fn committed_rows(db: &rusqlite::Connection) -> anyhow::Result<u64> {
    let n: i64 = db.query_row(
        "SELECT (SELECT IFNULL(MAX(id), 0) FROM light_readings) + (SELECT IFNULL(MAX(id), 0) FROM tv_readings) \
         + (SELECT IFNULL(MAX(id), 0) FROM climate_readings)",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

async fn one(
    programs: &Programs,
    target: Target,
    clients: usize,
    qos: u8,
    secs: u64,
) -> anyhow::Result<IngestRun> {
    let Running {
        mut proc,
        mqtt,
        http,
        dir,
    } = programs.start(target).await?;
    let base = Instant::now();
    let arrived = Arc::new(AtomicU64::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let mut sub_task = None;
    let mut hub_db = None;
    let mut stored0 = 0;
    if target.is_hub() {
        let db = smarthub::store::open_reader(&smarthub::database_path(&dir))?;
        stored0 = committed_rows(&db)?;
        hub_db = Some(db);
    } else {
        let mut c = Conn::connect(mqtt, "bench-subscriber", 60).await?;
        c.subscribe(&["smarthub/nodes/#"], qos).await?;
        let (reader, wr) = c.into_split();
        let (arrived, last_us) = (arrived.clone(), last_us.clone());
        sub_task = Some(tokio::spawn(async move {
            let _ = reader
                // The write half must stay open even at QoS 0: dropping it half-closes the socket,
                // and brokers take that as a disconnect.
                .run(
                    Some(wr),
                    |t, _| {
                        arrived.fetch_add(1, Relaxed);
                        last_us.store((t - base).as_micros() as u64, Relaxed);
                    },
                    |_| {},
                )
                .await;
        }));
    }
    let mut conns = Vec::with_capacity(clients);
    let mut connecting = Vec::with_capacity(clients);
    for i in 0..clients {
        connecting.push(tokio::spawn(async move {
            Conn::connect(mqtt, &format!("bench-pub-{i}"), 60).await
        }));
    }
    for c in connecting {
        conns.push(c.await??);
    }
    let sent_total = Arc::new(AtomicU64::new(0));
    let threads0 = proc.threads_cpu_s();
    let mark = CpuMark::now(Some(&proc));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let mut publishers = Vec::with_capacity(clients);
    for (i, conn) in conns.into_iter().enumerate() {
        let messages = messages_for(i, 100);
        publishers.push(tokio::spawn(publish_until(
            conn,
            messages,
            qos,
            WINDOW,
            Pace::Flat,
            until,
            sent_total.clone(),
        )));
    }
    let mut last_value = 0;
    let mut last_change = t0;
    let mut totals = None;
    let mut published_at = until;
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = Instant::now();
        let current = match hub_db.as_ref() {
            Some(db) => committed_rows(db)? - stored0,
            None => arrived.load(Relaxed),
        };
        if current > last_value {
            last_value = current;
            last_change = now;
        }
        if totals.is_none() && publishers.iter().all(|p| p.is_finished()) {
            let (mut sent, mut acked) = (0, 0);
            for p in publishers.drain(..) {
                let r = p.await??;
                sent += r.sent;
                acked += r.acked;
            }
            totals = Some((sent, acked));
            published_at = now;
        }
        if let Some((sent, acked)) = totals {
            let expected = if qos > 0 { acked } else { sent };
            // Done when everything accepted arrived, when nothing moves any more, or after a bounded
            // drain: what arrives later (a backlog or a trickle out of socket buffers) is not sustained
            // throughput, and the suite must stay within its time budget.
            if current >= expected
                || now - last_change > Duration::from_millis(1000)
                || now - published_at > DRAIN
            {
                break;
            }
        }
        if now - t0 > Duration::from_secs(secs + 30) {
            break;
        }
        proc.check_alive()?;
    }
    let cpu = mark.since(Some(&proc));
    let wall = t0.elapsed().as_secs_f64();
    let mut hub_threads: Vec<(String, f64)> = if target.is_hub() {
        proc.threads_cpu_s()
            .into_iter()
            .map(|(name, cpu)| {
                let before = threads0.get(&name).copied().unwrap_or(0.0);
                (name, (cpu - before) / wall)
            })
            .filter(|(_, cores)| *cores >= 0.005)
            .collect()
    } else {
        Vec::new()
    };
    hub_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (sent, acked) = totals.unwrap_or_default();
    let end = match target {
        t if t.is_hub() => last_change,
        _ => base + Duration::from_micros(last_us.load(Relaxed)),
    };
    let secs_taken = (end.max(t0) - t0).as_secs_f64().max(1e-3);
    let peak_rss_kib = proc.hwm_kib();
    let hub_lost = match (target, http) {
        (t, Some(http)) if t.is_hub() => Some(hub_lost(http).await?),
        _ => None,
    };
    if let Some(t) = sub_task {
        t.abort();
    }
    proc.stop(Duration::from_secs(10));
    Ok(IngestRun {
        target,
        clients,
        qos,
        sent,
        acked,
        arrived: last_value,
        secs: secs_taken,
        rate: last_value as f64 / secs_taken,
        accepted_rate: if qos > 0 { acked } else { sent } as f64 / secs as f64,
        hub_threads,
        hub_lost,
        cpu,
        peak_rss_kib,
    })
}

/// Every (QoS, clients) cell for every available target; the targets take turns within each
/// repetition so that a burst of load from other processes hits all of them alike.
pub async fn run(
    programs: &Programs,
    runs: usize,
    secs: u64,
    client_counts: &[usize],
) -> anyhow::Result<Vec<IngestCell>> {
    let targets = programs.targets();
    let mut cells = Vec::new();
    for qos in [1u8, 0] {
        for &clients in client_counts {
            let mut by_target: Vec<IngestCell> = targets
                .iter()
                .map(|&target| IngestCell {
                    target,
                    clients,
                    qos,
                    runs: Vec::new(),
                })
                .collect();
            for rep in 0..runs {
                for cell in by_target.iter_mut() {
                    let r = one(programs, cell.target, clients, qos, secs)
                        .await
                        .with_context(|| {
                            format!("ingest {} QoS {qos} {clients} clients", cell.target.name())
                        })?;
                    eprintln!(
                        "ingest QoS {qos} {clients:>3} clients {:<15} run {}/{runs}: {:>9}/s ({} of {} sent arrived; load generator {:.2} cores, target {:.2}, others {:.2})",
                        cell.target.name(),
                        rep + 1,
                        thousands(r.rate),
                        thousands(r.arrived as f64),
                        thousands(r.sent as f64),
                        r.cpu.generator,
                        r.cpu.target,
                        r.cpu.others,
                    );
                    if !r.hub_threads.is_empty() {
                        let threads: Vec<String> = r
                            .hub_threads
                            .iter()
                            .map(|(n, c)| format!("{n} {c:.2}"))
                            .collect();
                        eprintln!("    hub threads (cores): {}", threads.join(", "));
                    }
                    cell.runs.push(r);
                }
            }
            cells.extend(by_target);
        }
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smarthub::readings::ReadingKind;

    #[test]
    fn messages_mix_the_three_kinds_with_valid_payloads() {
        let m = messages_for(7, 10);
        assert_eq!(m.len(), 30);
        for msg in m.iter() {
            let topic = String::from_utf8(msg.topic.clone()).unwrap();
            let kind = ReadingKind::parse(topic.rsplit('/').next().unwrap()).unwrap();
            smarthub::readings::parse_reading(kind, &msg.payload).unwrap();
            assert!(topic.starts_with("smarthub/nodes/bench-7-"));
        }
    }
}
