//! `smarthub bench` (hidden; run it through `bench/run.sh`): the hub's performance against stock rumqttd
//! 0.20.0 and Debian's mosquitto, on loopback, as BENCHMARKS.md reports it. Part of the binary, not of
//! the library: it is a tool that starts processes (the hub itself, the reference brokers, a process of
//! idle clients), drives them with a load generator of its own, and writes a Markdown report.
//!
//! Sections: ingest (1, 10, 100 publishing clients × QoS 0/1), latency (publish → prediction, or
//! publish → state when no model is trained), 10,000 idle connections and memory, REST. Every figure is
//! the median of `--runs` runs with the spread (min–max), and every table says how much CPU the load
//! generator and the rest of the machine used meanwhile: the machine is shared.

mod connections;
mod http;
mod ingest;
mod latency;
mod mqtt;
mod procs;
mod rest;
mod stats;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

use procs::{Programs, Target};
use stats::{thousands, Runs};

/// The sections `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Ingest,
    Latency,
    Connections,
    Rest,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub tool: Option<Tool>,
    /// Stock rumqttd 0.20.0 (bench/run.sh installs it in target/bench-tools/bin). Without it the
    /// rumqttd columns are left out.
    #[arg(long, value_name = "FILE")]
    pub rumqttd: Option<PathBuf>,
    /// Debian's mosquitto (bench/run.sh installs it with apt-get). Default: `mosquitto` on PATH or in
    /// /usr/sbin. Without it the mosquitto columns are left out.
    #[arg(long, value_name = "FILE")]
    pub mosquitto: Option<PathBuf>,
    /// Runs per figure (the report shows their median and spread).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of load per ingest and REST run.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Seconds of load per latency run.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Idle MQTT clients in the connections section.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Publishing clients in the ingest section.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub publishers: Vec<usize>,
    /// Brokers to measure (comma-separated); the hub is the one the goals are about. `smarthub-unheld`
    /// is the hub with its backpressure off (`[hub] ingest_pause_max_ms = 0`, `broker_nice = 0`),
    /// measured in the ingest section only, for the backpressure table.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "smarthub,rumqttd,mosquitto,smarthub-unheld"
    )]
    pub targets: Vec<Target>,
    /// Sections to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,latency,connections,rest"
    )]
    pub only: Vec<Section>,
    /// Run the hub under this command, e.g. "perf record -g -o target/bench/perf.data --" or
    /// "valgrind --tool=callgrind --callgrind-out-file=target/bench/callgrind.out" (split at spaces).
    /// Figures taken this way measure the profiler too.
    #[arg(long, value_name = "CMD")]
    pub hub_wrapper: Option<String>,
    /// Where the report (hub-performance.md), raw results (results.json) and scratch files go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// (internal) Connect idle MQTT clients, report on stdout, hold them until stdin closes.
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 300)]
        keep_alive_s: u16,
    },
}

/// Removes the scratch directory (databases, broker configs and logs) when the suite ends either way.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Default, Serialize)]
struct Machine {
    cores: usize,
    model: String,
    kernel: String,
    load_start: String,
    load_end: String,
    build: String,
    commit: String,
    rumqttd: String,
    mosquitto: String,
    started_utc: String,
    fd_limit: u64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    command: String,
    runs: usize,
    secs: u64,
    latency_secs: u64,
    machine: Machine,
    ingest: Vec<ingest::IngestCell>,
    latency: Option<latency::LatencyResult>,
    connections: Vec<connections::ConnectionsCell>,
    clients: usize,
    rest: Vec<rest::RestCell>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    let lscpu = Command::new("lscpu").output().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Model name:").map(|v| v.trim().to_owned()))
    });
    lscpu
        .or_else(|| {
            std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn find_mosquitto(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
    })
}

