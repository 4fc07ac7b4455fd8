//! Benchmark of the legacy exports (issue 3, acceptance 4): fills a temporary database with N readings
//! per table, starts a hub on loopback, downloads each export through the real HTTP route, and reports
//! the process's resident memory before (idle) and at its peak during each download.
//!
//! ```sh
//! cargo run --release --example bench_export -- --rows 1000000
//! ```
//!
//! The database is filled by a child process (this program run with `--fill`), so the filling's
//! allocations never inflate the idle figure or hide the export's. The peak is the kernel's high-water
//! mark (`VmHWM`, reset through `/proc/self/clear_refs` before each download) and, as a cross-check,
//! `VmRSS` sampled every 5 ms. The HTTP client runs in the same process and is counted too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use smarthub::readings::TimeFeatures;

struct Args {
    rows: u64,
    dir: Option<PathBuf>,
    fill: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rows: 1_000_000,
        dir: None,
        fill: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a}: needs a value"));
        match a.as_str() {
            "--rows" => {
                args.rows = value()?
                    .parse()
                    .map_err(|e| format!("--rows: {e} (a positive integer)"))?
            }
            "--dir" => args.dir = Some(value()?.into()),
            "--fill" => args.fill = Some(value()?.into()),
            "-h" | "--help" => {
                return Err(
                    "usage: bench_export [--rows N] [--dir DIR (kept; default: a temp dir)]".into(),
                )
            }
            other => return Err(format!("{other}: unknown argument (try --help)")),
        }
    }
    Ok(args)
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

const WEATHER: [&str; 6] = [
    "clear sky",
    "few clouds",
    "scattered clouds",
    "broken clouds",
    "dust",
    "light rain",
];

