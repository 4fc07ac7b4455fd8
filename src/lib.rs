//! smarthub: the back end of a smart home in one process.
//!
//! # Layout
//! - [`config`]: `broker.toml` (rumqttd's sections + ours), validated as a whole.
//! - [`broker`]: hosts rumqttd's router and listeners on a runtime we own; drains the engine's link.
//! - [`topics`]: every topic name, built and recognised in one place.
//! - [`readings`] and [`home`]: the firmware contract's payloads, the home state and its commands.
//! - [`engine`]: the one path for messages, readings and commands (its own thread).
//! - [`store`]: SQLite: one batching writer thread, read-only WAL readers, migrations, backup.
//! - [`http`]: the axum adapter (health, metrics, REST).
//! - [`export`]: the legacy CSV/Excel downloads, streamed from SQLite page by page.
//! - [`learning`]: features, models, cross-validation, the model registry, live predictions and modes.
//! - [`schedule`]: cron-driven jobs (nightly retention, retraining).
//! - [`homeassistant`]: MQTT discovery, so the hub, its nodes and predictions appear in Home Assistant.
//! - [`metrics`], [`auth`]: counters; MQTT passwords.
//! - [`simulate`]: a simulated household of sensor nodes (demo data and load), a client of the hub.
//!
//! # Data flow
//! ```text
//! sensor --MQTT--> rumqttd --link--> drain thread --queue--> engine thread --> SQLite writer thread
//!                     ^                                        |   ^
//!                     +------- retained states, errors --------+   +-- REST / HA commands
//! ```

pub mod auth;
pub mod broker;
pub mod config;
pub mod engine;
pub mod export;
pub mod home;
pub mod homeassistant;
pub mod http;
pub mod learning;
pub mod metrics;
pub mod readings;
pub mod schedule;
pub mod simulate;
pub mod store;
pub mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::PasswordFile;
use crate::broker::Broker;
use crate::config::Config;
use crate::engine::{EngineHandle, EngineParts, Input};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::topics::{DiscoveryTopics, Topics};

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("HTTP listen address {addr} is already in use: stop whatever holds it or choose another with --http-listen")]
    HttpInUse { addr: SocketAddr },
    #[error("HTTP listen address {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret from {origin}: {why}")]
    Secret { origin: String, why: String },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    HomeAssistant(#[from] homeassistant::HomeAssistantError),
}

/// Where the database lives under a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("data").join("smarthub.db")
}

/// Where trained models live under a data directory.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// Where a secret lives: the configured file, else the systemd credential of that name, else nowhere.
fn secret_path(configured: &str, credential: &str) -> Option<PathBuf> {
    if !configured.is_empty() {
        return Some(PathBuf::from(configured));
    }
    config::systemd_dir("CREDENTIALS_DIRECTORY")
        .map(|d| d.join(credential))
        .filter(|p| p.is_file())
}

