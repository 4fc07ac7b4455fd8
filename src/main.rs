//! The `smarthub` binary: parses the command line, sets up logging, and calls into the library.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarthub::config::{self, Config, DEFAULT_CONFIG};

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
    }
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