/// Child process: creates the schema (through the store) and inserts `rows` readings per table,
/// one every 30 s (1M rows ≈ 347 days: a year of readings).
fn fill(db: &Path, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (store, _) = smarthub::store::Store::open(
        db,
        &Default::default(),
        Arc::new(smarthub::metrics::Metrics::default()),
    )?;
    store.close();
    let mut conn = Connection::open(db)?;
    conn.execute_batch("PRAGMA synchronous = OFF;")?;
    let start_ms = 1_700_000_000_000i64;
    let tx = conn.transaction()?;
    {
        let mut light = tx.prepare(
            "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
             month, backdated, source, temperature, motion, light_intensity, active, label_source, weather)
             VALUES ('livingroom', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut tv = tx.prepare(
            "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
             month, backdated, source, motion, channel, label_source)
             VALUES ('livingroom', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?5, ?6, ?7)",
        )?;
        let mut climate = tx.prepare(
            "INSERT INTO climate_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
             month, backdated, source, temperature, humidity, motion, fan_level, label_source,
             outside_temperature, outside_humidity, outside_luminosity)
             VALUES ('livingroom', ?1, ?1, ?2, ?3, ?4, 0, 'mqtt', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for i in 0..rows as i64 {
            let at = start_ms + i * 30_000 + i % 1000;
            let t = TimeFeatures::from_ms(at);
            let labelled = i % 50 != 0;
            let active = labelled.then_some(i % 3 != 1);
            light.execute(params![
                at,
                t.time_of_day_s,
                t.day_of_week,
                t.month,
                15.0 + (i % 200) as f64 * 0.1,
                i % 3 == 0,
                ((i * 37) % 2000) as f64,
                active,
                active.map(|_| "node"),
                WEATHER[(i % 6) as usize],
            ])?;
            let channel = labelled.then_some(i % 7);
            tv.execute(params![
                at,
                t.time_of_day_s,
                t.day_of_week,
                t.month,
                i % 4 == 0,
                channel,
                channel.map(|_| "state"),
            ])?;
            let fan = labelled.then_some(i % 4);
            let outside = (i % 10 != 0).then_some((
                10.0 + (i % 250) as f64 * 0.1,
                20.0 + (i % 70) as f64,
                10000.0,
            ));
            climate.execute(params![
                at,
                t.time_of_day_s,
                t.day_of_week,
                t.month,
                18.0 + (i % 150) as f64 * 0.1,
                30.0 + (i % 60) as f64,
                i % 5 == 0,
                fan,
                fan.map(|_| "node"),
                outside.map(|o| o.0),
                outside.map(|o| o.1),
                outside.map(|o| o.2),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

struct Measured {
    route: &'static str,
    bytes: u64,
    first_byte_s: f64,
    seconds: f64,
    peak_kib: u64,
    sampled_peak_kib: u64,
    after_kib: u64,
    lines: u64,
    truncated: bool,
}

async fn download(base: &str, route: &'static str) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, sampled) = (stop.clone(), sampled.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sampled.fetch_max(memory_kib().0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    assert!(reset_peak(), "cannot reset VmHWM (/proc/self/clear_refs)");
    let started = Instant::now();
    let mut resp = reqwest::get(format!("{base}{route}")).await.expect("GET");
    assert_eq!(resp.status(), 200, "{route}");
    // The response head leaves with the first chunk of the body.
    let first_byte_s = started.elapsed().as_secs_f64();
    let truncated = resp.headers().contains_key("x-export-truncated");
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = resp.chunk().await.expect("body") {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (after_kib, peak_kib) = memory_kib();
    Measured {
        route,
        bytes,
        first_byte_s,
        seconds,
        peak_kib,
        sampled_peak_kib: sampled.load(Ordering::Relaxed),
        after_kib,
        lines,
        truncated,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_export: {e}");
            std::process::exit(2);
        }
    };
    if let Some(db) = args.fill {
        if let Err(e) = fill(&db, args.rows) {
            eprintln!("bench_export --fill {}: {e}", db.display());
            std::process::exit(1);
        }
        return;
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().expect("temp dir");
            temp.path().to_owned()
        }
    };
    let db = smarthub::database_path(&dir);
    if db.exists() {
        eprintln!("bench_export: {} exists; give an empty --dir", db.display());
        std::process::exit(2);
    }
    let rows = args.rows;
    eprintln!("filling {} with {rows} readings per table…", db.display());
    let started = Instant::now();
    let status = Command::new(std::env::current_exe().expect("own path"))
        .args(["--fill".as_ref(), db.as_os_str()])
        .args(["--rows", &rows.to_string()])
        .status()
        .expect("start the filling child process");
    assert!(status.success(), "filling failed");
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    eprintln!(
        "filled in {:.1} s ({db_mib:.0} MiB)",
        started.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut config = smarthub::config::Config::default_config();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        config
            .set_mqtt_listen(format!("127.0.0.1:{port}").parse().unwrap())
            .unwrap();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        let hub = smarthub::Hub::start(config, &dir).await.expect("hub starts");
        let base = format!("http://{}", hub.http_addr);
        // Let the hub settle (threads started, first allocations made), then take the idle figure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle_kib, _) = memory_kib();

        let mut results = Vec::new();
        for route in [
            "/download_csv/",
            "/download_csv_tv/",
            "/download_csv_wether/",
            "/download_excel/",
        ] {
            eprintln!("GET {route}…");
            results.push(download(&base, route).await);
        }

        println!();
        println!("rows per table: {rows}; database {db_mib:.0} MiB; idle RSS {:.1} MiB", mib(idle_kib));
        println!();
        println!("| route | file size | first byte | time | rows/s | peak RSS (VmHWM) | peak − idle | sampled peak | RSS after |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for m in &results {
            let is_csv = m.route.contains("csv");
            if is_csv {
                assert_eq!(m.lines, rows + 1, "{}: header + one line per row", m.route);
            }
            let exported = if m.truncated { 1_048_575 } else { rows };
            println!(
                "| `{}` | {:.1} MiB | {:.2} s | {:.2} s | {:.0} | {:.1} MiB | **{:.1} MiB** | {:.1} MiB | {:.1} MiB |",
                m.route,
                m.bytes as f64 / 1048576.0,
                m.first_byte_s,
                m.seconds,
                exported as f64 / m.seconds,
                mib(m.peak_kib),
                mib(m.peak_kib.max(m.sampled_peak_kib).saturating_sub(idle_kib)),
                mib(m.sampled_peak_kib),
                mib(m.after_kib),
            );
        }
        let worst = results
            .iter()
            .map(|m| m.peak_kib.max(m.sampled_peak_kib).saturating_sub(idle_kib))
            .max()
            .unwrap_or(0);
        println!();
        println!(
            "largest peak above idle: {:.1} MiB (goal: under 64 MB) — {}",
            mib(worst),
            if worst * 1024 < 64_000_000 { "met" } else { "MISSED" }
        );
        hub.shutdown().await;
    });
}
