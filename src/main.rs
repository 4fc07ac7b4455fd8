//! The `smarthub` binary: parses the command line, sets up logging, and calls into the library.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarthub::config::{self, Config, DEFAULT_CONFIG};
use smarthub::learning::{self, registry::Outcome, LearningError, Target, TrainOptions};

mod bench;

/// smarthub: a smart home's back end in one process (MQTT broker, rule engine, SQLite, REST).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the hub: embedded MQTT broker, rule engine, SQLite and HTTP.
    Run {
        /// Config file. Default: broker.toml in $CONFIGURATION_DIRECTORY or the working directory,
        /// else the built-in default (`smarthub print-default-config`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the hub keeps data/smarthub.db and models/. Default: $STATE_DIRECTORY (systemd), else
        /// the working directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address of the MQTT 3.1.1 listener (overrides the config), e.g. 127.0.0.1:1883.
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<SocketAddr>,
        /// Enable MQTT 5 on this address (off by default: see broker.toml for the rumqttd defect).
        #[arg(long, value_name = "ADDR")]
        mqtt5_listen: Option<SocketAddr>,
        /// Address of the HTTP API (overrides the config), e.g. 127.0.0.1:8000.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
    },
    /// Check a config file and list every problem (exit 1 when there is any).
    CheckConfig {
        /// Config file. Default: as for `run`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the built-in default config (a starting point for broker.toml).
    PrintDefaultConfig,
    /// Copy the live database to FILE with SQLite's online backup (safe while the hub runs).
    Backup {
        /// The hub's data directory (holding data/smarthub.db). Default: as for `run`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Where to write the copy; must not exist.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Train models now from the hub's database and print their metrics. A new model replaces the
    /// active one only if it validates at least as well; a running hub picks it up within seconds.
    Train {
        /// The hub's data directory (holding data/smarthub.db and models/). Default: as for `run`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Only this target: light, tv or fan. Default: all three.
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
    },
    /// Score every candidate model on CSV exports of the old backend (light_dataset.csv,
    /// tv_dataSert.csv, wether_dataset.csv) with 5-fold cross-validation (row index mod 5).
    Eval {
        /// Directory holding the exports.
        #[arg(long, value_name = "DIR")]
        dataset_dir: PathBuf,
        /// Train on --dataset-dir and score on the exports in this directory instead.
        #[arg(long, value_name = "DIR")]
        holdout_dir: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also estimate the whole choice by nested cross-validation (5 outer x 5 inner folds).
        #[arg(long)]
        nested: bool,
    },
    /// Import CSV exports of the old backend into the hub's database (idempotent: rows already
    /// imported are skipped). Stop the hub first or run it beside: each file is one transaction.
    Import {
        /// Directory holding light_dataset.csv, tv_dataSert.csv and/or wether_dataset.csv.
        #[arg(long, value_name = "DIR")]
        csv_dir: PathBuf,
        /// The hub's data directory. Default: as for `run`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Benchmark: generate N synthetic rows per target in a temporary database and time the nightly
    /// retrain while the writer keeps ingesting.
    #[command(hide = true)]
    BenchTrain {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Keep the database and models here instead of a temporary directory (must not exist).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Add or replace USER in an MQTT password file (argon2 hashes). Reads the password from
    /// standard input (asks for it on a terminal).
    Passwd {
        /// The password file ([mqtt_auth] password_file); created when missing.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The MQTT user name.
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Publish realistic readings for N simulated nodes (light, TV, climate: daily light and temperature
    /// cycles, motion bursts, TV habits, fan following temperature) to a running hub.
    Simulate {
        /// The hub's MQTT address, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
        broker: String,
        /// Number of nodes; they take turns being light, TV and climate nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Each node publishes one reading every MS milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after S seconds of live readings (default: until Ctrl-C).
        #[arg(long, value_name = "S")]
        duration_s: Option<u64>,
        /// QoS of live readings (history always uses 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// First publish D days of back-dated readings (with `ts`, one per node every 5 minutes) so
        /// that models can train at once.
        #[arg(long, value_name = "D", default_value_t = 0)]
        history_days: u32,
        /// Seed of the simulated household (same seed, same habits and readings).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The hub's base topic ([hub] base_topic).
        #[arg(long, default_value = "smarthub")]
        base_topic: String,
    },
    /// Benchmarks against stock rumqttd and mosquitto (run bench/run.sh, which builds in release mode
    /// and installs what it needs).
    #[command(hide = true)]
    Bench(bench::BenchArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // Quiet by default; rumqttd logs ordinary disconnects as errors, so it only speaks when asked.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,smarthub=info,rumqttd=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = config::systemd_dir("STATE_DIRECTORY") {
        return Ok(dir);
    }
    std::env::current_dir().context("cannot read the working directory")
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| config::default_config_path(&cwd));
    match path {
        Some(p) => Ok((Config::load(&p)?, p.display().to_string())),
        None => Ok((Config::default_config(), "built-in default".into())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            data_dir,
            mqtt_listen,
            mqtt5_listen,
            http_listen,
        } => {
            let (mut cfg, origin) = load_config(config.as_deref())?;
            if let Some(a) = mqtt_listen {
                cfg.set_mqtt_listen(a).map_err(anyhow::Error::msg)?;
            }
            if let Some(a) = mqtt5_listen {
                cfg.set_mqtt5_listen(a).map_err(anyhow::Error::msg)?;
                tracing::warn!("MQTT 5 enabled: an MQTT 5 publish with properties routed to an MQTT 3.1.1 subscriber crashes rumqttd's 3.1.1 listener (see broker.toml)");
            }
            if let Some(a) = http_listen {
                cfg.http.listen = a;
            }
            let data_dir = match data_dir {
                Some(d) => d,
                None => default_data_dir()?,
            };
            tracing::info!(config = origin, data_dir = %data_dir.display(), "starting");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(smarthub::run(cfg, &data_dir, shutdown_signal()))?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            let (_, origin) = load_config(config.as_deref())?;
            println!("{origin}: OK");
            Ok(())
        }
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Command::Backup { data_dir, file } => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => default_data_dir()?,
            };
            if file.exists() {
                anyhow::bail!("{}: already exists; choose a new file name", file.display());
            }
            let db = smarthub::database_path(&data_dir);
            smarthub::store::backup(&db, &file)
                .with_context(|| format!("backup of {} (is --data-dir right?)", db.display()))?;
            println!("backed up {} to {}", db.display(), file.display());
            Ok(())
        }
        Command::Train { data_dir, target } => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => default_data_dir()?,
            };
            let targets = parse_targets(target.as_deref())?;
            let db = smarthub::database_path(&data_dir);
            let models = smarthub::models_dir(&data_dir);
            let opts = TrainOptions::default();
            let mut failed = 0;
            for target in targets {
                let mut progress = Progress::new(&format!("training {target}"), 0);
                let result = learning::retrain(&db, &models, target, &opts);
                progress.finish();
                match result {
                    Ok(done) => {
                        let r = &done.report;
                        println!(
                            "{target}: {} on {} rows (selection on {}): accuracy {:.4}, balanced accuracy {:.4}, {:.1} s",
                            r.chosen, r.rows, r.selection_rows, r.accuracy, r.balanced_accuracy, r.seconds
                        );
                        for c in &r.candidates {
                            match &c.error {
                                None => println!(
                                    "  {:<45} accuracy {:.4}  balanced {:.4}  {:.2} s",
                                    c.candidate, c.accuracy, c.balanced_accuracy, c.seconds
                                ),
                                Some(e) => println!("  {:<45} failed: {e}", c.candidate),
                            }
                        }
                        match done.outcome {
                            Outcome::Promoted(v) => println!(
                                "  saved {} and made it active",
                                learning::registry::target_dir(&models, target)
                                    .join(&v.file)
                                    .display()
                            ),
                            Outcome::KeptActive { active, .. } => println!(
                                "  not kept: the active model {} validated better (balanced accuracy {:.4}, accuracy {:.4})",
                                active.file, active.balanced_accuracy, active.accuracy
                            ),
                        }
                    }
                    Err(e @ LearningError::NotEnoughData { .. }) => println!("{e}"),
                    Err(e) => {
                        eprintln!("smarthub: {target}: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} target(s) failed");
            }
            Ok(())
        }
        Command::Eval {
            dataset_dir,
            holdout_dir,
            json,
            nested,
        } => {
            let opts = TrainOptions {
                selection_rows: usize::MAX,
                ..TrainOptions::default()
            };
            let total = (learning::legacy_csv::FILES
                .iter()
                .filter(|(_, name, _)| dataset_dir.join(name).is_file())
                .count()
                * (learning::models::Spec::candidates(1).len() + usize::from(nested)))
                as u64;
            let mut progress = Progress::new("evaluating", total);
            let report = learning::eval::evaluate(
                &dataset_dir,
                holdout_dir.as_deref(),
                nested,
                &opts,
                &mut |what| progress.step(what),
            )
            .with_context(|| format!("evaluating {}", dataset_dir.display()))?;
            progress.finish();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Import { csv_dir, data_dir } => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => default_data_dir()?,
            };
            let files = learning::legacy_csv::read_dir(&csv_dir)?;
            let db = smarthub::database_path(&data_dir);
            let mut conn = smarthub::store::open_migrated(&db)
                .with_context(|| format!("opening {} (is --data-dir right?)", db.display()))?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            for file in &files {
                let name = file.path.display().to_string();
                let mut progress = Progress::new(&name, file.rows.len() as u64);
                let counts =
                    learning::legacy_csv::import(&mut conn, file, now_ms, &mut |n| progress.inc(n))
                        .with_context(|| format!("importing {name}: nothing from it was stored"))?;
                progress.finish();
                println!(
                    "{name}: {} imported, {} already imported before, {} skipped",
                    counts.imported, counts.already, counts.skipped
                );
                for example in &counts.skipped_examples {
                    println!("  skipped {example}");
                }
            }
            Ok(())
        }
        Command::BenchTrain { rows, keep, json } => {
            let mut tmp = None;
            let dir = match keep {
                Some(d) => {
                    if d.exists() {
                        anyhow::bail!("{}: already exists; choose a new directory", d.display());
                    }
                    d
                }
                None => {
                    let d = tempfile_dir()?;
                    tmp = Some(d.clone());
                    d
                }
            };
            let mut progress = Progress::new("bench-train", 0);
            let report = learning::bench::run(&dir, rows, &TrainOptions::default(), &mut |what| {
                progress.step(what)
            });
            progress.finish();
            if let Some(d) = tmp {
                // Hundreds of MB of generated rows: only kept when asked (--keep).
                let _ = std::fs::remove_dir_all(d);
            }
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} rows per target generated in {:.1} s; retrain of all targets: {:.1} s",
                    report.rows_per_target, report.generate_seconds, report.retrain_seconds
                );
                for t in &report.targets {
                    println!(
                        "  {}: {} rows, {} (accuracy {:.4}, balanced {:.4}) in {:.1} s, model file {} bytes",
                        t.target, t.rows, t.chosen, t.accuracy, t.balanced_accuracy, t.seconds, t.model_file_bytes
                    );
                }
                println!(
                    "  meanwhile {} readings committed; longest commit wait {:.1} ms",
                    report.ingested_during_retrain, report.worst_commit_wait_ms
                );
            }
            Ok(())
        }
        Command::Passwd { file, user } => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password for {user}: ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            smarthub::auth::set_password(&file, &user, password)?;
            println!("{}: password set for {user}", file.display());
            Ok(())
        }
        Command::Simulate {
            broker,
            nodes,
            interval_ms,
            duration_s,
            qos,
            history_days,
            seed,
            base_topic,
        } => {
            let (host, port) = broker
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .with_context(|| {
                    format!("--broker {broker}: expected HOST:PORT, e.g. 127.0.0.1:1883")
                })?;
            let mut options = smarthub::simulate::SimOptions::new(host, port);
            options.nodes = nodes;
            options.interval = std::time::Duration::from_millis(interval_ms);
            options.duration = duration_s.map(std::time::Duration::from_secs);
            options.qos = if qos == 0 {
                rumqttc::QoS::AtMostOnce
            } else {
                rumqttc::QoS::AtLeastOnce
            };
            options.history_days = history_days;
            options.seed = seed;
            options.base_topic = base_topic;
            simulate(options)
        }
        Command::Bench(args) => bench::main(args),
    }
}

