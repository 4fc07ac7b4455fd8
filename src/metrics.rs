//! Counters shared by every part of the hub, rendered as Prometheus text on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Instant;

use crate::home::Thing;
use crate::readings::{ReadingKind, Reason};

/// Every counter and gauge of the hub.
#[derive(Debug)]
pub struct Metrics {
    readings_stored: [AtomicU64; 3],
    rejected: [AtomicU64; 7],
    commands: [AtomicU64; 6],
    pub messages_received: AtomicU64,
    pub messages_lost: AtomicU64,
    pub db_write_failures: AtomicU64,
    pub readings_dropped: AtomicU64,
    /// Rows waiting in the writer's retry buffer.
    pub db_retry_pending: AtomicU64,
    pub db_degraded: AtomicBool,
    /// MQTT messages taken from the broker and not yet finished: queued for the engine, or accepted
    /// readings not yet committed (or still waiting to be retried). See [`crate::broker::spawn_drainer`].
    pub ingest_backlog: AtomicU64,
    /// Times the drain thread stopped reading the broker because the backlog was full.
    pub ingest_stalls: AtomicU64,
    /// Times the MQTT connections were held back because the backlog was full.
    pub ingest_holds: AtomicU64,
    /// Set when the engine stops, so that a drain thread waiting for room gives up.
    pub ingest_closed: AtomicBool,
    pub started: Instant,
    /// Active model per target: (target, validated accuracy, trained at, unix ms).
    models: RwLock<Vec<(String, f64, i64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            readings_stored: Default::default(),
            rejected: Default::default(),
            commands: Default::default(),
            messages_received: AtomicU64::new(0),
            messages_lost: AtomicU64::new(0),
            db_write_failures: AtomicU64::new(0),
            readings_dropped: AtomicU64::new(0),
            db_retry_pending: AtomicU64::new(0),
            db_degraded: AtomicBool::new(false),
            ingest_backlog: AtomicU64::new(0),
            ingest_stalls: AtomicU64::new(0),
            ingest_holds: AtomicU64::new(0),
            ingest_closed: AtomicBool::new(false),
            started: Instant::now(),
            models: RwLock::new(Vec::new()),
        }
    }
}

fn kind_index(kind: ReadingKind) -> usize {
    ReadingKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0)
}

fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

impl Metrics {
    /// `n` messages of the ingest backlog are finished (committed, refused, or dropped and counted).
    pub fn ingest_done(&self, n: u64) {
        if n > 0 {
            // Saturating: a reading the gate did not count must not wrap the gauge.
            let _ = self
                .ingest_backlog
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        }
    }

    pub fn stored(&self, kind: ReadingKind, n: u64) {
        self.readings_stored[kind_index(kind)].fetch_add(n, Relaxed);
    }

    pub fn stored_total(&self, kind: ReadingKind) -> u64 {
        self.readings_stored[kind_index(kind)].load(Relaxed)
    }

    pub fn rejected(&self, reason: Reason) {
        self.rejected[reason_index(reason)].fetch_add(1, Relaxed);
    }

    pub fn rejected_total(&self, reason: Reason) -> u64 {
        self.rejected[reason_index(reason)].load(Relaxed)
    }

