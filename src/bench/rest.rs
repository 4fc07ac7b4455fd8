//! REST: requests per second and latency for the legacy app's hot routes, 64 concurrent keep-alive
//! clients, against a hub with 7 days of simulated history and trained models (as for latency). The
//! status codes are reported as they came: a route that is not there shows 404, one without a model
//! 503, and the figures then measure that answer, not the route's work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::HttpConn;
use super::procs::{CpuMark, CpuUse, Programs};
use super::stats::{percentile, thousands, Runs};

pub const ROUTES: [&str; 2] = ["/get_light_state/", "/prediction_light/"];
pub const CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct RestRun {
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub statuses: BTreeMap<u16, u64>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestCell {
    pub route: String,
    pub runs: Vec<RestRun>,
}

impl RestCell {
    pub fn series(&self, pick: impl Fn(&RestRun) -> Option<f64>) -> Runs {
        let mut r = Runs::default();
        for run in &self.runs {
            if let Some(v) = pick(run) {
                r.push(v);
            }
        }
        r
    }

    /// Every status seen over the runs, e.g. "200" or "404 (route missing)".
    pub fn statuses(&self) -> String {
        let mut all: BTreeMap<u16, u64> = BTreeMap::new();
        for run in &self.runs {
            for (s, n) in &run.statuses {
                *all.entry(*s).or_default() += n;
            }
        }
        all.keys()
            .map(|s| match s {
                404 => "404 (route not in this build)".to_string(),
                503 => "503 (no trained model)".to_string(),
                s => s.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn one(
    addr: std::net::SocketAddr,
    route: &str,
    secs: u64,
    proc: &super::procs::Proc,
) -> anyhow::Result<RestRun> {
    let mut conns = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        conns.push(HttpConn::connect(addr).await?);
    }
    let mark = CpuMark::now(Some(proc));
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for mut conn in conns {
        let route = route.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat_ms = Vec::with_capacity(64 * 1024);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                match conn.get(&route).await {
                    Ok(r) => {
                        lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        *statuses.entry(r.status).or_default() += 1;
                    }
                    Err(_) => {
                        errors += 1;
                        match HttpConn::connect(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            (lat_ms, statuses, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (l, s, e) = t.await?;
        lat.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = mark.since(Some(proc));
    let requests = lat.len() as u64;
    Ok(RestRun {
        route: route.to_owned(),
        requests,
        errors,
        rate: requests as f64 / elapsed,
        p50_ms: percentile(&mut lat, 50.0),
        p99_ms: percentile(&mut lat, 99.0),
        statuses,
        cpu,
    })
}

pub async fn run(programs: &Programs, runs: usize, secs: u64) -> anyhow::Result<Vec<RestCell>> {
    // A hub with history and trained models, so that `/prediction_light/` has a model to answer from.
    let (mut running, _, note) = super::latency::trained_hub(programs).await?;
    eprintln!("rest: {note}");
    let addr = running
        .http
        .ok_or_else(|| anyhow::anyhow!("hub without HTTP"))?;
    let mut cells: Vec<RestCell> = ROUTES
        .iter()
        .map(|r| RestCell {
            route: (*r).to_owned(),
            runs: Vec::new(),
        })
        .collect();
    for rep in 0..runs {
        for cell in cells.iter_mut() {
            running.proc.check_alive()?;
            let r = one(addr, &cell.route, secs, &running.proc).await?;
            eprintln!(
                "rest {:<19} run {}/{runs}: {}/s, p99 {} ms, statuses {:?}, errors {}; load generator {:.2} cores, hub {:.2}, others {:.2}",
                cell.route,
                rep + 1,
                thousands(r.rate),
                r.p99_ms.map_or("?".into(), |v| format!("{v:.2}")),
                r.statuses,
                r.errors,
                r.cpu.generator,
                r.cpu.target,
                r.cpu.others,
            );
            cell.runs.push(r);
        }
    }
    running.proc.stop(Duration::from_secs(10));
    Ok(cells)
}
