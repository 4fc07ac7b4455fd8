//! The `smarthub` binary: parses the command line, sets up logging, and calls into the library.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarthub::config::{self, Config, DEFAULT_CONFIG};

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
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return Ok(PathBuf::from(first));
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
