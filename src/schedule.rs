//! Timed jobs: cron expressions (6 or 7 fields, seconds first; `0 0 0 * * *` is local midnight) run on a
//! tokio task. The clock is injected so tests can drive a schedule without waiting for midnight.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};

#[derive(Debug, thiserror::Error)]
#[error(
    "cron expression `{expr}`: {why} (6 or 7 fields, seconds first: \"0 0 0 * * *\" is midnight)"
)]
pub struct ScheduleError {
    pub expr: String,
    pub why: String,
}

/// A parsed cron schedule in local time.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    inner: cron::Schedule,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let inner = cron::Schedule::from_str(expr).map_err(|e| ScheduleError {
            expr: expr.to_owned(),
            why: e.to_string(),
        })?;
        Ok(Schedule {
            expr: expr.to_owned(),
            inner,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `now`.
    pub fn next_after(&self, now: &DateTime<Local>) -> Option<DateTime<Local>> {
        self.inner.after(now).next()
    }
}

/// Where a schedule reads the time; tests pass a fake one.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Local>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

/// Runs `job` at every fire time of `schedule` until the task is aborted. Sleeps in steps of at most
/// a minute so a changed system clock (NTP at boot on a Raspberry Pi) is noticed.
pub fn spawn<F, Fut>(
    name: &'static str,
    schedule: Schedule,
    clock: Arc<dyn Clock>,
    mut job: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            let Some(next) = schedule.next_after(&clock.now()) else {
                tracing::warn!(
                    job = name,
                    expr = schedule.expr(),
                    "schedule has no future fire time"
                );
                return;
            };
            loop {
                let now = clock.now();
                if now >= next {
                    break;
                }
                let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            }
            tracing::info!(job = name, "scheduled job starts");
            job().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn midnight_is_next_local_midnight() {
        let s = Schedule::parse("0 0 0 * * *").unwrap();
        let now = Local.with_ymd_and_hms(2026, 3, 4, 23, 59, 30).unwrap();
        let next = s.next_after(&now).unwrap();
        assert_eq!((next.hour(), next.minute(), next.second()), (0, 0, 0));
        assert!(next > now && next - now <= chrono::Duration::seconds(30));
    }

    #[test]
    fn bad_expressions_name_themselves() {
        let err = Schedule::parse("every night").unwrap_err();
        assert!(err.to_string().contains("every night"));
    }

    struct FakeClock(std::sync::Mutex<DateTime<Local>>);
    impl Clock for FakeClock {
        fn now(&self) -> DateTime<Local> {
            *self.0.lock().unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_when_the_clock_reaches_the_time() {
        let start = Local.with_ymd_and_hms(2026, 3, 4, 23, 59, 0).unwrap();
        let clock = Arc::new(FakeClock(std::sync::Mutex::new(start)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn(
            "test",
            Schedule::parse("0 0 0 * * *").unwrap(),
            clock.clone(),
            move || {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(rx.try_recv().is_err(), "not before midnight");
        *clock.0.lock().unwrap() = start + chrono::Duration::seconds(61);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(rx.try_recv().is_ok(), "fired at midnight");
        task.abort();
    }
}
