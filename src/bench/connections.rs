//! Connections and memory: 10,000 concurrent idle MQTT clients, run from a separate process (`smarthub
//! bench idle-clients`), against the hub and the two reference brokers: the connect rate, the broker's
//! resident memory before (idle) and with every client connected, and whether they all stayed connected.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use smarthub::broker::count_tcp_sockets;

use super::mqtt::Conn;
use super::procs::{self, Proc, Programs, Target};
use super::stats::{thousands, Runs};

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsRun {
    pub target: Target,
    pub clients: usize,
    pub connected: usize,
    pub failed: usize,
    /// Seconds from the first connect to the last CONNACK.
    pub connect_secs: f64,
    pub connect_rate: f64,
    /// Connections the broker still held 2 s after the last CONNACK.
    pub established: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_clients_kib: Option<u64>,
    /// The client process: its CPU seconds while connecting, and its memory.
    pub client_cpu_s: Option<f64>,
    pub client_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsCell {
    pub target: Target,
    pub runs: Vec<ConnectionsRun>,
}

impl ConnectionsCell {
    pub fn series(&self, pick: impl Fn(&ConnectionsRun) -> Option<f64>) -> Runs {
        let mut r = Runs::default();
        for run in &self.runs {
            if let Some(v) = pick(run) {
                r.push(v);
            }
        }
        r
    }
}

async fn one(
    programs: &Programs,
    target: Target,
    clients: usize,
) -> anyhow::Result<ConnectionsRun> {
    let mut running = programs.start(target).await?;
    // Idle: started, nothing connected, allocations settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = running.proc.rss_kib();

    let exe = std::env::current_exe().context("cannot find the smarthub binary")?;
    let mut child = Command::new(exe)
        .args(["bench", "idle-clients", "--addr"])
        .arg(running.mqtt.to_string())
        .args(["--clients", &clients.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the idle-client process")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("no stdout")?;
    let mut client = Proc {
        name: "idle-clients".into(),
        child,
    };
    let line = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            reader.read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .context("the idle clients did not finish connecting within 180 s")???;
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    let (Some(connected), Some(failed), Some(secs)) =
        (field("connected"), field("failed"), field("secs"))
    else {
        bail!("unexpected report from the idle-client process: {line:?}");
    };
    let client_cpu_s = client.cpu_s();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.proc.check_alive()?;
    let rss_clients_kib = running.proc.rss_kib();
    let established = count_tcp_sockets("01", &[running.mqtt.port()]);
    let client_rss_kib = client.rss_kib();
    // Closing its stdin tells the client process to disconnect everything and exit.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = client.child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.stop(Duration::from_secs(2));
    running.proc.stop(Duration::from_secs(10));
    Ok(ConnectionsRun {
        target,
        clients,
        connected: connected as usize,
        failed: failed as usize,
        connect_secs: secs,
        connect_rate: connected / secs.max(1e-3),
        established,
        rss_idle_kib,
        rss_clients_kib,
        client_cpu_s,
        client_rss_kib,
    })
}

pub async fn run(
    programs: &Programs,
    runs: usize,
    clients: usize,
) -> anyhow::Result<Vec<ConnectionsCell>> {
    let mut cells: Vec<ConnectionsCell> = programs
        .targets()
        .into_iter()
        // Backpressure changes nothing for idle clients.
        .filter(|t| *t != Target::SmarthubUnheld)
        .map(|target| ConnectionsCell {
            target,
            runs: Vec::new(),
        })
        .collect();
    for rep in 0..runs {
        for cell in cells.iter_mut() {
            let r = one(programs, cell.target, clients)
                .await
                .with_context(|| format!("{clients} idle clients on {}", cell.target.name()))?;
            let mib =
                |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            eprintln!(
                "connections {:<9} run {}/{runs}: {} of {} connected in {:.1} s ({}/s), {} still connected; RSS idle {} MiB, with clients {} MiB",
                cell.target.name(),
                rep + 1,
                thousands(r.connected as f64),
                thousands(clients as f64),
                r.connect_secs,
                thousands(r.connect_rate),
                r.established.map_or("?".into(), |n| thousands(n as f64)),
                mib(r.rss_idle_kib),
                mib(r.rss_clients_kib),
            );
            cell.runs.push(r);
        }
    }
    Ok(cells)
}

/// The idle-client process: connects `clients` clients to `addr` (at most 256 connecting at once),
/// prints `connected=N failed=F secs=S` on one line, then holds them until standard input closes.
pub fn idle_clients(addr: SocketAddr, clients: usize, keep_alive_s: u16) -> anyhow::Result<()> {
    let limit = procs::raise_fd_limit();
    if (limit as usize) < clients + 64 {
        bail!("the open-file limit is {limit}, too low for {clients} clients: raise it (ulimit -n) or use fewer --clients");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let conns = rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(256));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for i in 0..clients {
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.ok()?;
                for _ in 0..3 {
                    if let Ok(Ok(c)) = tokio::time::timeout(
                        Duration::from_secs(30),
                        Conn::connect(addr, &format!("idle-{i}"), keep_alive_s),
                    )
                    .await
                    {
                        return Some((c, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            }));
        }
        let mut conns = Vec::with_capacity(clients);
        let mut last = start;
        let mut failed = 0;
        for t in tasks {
            match t.await.ok().flatten() {
                Some((c, at)) => {
                    last = last.max(at);
                    conns.push(c);
                }
                None => failed += 1,
            }
        }
        println!(
            "connected={} failed={failed} secs={:.3}",
            conns.len(),
            (last - start).as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        conns
    });
    // Hold until the parent closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(conns);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