/// Entry point of `smarthub bench`.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(Tool::IdleClients {
        addr,
        clients,
        keep_alive_s,
    }) = args.tool
    {
        return connections::idle_clients(addr, clients, keep_alive_s);
    }
    if args.runs == 0 || args.secs == 0 || args.latency_secs == 0 {
        bail!("--runs, --secs and --latency-secs must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("smarthub bench: WARNING: this is a debug build; its figures mean nothing. Use bench/run.sh (release build).");
    }
    let fd_limit = procs::raise_fd_limit();
    if args.only.contains(&Section::Connections) && (fd_limit as usize) < args.clients + 1024 {
        bail!(
            "the open-file limit is {fd_limit}: {} idle clients need at least {} (run `ulimit -n {}` first, or use --clients)",
            args.clients,
            args.clients + 1024,
            args.clients + 1024
        );
    }
    let rumqttd = match args.rumqttd.clone() {
        Some(p) if p.is_file() => Some(p),
        Some(p) => bail!(
            "--rumqttd {}: no such file (bench/run.sh installs it)",
            p.display()
        ),
        None => Some(default_rumqttd(Path::new("."))).filter(|p| p.is_file()),
    };
    // The processes run in their own scratch directories: relative paths would not resolve there.
    let rumqttd = rumqttd.map(|p| p.canonicalize().unwrap_or(p));
    let mosquitto = find_mosquitto(args.mosquitto.clone()).map(|p| p.canonicalize().unwrap_or(p));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let scratch_dir = args.out.join(format!("scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch_dir)?;
    let scratch = Scratch(scratch_dir.canonicalize()?);
    let programs = Programs {
        smarthub: std::env::current_exe().context("cannot find the smarthub binary")?,
        rumqttd: rumqttd.clone(),
        mosquitto: mosquitto.clone(),
        scratch: scratch.0.clone(),
        hub_wrapper: args
            .hub_wrapper
            .as_deref()
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        only: args.targets.clone(),
    };
    let machine = Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        model: cpu_model(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        load_start: loadavg(),
        build: if cfg!(debug_assertions) {
            "DEBUG (figures meaningless)"
        } else {
            "release"
        }
        .into(),
        commit: first_line("git", &["describe", "--always", "--dirty"]),
        rumqttd: rumqttd
            .as_ref()
            .map(|p| first_line(&p.to_string_lossy(), &["--version"]))
            .unwrap_or_else(|| "not installed: left out".into()),
        mosquitto: mosquitto
            .as_ref()
            .map(|p| first_line(&p.to_string_lossy(), &["-h"]))
            .unwrap_or_else(|| "not installed: left out".into()),
        started_utc: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        fd_limit,
        ..Machine::default()
    };
    let mut report = Report {
        command: std::env::var("SMARTHUB_BENCH_COMMAND").unwrap_or_else(|_| "bench/run.sh".into()),
        runs: args.runs,
        secs: args.secs,
        latency_secs: args.latency_secs,
        machine,
        clients: args.clients,
        ..Report::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    rt.block_on(async {
        let suite = async {
            if args.only.contains(&Section::Ingest) {
                report.ingest = ingest::run(&programs, args.runs, args.secs, &args.publishers).await?;
            }
            if args.only.contains(&Section::Latency) {
                report.latency = Some(latency::run(&programs, args.runs, args.latency_secs).await?);
            }
            if args.only.contains(&Section::Connections) {
                report.connections = connections::run(&programs, args.runs, args.clients).await?;
            }
            if args.only.contains(&Section::Rest) {
                report.rest = rest::run(&programs, args.runs, args.secs).await?;
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = suite => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; every process it started is stopped"),
        }
    })?;
    report.machine.load_end = loadavg();
    let md = render(&report, started.elapsed().as_secs());
    let md_path = args.out.join("hub-performance.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("{md}");
    eprintln!(
        "smarthub bench: report in {}, raw results in {}",
        md_path.display(),
        json_path.display()
    );
    drop(scratch);
    Ok(())
}

fn mb(kib: f64) -> String {
    format!("{:.1}", kib * 1024.0 / 1e6)
}

fn cores(v: f64) -> String {
    format!("{v:.2}")
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// Per-repetition ratios of two cells' rates (their runs alternate, so run i of one matches run i of the
/// other in time).
fn ratios(a: &ingest::IngestCell, b: &ingest::IngestCell) -> Runs {
    let mut r = Runs::default();
    for (x, y) in a.runs.iter().zip(&b.runs) {
        if y.rate > 0.0 {
            r.push(x.rate / y.rate);
        }
    }
    r
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

/// One CPU figure over every run of every section.
fn all_cpu(r: &Report, pick: impl Fn(&procs::CpuUse) -> f64) -> Runs {
    let mut x = Runs::default();
    let runs = r.ingest.iter().flat_map(|c| c.runs.iter().map(|x| x.cpu));
    let latency = r.latency.iter().flat_map(|l| l.runs.iter().map(|x| x.cpu));
    let rest = r.rest.iter().flat_map(|c| c.runs.iter().map(|x| x.cpu));
    for c in runs.chain(latency).chain(rest) {
        x.push(pick(&c));
    }
    x
}

/// The hub as shipped against the same build with its backpressure off, cell by cell.
fn backpressure_table(o: &mut String, r: &Report) {
    let pairs: Vec<(&ingest::IngestCell, &ingest::IngestCell)> = r
        .ingest
        .iter()
        .filter(|c| c.target == Target::Smarthub)
        .filter_map(|held| {
            r.ingest
                .iter()
                .find(|c| {
                    c.target == Target::SmarthubUnheld
                        && c.qos == held.qos
                        && c.clients == held.clients
                })
                .map(|unheld| (held, unheld))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nBackpressure: the hub as shipped against the same build started with `[hub] ingest_pause_max_ms = 0` and \
         `broker_nice = 0` (`smarthub-unheld`: it stops reading the broker when its backlog is full, but neither holds \
         the connections back nor lowers their priority). Same load, runs taking turns.\n\n| QoS | clients | \
         persisted/s (shipped) | persisted/s (unheld) | accepted/s (shipped) | accepted/s (unheld) | lost from the \
         broker's log (shipped) | lost (unheld) | peak RSS MB (shipped) | peak RSS MB (unheld) |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (held, unheld) in pairs {
        let rate = |c: &ingest::IngestCell| c.rates().show(thousands);
        let accepted = |c: &ingest::IngestCell| c.series(|x| x.accepted_rate).show(thousands);
        let lost =
            |c: &ingest::IngestCell| c.series(|x| x.hub_lost.unwrap_or(0) as f64).show(thousands);
        let rss =
            |c: &ingest::IngestCell| c.series(|x| x.peak_rss_kib.unwrap_or(0) as f64).show(mb);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            held.qos,
            held.clients,
            rate(held),
            rate(unheld),
            accepted(held),
            accepted(unheld),
            lost(held),
            lost(unheld),
            rss(held),
            rss(unheld),
        );
    }
}

fn render(r: &Report, elapsed_s: u64) -> String {
    let m = &r.machine;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!-- generated by `{}`; copy into BENCHMARKS.md -->",
        r.command
    );
    let _ = writeln!(
        o,
        "Command: `{}` ({} min {} s).",
        r.command,
        elapsed_s / 60,
        elapsed_s % 60
    );
    let _ = writeln!(
        o,
        "Machine: {} cores (nproc), {}, Linux {}; load average {} at the start, {} at the end. Build: {}, smarthub {}; {}; {}. Started {}.",
        m.cores, m.model, m.kernel, m.load_start, m.load_end, m.build, m.commit, m.rumqttd, m.mosquitto, m.started_utc
    );
    let _ = writeln!(
        o,
        "\nEvery figure is the median of {} runs with the spread (min–max) in parentheses. \"Load generator\" is the \
         CPU of the bench process (publishers, subscriber, HTTP clients), \"others\" the CPU every other process on the \
         machine used meanwhile (cores = CPU-seconds per second; the machine has {}). Over all runs, other processes used \
         a median of {} cores, kernel interrupt work (loopback networking) {} and the hypervisor's steal {}.",
        r.runs,
        m.cores,
        all_cpu(r, |c| c.others).show(cores),
        all_cpu(r, |c| c.irq).show(cores),
        all_cpu(r, |c| c.steal).show(cores),
    );

    // Ingest
    if !r.ingest.is_empty() {
        let _ = writeln!(
            o,
            "\n### Ingest\n\nReadings per second: smarthub counts rows committed to SQLite (publish → row committed); rumqttd \
             and mosquitto count messages delivered to one subscriber (QoS of the test). Each run publishes for {} s as fast \
             as flow control allows (QoS 1: {} in flight per client) from simulated-household payloads (three nodes, one of \
             each kind, per client), then waits up to {} s for what was accepted to arrive.\n",
            r.secs,
            ingest::WINDOW,
            ingest::DRAIN.as_secs()
        );
        let _ = writeln!(
            o,
            "| QoS | clients | smarthub (persisted/s) | rumqttd (delivered/s) | mosquitto (delivered/s) | smarthub / rumqttd | smarthub / mosquitto |\n|---|---|---|---|---|---|---|"
        );
        let find = |t: Target, c: usize, q: u8| {
            r.ingest
                .iter()
                .find(|x| x.target == t && x.clients == c && x.qos == q)
        };
        let mut keys: Vec<(u8, usize)> = r.ingest.iter().map(|c| (c.qos, c.clients)).collect();
        keys.dedup();
        for (q, c) in &keys {
            let show = |t| find(t, *c, *q).map_or("n/a".into(), |x| x.rates().show(thousands));
            let ratio = |t| match (find(Target::Smarthub, *c, *q), find(t, *c, *q)) {
                (Some(a), Some(b)) => ratios(a, b).show(pct),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                o,
                "| {q} | {c} | {} | {} | {} | {} | {} |",
                show(Target::Smarthub),
                show(Target::Rumqttd),
                show(Target::Mosquitto),
                ratio(Target::Rumqttd),
                ratio(Target::Mosquitto)
            );
        }
        let _ = writeln!(
            o,
            "\nDetails (medians): what the broker accepted per second while the publishers ran (QoS 1: acknowledged; QoS 0: \
             written to the socket), what arrived within the run of what was sent (a backlog still draining after {} s \
             counts as not arrived), the acknowledged messages the hub's broker log dropped before the hub read them \
             (`smarthub_messages_lost_total`), CPU, and the peak RSS of the process under test.\n\n| QoS | clients | target | \
             accepted/s | arrived / sent | hub lost | load generator (cores) | target (cores) | others (cores) | peak RSS (MB) |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            ingest::DRAIN.as_secs()
        );
        for cell in &r.ingest {
            let s = |f: &dyn Fn(&ingest::IngestRun) -> f64| cell.series(f);
            let arrived = s(&|x| x.arrived as f64 / x.sent.max(1) as f64);
            let lost = s(&|x| x.hub_lost.unwrap_or(0) as f64);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.qos,
                cell.clients,
                cell.target.name(),
                s(&|x| x.accepted_rate)
                    .median()
                    .map_or("n/a".into(), thousands),
                arrived
                    .median()
                    .map_or("n/a".into(), |v| format!("{:.1} %", v * 100.0)),
                if cell.target.is_hub() {
                    lost.median().map_or("n/a".into(), thousands)
                } else {
                    "–".into()
                },
                s(&|x| x.cpu.generator).median().map_or("n/a".into(), cores),
                s(&|x| x.cpu.target).median().map_or("n/a".into(), cores),
                s(&|x| x.cpu.others).median().map_or("n/a".into(), cores),
                s(&|x| x.peak_rss_kib.unwrap_or(0) as f64)
                    .median()
                    .map_or("n/a".into(), mb),
            );
        }
    }

    let hub_cells: Vec<&ingest::IngestCell> = r
        .ingest
        .iter()
        .filter(|c| c.target == Target::Smarthub)
        .collect();
    if !hub_cells.is_empty() {
        let _ = writeln!(
            o,
            "\nWhere the hub's CPU went (median cores per thread over the run: `mqtt` = rumqttd's connection tasks, \
             `router-0` = rumqttd's router, `mqtt-drain` = our link reader, `engine`, `sqlite-writer`; threads under 0.01 \
             left out).\n\n| QoS | clients | threads |\n|---|---|---|"
        );
        for cell in hub_cells {
            let mut names: Vec<String> = cell
                .runs
                .iter()
                .flat_map(|r| r.hub_threads.iter().map(|(n, _)| n.clone()))
                .collect();
            names.sort();
            names.dedup();
            let mut rows: Vec<(String, f64)> = names
                .into_iter()
                .filter_map(|name| {
                    let mut x = Runs::default();
                    for run in &cell.runs {
                        x.push(
                            run.hub_threads
                                .iter()
                                .find(|(n, _)| *n == name)
                                .map_or(0.0, |(_, c)| *c),
                        );
                    }
                    x.median().filter(|m| *m >= 0.01).map(|m| (name, m))
                })
                .collect();
            rows.sort_by(|a, b| b.1.total_cmp(&a.1));
            let text: Vec<String> = rows.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                cell.qos,
                cell.clients,
                text.join(", ")
            );
        }
    }
    backpressure_table(&mut o, r);

    // Latency
    if let Some(l) = &r.latency {
        let _ = writeln!(
            o,
            "\n### Latency\n\n{} s per run; background load is TV readings from 4 paced QoS 1 clients; probes (QoS 1), \
             {}/s or 10 % of the load, whichever is less, alternate light readings (answered on \
             `smarthub/prediction/light`, paired by a light intensity unique to each probe that the prediction echoes in \
             its `inputs`) and climate readings (answered on the retained `smarthub/climate/state`, paired by a unique \
             humidity). The hub first gets 7 days of simulated history and `POST /api/v1/train`. {}.\n",
            r.latency_secs,
            200,
            l.prediction_note
        );
        let _ = writeln!(
            o,
            "| readings/s | achieved/s | publish → prediction p50 / p99 / max (ms) | publish → climate state p50 (ms) | p99 (ms) | max (ms) | load generator (cores) | hub (cores) | others (cores) |\n|---|---|---|---|---|---|---|---|---|"
        );
        for rate in [1_000.0, 10_000.0] {
            let pred = if l.predictions_available {
                format!(
                    "{} / {} / {}",
                    l.series(rate, |x| x.prediction.as_ref().map(|p| p.p50_ms))
                        .show(ms),
                    l.series(rate, |x| x.prediction.as_ref().map(|p| p.p99_ms))
                        .show(ms),
                    l.series(rate, |x| x.prediction.as_ref().map(|p| p.max_ms))
                        .show(ms)
                )
            } else {
                "N/A (no model)".into()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(rate),
                l.series(rate, |x| Some(x.achieved_rate)).show(thousands),
                pred,
                l.series(rate, |x| x.state.as_ref().map(|p| p.p50_ms))
                    .show(ms),
                l.series(rate, |x| x.state.as_ref().map(|p| p.p99_ms))
                    .show(ms),
                l.series(rate, |x| x.state.as_ref().map(|p| p.max_ms))
                    .show(ms),
                l.series(rate, |x| Some(x.cpu.generator)).show(cores),
                l.series(rate, |x| Some(x.cpu.target)).show(cores),
                l.series(rate, |x| Some(x.cpu.others)).show(cores),
            );
        }
    }

    // Connections
    if !r.connections.is_empty() {
        let _ = writeln!(
            o,
            "\n### Connections and memory\n\n{} idle MQTT 3.1.1 clients (keep-alive 300 s) from a separate process \
             (`smarthub bench idle-clients`, at most 256 connecting at once). RSS idle: 2 s after start, nothing connected; \
             with clients: 2 s after the last CONNACK.\n",
            thousands(r.clients as f64)
        );
        let _ = writeln!(
            o,
            "| broker | connected | connect rate (/s) | still connected | RSS idle (MB) | RSS with clients (MB) | client process CPU (s) | client process RSS (MB) |\n|---|---|---|---|---|---|---|---|"
        );
        for cell in &r.connections {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.target.name(),
                cell.series(|x| Some(x.connected as f64)).show(thousands),
                cell.series(|x| Some(x.connect_rate)).show(thousands),
                cell.series(|x| x.established.map(|v| v as f64))
                    .show(thousands),
                cell.series(|x| x.rss_idle_kib.map(|v| v as f64)).show(mb),
                cell.series(|x| x.rss_clients_kib.map(|v| v as f64))
                    .show(mb),
                cell.series(|x| x.client_cpu_s).show(|v| format!("{v:.1}")),
                cell.series(|x| x.client_rss_kib.map(|v| v as f64)).show(mb),
            );
        }
    }

    // REST
    if !r.rest.is_empty() {
        let _ = writeln!(
            o,
            "\n### REST\n\n{} concurrent keep-alive HTTP/1.1 clients (the bench's own client), {} s per run, against a hub \
             with 7 days of simulated history and trained models. Statuses are shown as received.\n",
            rest::CONCURRENCY,
            r.secs
        );
        let _ = writeln!(
            o,
            "| route | status | requests/s | p50 (ms) | p99 (ms) | load generator (cores) | hub (cores) | others (cores) |\n|---|---|---|---|---|---|---|---|"
        );
        for cell in &r.rest {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
                cell.route,
                cell.statuses(),
                cell.series(|x| Some(x.rate)).show(thousands),
                cell.series(|x| x.p50_ms).show(ms),
                cell.series(|x| x.p99_ms).show(ms),
                cell.series(|x| Some(x.cpu.generator)).show(cores),
                cell.series(|x| Some(x.cpu.target)).show(cores),
                cell.series(|x| Some(x.cpu.others)).show(cores),
            );
        }
    }

    let _ = writeln!(
        o,
        "\n### Goals\n\n| goal | measured | verdict |\n|---|---|---|"
    );
    for (goal, measured, verdict) in goals(r) {
        let _ = writeln!(o, "| {goal} | {measured} | {verdict} |");
    }
    o
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// Each goal of issue 5 with what this run measured.
fn goals(r: &Report) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let cell = |t: Target, c: usize, q: u8| {
        r.ingest
            .iter()
            .find(|x| x.target == t && x.clients == c && x.qos == q)
    };
    let mut keys: Vec<(u8, usize)> = r.ingest.iter().map(|c| (c.qos, c.clients)).collect();
    keys.dedup();
    for (q, c) in keys {
        let Some(hub) = cell(Target::Smarthub, c, q) else {
            continue;
        };
        if let Some(rq) = cell(Target::Rumqttd, c, q) {
            let x = ratios(hub, rq);
            out.push((
                format!("ingest ≥ 90 % of rumqttd, QoS {q}, {c} clients"),
                x.show(pct),
                x.median()
                    .map_or("n/a".into(), |v| verdict(v >= 0.9).into()),
            ));
        }
        if let Some(mq) = cell(Target::Mosquitto, c, q) {
            let x = ratios(hub, mq);
            out.push((
                format!("ingest above mosquitto, QoS {q}, {c} clients"),
                x.show(pct),
                x.median().map_or("n/a".into(), |v| verdict(v > 1.0).into()),
            ));
        }
    }
    if let Some(l) = &r.latency {
        if l.predictions_available {
            let p99 = l.series(1_000.0, |x| x.prediction.as_ref().map(|p| p.p99_ms));
            out.push((
                "p99 publish → prediction < 5 ms at 1,000 readings/s".into(),
                format!("{} ms", p99.show(ms)),
                p99.median()
                    .map_or("n/a".into(), |v| verdict(v < 5.0).into()),
            ));
        } else {
            let p99 = l.series(1_000.0, |x| x.state.as_ref().map(|p| p.p99_ms));
            out.push((
                "p99 publish → prediction < 5 ms at 1,000 readings/s".into(),
                format!(
                    "N/A: no model in this build (publish → climate state p99: {} ms)",
                    p99.show(ms)
                ),
                "not measurable yet".into(),
            ));
        }
    }
    if let Some(hub) = r.connections.iter().find(|c| c.target == Target::Smarthub) {
        let rss = hub.series(|x| x.rss_clients_kib.map(|v| v as f64));
        let all = hub.runs.iter().all(|x| x.connected == r.clients);
        out.push((
            format!(
                "{} connections under 200 MB RSS",
                thousands(r.clients as f64)
            ),
            format!(
                "{} MB{}",
                rss.show(mb),
                if all {
                    ""
                } else {
                    " (not every client connected)"
                }
            ),
            rss.median().map_or("n/a".into(), |v| {
                verdict(all && v * 1024.0 / 1e6 < 200.0).into()
            }),
        ));
        let idle = hub.series(|x| x.rss_idle_kib.map(|v| v as f64));
        out.push((
            "idle RSS under 30 MB".into(),
            format!("{} MB", idle.show(mb)),
            idle.median()
                .map_or("n/a".into(), |v| verdict(v * 1024.0 / 1e6 < 30.0).into()),
        ));
    }
    if let Some(cell) = r.rest.iter().find(|c| c.route == "/get_light_state/") {
        let ok_only = cell
            .runs
            .iter()
            .all(|x| x.statuses.keys().all(|s| *s == 200));
        let rate = cell.series(|x| Some(x.rate));
        out.push((
            "REST ≥ 20,000 requests/s on /get_light_state/".into(),
            format!("{}/s, status {}", rate.show(thousands), cell.statuses()),
            if ok_only {
                rate.median()
                    .map_or("n/a".into(), |v| verdict(v >= 20_000.0).into())
            } else {
                "not measurable: the route did not answer 200".into()
            },
        ));
    }
    out
}

/// Where `bench/run.sh` puts stock rumqttd.
pub fn default_rumqttd(repo: &Path) -> PathBuf {
    repo.join("target/bench-tools/bin/rumqttd")
}