    pub fn command(&self, thing: Thing) {
        self.commands[thing as usize].fetch_add(1, Relaxed);
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records the active model of a target (its cross-validated accuracy and training time).
    pub fn set_model(&self, target: &str, accuracy: f64, trained_at_ms: i64) {
        if let Ok(mut m) = self.models.write() {
            m.retain(|(t, _, _)| t != target);
            m.push((target.to_owned(), accuracy, trained_at_ms));
            m.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }

    fn render_models(&self, out: &mut String) {
        let models = self.models.read().map(|m| m.clone()).unwrap_or_default();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let _ = writeln!(
            out,
            "# HELP smarthub_model_accuracy Cross-validated accuracy of the active model, by target.\n# TYPE smarthub_model_accuracy gauge"
        );
        for (t, acc, _) in &models {
            let _ = writeln!(out, "smarthub_model_accuracy{{target=\"{t}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "# HELP smarthub_model_age_seconds Seconds since the active model was trained, by target.\n# TYPE smarthub_model_age_seconds gauge"
        );
        for (t, _, at) in &models {
            let age = (now_ms - at).max(0) / 1000;
            let _ = writeln!(out, "smarthub_model_age_seconds{{target=\"{t}\"}} {age}");
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, mqtt_clients: Option<u64>) -> String {
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "smarthub_readings_stored_total",
            "counter",
            "Readings committed to the database, by kind.",
            ReadingKind::ALL
                .iter()
                .map(|k| {
                    (
                        format!("{{kind=\"{}\"}}", k.as_str()),
                        self.stored_total(*k),
                    )
                })
                .collect(),
        );
        family(
            "smarthub_messages_rejected_total",
            "counter",
            "Messages and requests refused, by reason.",
            Reason::ALL
                .iter()
                .map(|r| {
                    (
                        format!("{{reason=\"{}\"}}", r.as_str()),
                        self.rejected_total(*r),
                    )
                })
                .collect(),
        );
        family(
            "smarthub_commands_total",
            "counter",
            "Commands executed, by thing.",
            Thing::ALL
                .iter()
                .map(|t| {
                    (
                        format!("{{thing=\"{}\"}}", t.as_str()),
                        self.commands[*t as usize].load(Relaxed),
                    )
                })
                .collect(),
        );
        let plain = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        family(
            "smarthub_messages_received_total",
            "counter",
            "MQTT messages the engine received under the base topic.",
            plain(&self.messages_received),
        );
        family(
            "smarthub_messages_lost_total",
            "counter",
            "Messages the broker acknowledged but dropped from its log before the hub read them.",
            plain(&self.messages_lost),
        );
        family(
            "smarthub_db_write_failures_total",
            "counter",
            "Database commits that failed (they are retried).",
            plain(&self.db_write_failures),
        );
        family(
            "smarthub_readings_dropped_total",
            "counter",
            "Rows that could not be kept because the retry buffer was full.",
            plain(&self.readings_dropped),
        );
        family(
            "smarthub_db_retry_pending",
            "gauge",
            "Rows waiting to be retried after a failed write.",
            plain(&self.db_retry_pending),
        );
        family(
            "smarthub_ingest_backlog",
            "gauge",
            "MQTT messages read from the broker and not yet committed (bounded by [hub] ingest_backlog).",
            plain(&self.ingest_backlog),
        );
        family(
            "smarthub_ingest_stalls_total",
            "counter",
            "Times the hub stopped reading the broker because its ingest backlog was full.",
            plain(&self.ingest_stalls),
        );
        family(
            "smarthub_ingest_holds_total",
            "counter",
            "Times the hub held the MQTT connections back (publishers wait) because its ingest backlog was full.",
            plain(&self.ingest_holds),
        );
        if let Some(n) = mqtt_clients {
            family(
                "smarthub_mqtt_clients_connected",
                "gauge",
                "Established TCP connections to the MQTT listeners.",
                vec![(String::new(), n)],
            );
        }
        family(
            "smarthub_uptime_seconds",
            "gauge",
            "Seconds since the hub started.",
            vec![(String::new(), self.uptime_s())],
        );
        self.render_models(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.stored(ReadingKind::Tv, 3);
        m.rejected(Reason::FutureTs);
        let text = m.render(Some(2));
        assert!(text.contains("smarthub_readings_stored_total{kind=\"tv\"} 3"));
        assert!(text.contains("smarthub_messages_rejected_total{reason=\"future_ts\"} 1"));
        assert!(text.contains("smarthub_mqtt_clients_connected 2"));
        assert!(text.contains("smarthub_db_write_failures_total 0"));
        assert!(text.contains("smarthub_commands_total{thing=\"light\"} 0"));
    }
}
