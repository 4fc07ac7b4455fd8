//! Ingest: sustained readings per second, for 1, 10 and 100 publishing clients at QoS 0 and QoS 1. For the
//! hub, a reading counts once its row is committed (`smarthub_readings_stored_total`); for stock rumqttd
//! and mosquitto, once it is delivered to one subscriber. Each run publishes as fast as flow control
//! allows for a fixed time, then waits until everything accepted has arrived (or nothing moved for
//! 1.5 s); the rate is what arrived divided by the time from the first publish to the last arrival.

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
        let mut r = Runs::default();
        for run in &self.runs {
            r.push(run.rate);
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

/// Sum of the hub's stored-readings counters and its lost-messages counter.
pub async fn hub_counters(http: &mut HttpConn) -> anyhow::Result<(u64, u64)> {
    let r = http.get("/metrics").await?;
    let text = String::from_utf8_lossy(&r.body);
    let stored =
        metric_sum(&text, "smarthub_readings_stored_total").context("no stored counter")?;
    let lost = metric_sum(&text, "smarthub_messages_lost_total").unwrap_or(0);
    Ok((stored, lost))
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
        ..
    } = programs.start(target).await?;
    let base = Instant::now();
    let arrived = Arc::new(AtomicU64::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let mut sub_task = None;
    let mut hub_http = None;
    let mut stored0 = 0;
    if target == Target::Smarthub {
        let mut h = HttpConn::connect(http.context("hub without HTTP")?).await?;
        stored0 = hub_counters(&mut h).await?.0;
        hub_http = Some(h);
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
    let mut hub_lost = None;
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = Instant::now();
        let current = match hub_http.as_mut() {
            Some(h) => {
                let (stored, lost) = hub_counters(h).await?;
                hub_lost = Some(lost);
                stored - stored0
            }
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
        }
        if let Some((sent, acked)) = totals {
            let expected = if qos > 0 { acked } else { sent };
            if current >= expected || now - last_change > Duration::from_millis(1500) {
                break;
            }
        }
        if now - t0 > Duration::from_secs(secs + 90) {
            break;
        }
        proc.check_alive()?;
    }
    let cpu = mark.since(Some(&proc));
    let (sent, acked) = totals.unwrap_or_default();
    let end = match target {
        Target::Smarthub => last_change,
        _ => base + Duration::from_micros(last_us.load(Relaxed)),
    };
    let secs_taken = (end.max(t0) - t0).as_secs_f64().max(1e-3);
    let peak_rss_kib = proc.hwm_kib();
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
    let targets: Vec<Target> = [Target::Smarthub, Target::Rumqttd, Target::Mosquitto]
        .into_iter()
        .filter(|t| programs.available(*t))
        .collect();
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
                        "ingest QoS {qos} {clients:>3} clients {:<9} run {}/{runs}: {:>9}/s ({} of {} sent arrived; load generator {:.2} cores, target {:.2}, others {:.2})",
                        cell.target.name(),
                        rep + 1,
                        thousands(r.rate),
                        thousands(r.arrived as f64),
                        thousands(r.sent as f64),
                        r.cpu.generator,
                        r.cpu.target,
                        r.cpu.others,
                    );
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