fn parse_targets(target: Option<&str>) -> anyhow::Result<Vec<Target>> {
    match target {
        None => Ok(Target::ALL.to_vec()),
        Some(t) => Target::parse(t)
            .map(|t| vec![t])
            .ok_or_else(|| anyhow::anyhow!("--target {t}: use light, tv or fan")),
    }
}

/// A fresh directory under the system temp dir for `bench-train` (removed after the run).
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "smarthub-bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Progress of long CLI work: a bar on a terminal, plain lines when piped.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    next_line: u64,
}

impl Progress {
    fn new(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = if total > 0 {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::new_spinner()
            };
            let style = if total > 0 {
                "{prefix} [{bar:30}] {pos}/{len} {msg}"
            } else {
                "{prefix} {spinner} {msg} ({elapsed})"
            };
            if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
                bar.set_style(s.progress_chars("=> "));
            }
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("{label}: started");
        }
        Progress {
            bar,
            label: label.to_owned(),
            total,
            done: 0,
            next_line: 0,
        }
    }

    fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.total > 0 && self.done >= self.next_line => {
                eprintln!("{}: {}/{}", self.label, self.done, self.total);
                self.next_line = self.done + (self.total / 10).max(1);
            }
            None => {}
        }
    }

    /// One named step done.
    fn step(&mut self, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(what.to_owned());
                if self.total > 0 {
                    bar.inc(1);
                }
            }
            None => eprintln!("{}: {what}", self.label),
        }
        self.done += 1;
    }

    fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: done", self.label),
        }
    }
}