/// A secret is the first line of its file, trimmed.
fn read_secret(path: &Path) -> Result<String, HubError> {
    let text = std::fs::read_to_string(path).map_err(|e| HubError::Secret {
        origin: path.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// Reads the door PIN: `door.pin_file`, else `$CREDENTIALS_DIRECTORY/door_pin`, else "1234".
pub fn load_door_pin(config: &Config) -> Result<String, HubError> {
    let Some(path) = secret_path(&config.door.pin_file, "door_pin") else {
        return Ok("1234".into());
    };
    let pin = read_secret(&path)?;
    if pin.chars().count() != home::PIN_LEN {
        return Err(HubError::Secret {
            origin: path.display().to_string(),
            why: format!(
                "the first line must be the {}-character door PIN",
                home::PIN_LEN
            ),
        });
    }
    Ok(pin)
}

/// Shortest API token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Reads the API token: `http.api_token_file`, else `$SMARTHUB_API_TOKEN`, else
/// `$CREDENTIALS_DIRECTORY/api_token`; `None` when there is none (routes stay open).
pub fn load_api_token(config: &Config) -> Result<Option<String>, HubError> {
    let (origin, token) = match std::env::var("SMARTHUB_API_TOKEN") {
        Ok(token) if config.http.api_token_file.is_empty() => {
            ("$SMARTHUB_API_TOKEN".to_owned(), token.trim().to_owned())
        }
        _ => match secret_path(&config.http.api_token_file, "api_token") {
            Some(path) => (path.display().to_string(), read_secret(&path)?),
            None => return Ok(None),
        },
    };
    if token.len() < MIN_TOKEN_LEN {
        return Err(HubError::Secret {
            origin,
            why: format!("the API token must have at least {MIN_TOKEN_LEN} characters"),
        });
    }
    Ok(Some(token))
}

/// A running hub: broker, engine, database and HTTP.
pub struct Hub {
    pub engine: EngineHandle,
    pub learner: Arc<learning::runtime::Learner>,
    pub metrics: Arc<Metrics>,
    pub hub_id: String,
    pub http_addr: SocketAddr,
    pub mqtt_listeners: Vec<(&'static str, SocketAddr)>,
    pub db_path: PathBuf,
    broker: Broker,
    engine_tx: std::sync::mpsc::Sender<Input>,
    engine_thread: std::thread::JoinHandle<()>,
    store: Store,
    http_stop: tokio::sync::oneshot::Sender<()>,
    http_task: tokio::task::JoinHandle<()>,
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

impl Hub {
    /// Starts everything. Returns once both listeners accept connections and the database is open.
    pub async fn start(config: Config, data_dir: &Path) -> Result<Hub, HubError> {
        let data_dir = data_dir.to_owned();
        for dir in [data_dir.join("data"), models_dir(&data_dir)] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| HubError::DataDir { path: dir, source })?;
        }
        let http_addr = config.http.listen;
        let http_listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    HubError::HttpInUse { addr: http_addr }
                } else {
                    HubError::Http {
                        addr: http_addr,
                        source,
                    }
                }
            })?;
        let http_addr = http_listener.local_addr().unwrap_or(http_addr);
        let metrics = Arc::new(Metrics::default());
        let db_path = database_path(&data_dir);

        let retention_days = config.storage.retention_days;
        let ha_config = config.homeassistant.clone();
        let max_fan_level = config.hub.max_fan_level;
        let base_topic = config.hub.base_topic.clone();
        let api_token = load_api_token(&config)?.map(Arc::new);
        let learning_config = config.learning.clone();
        let blocking = {
            let metrics = metrics.clone();
            let db_path = db_path.clone();
            move || -> Result<_, HubError> {
                let door_pin = load_door_pin(&config)?;
                let passwords = if config.mqtt_auth.password_file.is_empty() {
                    None
                } else {
                    let pw = PasswordFile::load(Path::new(&config.mqtt_auth.password_file))?;
                    tracing::info!(users = pw.len(), "MQTT passwords required");
                    Some(Arc::new(pw))
                };
                let (store, loaded) = Store::open(&db_path, &config.storage, metrics.clone())?;
                let topics = Topics::new(&config.hub.base_topic);
                let ha_status = config
                    .homeassistant
                    .enabled
                    .then(|| DiscoveryTopics::new(&config.homeassistant.discovery_prefix).status());
                let (broker, mut link) = Broker::start(
                    &config,
                    &topics.all(),
                    ha_status.as_deref(),
                    passwords,
                    metrics.clone(),
                )?;
                let ha_link = link.homeassistant.take();
                let (engine, engine_tx, engine_thread) = engine::spawn(EngineParts {
                    topics,
                    publisher: link.publisher,
                    writer: store.writer(),
                    metrics: metrics.clone(),
                    hub: config.hub.clone(),
                    door: config.door.clone(),
                    door_pin,
                    initial: loaded.state,
                })
                .map_err(HubError::Thread)?;
                // Subscribed before the drainer feeds the engine, so no node's first reading is missed.
                let ha = ha_link.map(|link| (link, engine.subscribe()));
                broker::spawn_drainer(
                    link.rx,
                    engine_tx.clone(),
                    metrics.clone(),
                    link.gate.clone(),
                    broker::IngestLimits {
                        backlog: config.hub.ingest_backlog,
                        max_pause: Duration::from_millis(config.hub.ingest_pause_max_ms),
                    },
                )
                .map_err(HubError::Thread)?;
                Ok((
                    store,
                    loaded.hub_id,
                    broker,
                    engine,
                    engine_tx,
                    engine_thread,
                    ha,
                ))
            }
        };
        let (store, hub_id, broker, engine, engine_tx, engine_thread, ha) =
            tokio::task::spawn_blocking(blocking)
                .await
                .map_err(|e| HubError::Thread(std::io::Error::other(e.to_string())))??;

        let learner = Arc::new(learning::runtime::Learner::new(
            db_path.clone(),
            models_dir(&data_dir),
            learning_config,
            max_fan_level,
            metrics.clone(),
        ));
        let mut jobs = learning::runtime::spawn(learning::runtime::RuntimeParts {
            learner: learner.clone(),
            engine: engine.clone(),
            topics: Topics::new(&base_topic),
            clock: Arc::new(schedule::SystemClock),
        })
        .await;
        let app = http::AppState {
            engine: engine.clone(),
            metrics: metrics.clone(),
            db_path: db_path.clone(),
            mqtt_listeners: broker.listeners.clone(),
            hub_id: hub_id.clone(),
            max_fan_level,
            api_token,
            learner: learner.clone(),
        };
        if let Some((link, events)) = ha {
            let catalog = homeassistant::Catalog {
                hub_id: hub_id.clone(),
                topics: Topics::new(&base_topic),
                hub_url: homeassistant::catalog::hub_url(&ha_config.hub_url, http_addr),
                max_fan_level,
                prediction_expire_after_s: ha_config.prediction_expire_after_s,
            };
            let started = homeassistant::start(homeassistant::Parts {
                config: ha_config,
                catalog,
                link,
                events,
                engine: engine_tx.clone(),
                writer: store.writer(),
                db_path: db_path.clone(),
            })
            .await;
            match started {
                Ok(tasks) => jobs.extend(tasks),
                Err(e) => {
                    // Stop what already runs before reporting.
                    let _ = tokio::task::spawn_blocking(move || {
                        drop(broker);
                        let _ = engine_tx.send(Input::Stop);
                        let _ = engine_thread.join();
                        store.close();
                    })
                    .await;
                    return Err(e.into());
                }
            }
        }
        if retention_days > 0 {
            let writer = store.writer();
            let nightly =
                schedule::Schedule::parse("0 0 0 * * *").expect("literal cron expression");
            jobs.push(schedule::spawn(
                "retention",
                nightly,
                Arc::new(schedule::SystemClock),
                move || {
                    let before_ms = chrono::Utc::now().timestamp_millis()
                        - i64::from(retention_days) * 86_400_000;
                    writer.send(store::WriteOp::Prune { before_ms });
                    async {}
                },
            ));
        }
        let (http_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http_task = tokio::spawn(async move {
            let serve =
                axum::serve(http_listener, http::router(app)).with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        Ok(Hub {
            engine,
            learner,
            metrics,
            hub_id,
            http_addr,
            mqtt_listeners: broker.listeners.clone(),
            db_path,
            broker,
            engine_tx,
            engine_thread,
            store,
            http_stop,
            http_task,
            jobs,
        })
    }

    /// Stops taking work, commits every reading the broker accepted, publishes `offline`, stops.
    pub async fn shutdown(self) {
        let Hub {
            broker,
            engine_tx,
            engine_thread,
            store,
            http_stop,
            http_task,
            jobs,
            ..
        } = self;
        for job in jobs {
            job.abort();
            let _ = job.await;
        }
        let _ = engine_tx.send(Input::PublishOffline);
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = engine_tx.send(Input::Drain(tx));
        let drained = tokio::task::spawn_blocking(move || {
            rx.recv_timeout(Duration::from_secs(4)).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !drained {
            tracing::error!("shutdown: not every accepted reading could be committed in time");
        }
        // Let the connections deliver `offline` before they close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::task::spawn_blocking(move || {
            let mut broker = broker;
            broker.stop()
        })
        .await;
        let _ = http_stop.send(());
        let _ = tokio::time::timeout(Duration::from_millis(500), http_task).await;
        let _ = engine_tx.send(Input::Stop);
        drop(engine_tx);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = engine_thread.join();
            store.close();
        })
        .await;
        tracing::info!("smarthub stopped");
    }
}

/// Runs the hub until `shutdown` resolves (SIGTERM / SIGINT in the binary).
pub async fn run(
    config: Config,
    data_dir: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let hub = Hub::start(config, data_dir).await?;
    let listeners: Vec<String> = hub
        .mqtt_listeners
        .iter()
        .map(|(p, a)| format!("{p} on {a}"))
        .collect();
    tracing::info!(
        mqtt = listeners.join(", "),
        http = %hub.http_addr,
        database = %hub.db_path.display(),
        hub_id = hub.hub_id,
        "smarthub ready"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    shutdown.await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}