/// Runs the simulator with a progress line: indicatif on a terminal, a plain line every 5 s when piped.
fn simulate(options: smarthub::simulate::SimOptions) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stats = Arc::new(smarthub::simulate::SimStats::default());
    let history_total = options.history_total();
    let nodes = options.nodes;
    let rate_per_s = nodes as f64 * 1000.0 / options.interval.as_millis().max(1) as f64;
    eprintln!(
        "simulating {nodes} nodes on {}:{} ({} readings/s{}); Ctrl-C stops",
        options.host,
        options.port,
        rate_per_s,
        if history_total > 0 {
            format!(", after {history_total} back-dated readings")
        } else {
            String::new()
        }
    );
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("literal template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let line = {
        let stats = stats.clone();
        let mut last = (Instant::now(), 0u64);
        move || {
            let sent = stats.sent.load(Relaxed);
            let now = Instant::now();
            let rate = (sent - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
            last = (now, sent);
            format!(
                "{}/{nodes} nodes connected | history {}/{history_total} | live {sent} sent ({rate:.0}/s) | {} acked",
                stats.connected.load(Relaxed),
                stats.history_sent.load(Relaxed),
                stats.acked.load(Relaxed),
            )
        }
    };
    let summary = rt.block_on(async {
        let reporter = tokio::spawn({
            let bar = bar.clone();
            let mut line = line;
            async move {
                let every = if bar.is_some() { 250 } else { 5000 };
                let mut tick = tokio::time::interval(Duration::from_millis(every));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let text = line();
                    match &bar {
                        Some(b) => b.set_message(text),
                        None => eprintln!("{text}"),
                    }
                }
            }
        });
        let result = smarthub::simulate::run(options, stats.clone(), shutdown_signal()).await;
        reporter.abort();
        result
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let summary = summary?;
    println!(
        "{} nodes: {} back-dated and {} live readings published{}",
        summary.nodes,
        summary.history_sent,
        summary.live_sent,
        if summary.unacked > 0 {
            format!(", {} not acknowledged by the broker", summary.unacked)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smarthub: {e:#}");
            ExitCode::FAILURE
        }
    }
}
