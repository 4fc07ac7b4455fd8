//! The processes a benchmark starts (the hub, stock rumqttd, mosquitto, the idle-client process) and
//! what Linux tells about them: resident memory and CPU time from `/proc`. Every process is killed
//! when its handle drops, so an interrupted run leaves nothing behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::mqtt::Conn;

/// A loopback port nobody holds right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop and waits for it (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) with a pid we own (our child, not yet reaped) has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory so far.
    pub fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmHWM:")
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_s(&self) -> Option<f64> {
        cpu_s(&format!("/proc/{}/stat", self.pid()))
    }

    /// CPU seconds used so far by each thread name (threads of one name summed: "mqtt", "engine", ...).
    pub fn threads_cpu_s(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for task in dir.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if let Some(cpu) = cpu_s(&path.join("stat").to_string_lossy()) {
                *out.entry(name.trim().to_owned()).or_default() += cpu;
            }
        }
        out
    }

    /// Fails when the process has exited (with its status).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn cpu_s(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds this process (the load generator) used so far.
pub fn self_cpu_s() -> f64 {
    cpu_s("/proc/self/stat").unwrap_or(0.0)
}

/// Whole-machine CPU time so far, summed over all cores, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// user + nice + system: processes (ours and everyone else's).
    pub processes: f64,
    /// irq + softirq: the kernel's interrupt work, loopback networking included.
    pub irq: f64,
    /// Time the hypervisor gave to other virtual machines.
    pub steal: f64,
}

pub fn machine_cpu_s() -> MachineCpu {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return MachineCpu::default();
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let f = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let hz = clock_ticks();
    // Fields: user nice system idle iowait irq softirq steal.
    MachineCpu {
        processes: (f(0) + f(1) + f(2)) / hz,
        irq: (f(5) + f(6)) / hz,
        steal: f(7) / hz,
    }
}

/// CPU use over a window: the load generator, the process under test, and everything else.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// Cores (CPU seconds per second) the bench process used: publishers, subscriber, polling.
    pub generator: f64,
    /// Cores the process under test used.
    pub target: f64,
    /// Cores every other process on the machine used (the other engineers' builds and tests).
    pub others: f64,
    /// Cores of kernel interrupt work (irq + softirq, mostly loopback networking here).
    pub irq: f64,
    /// Cores the hypervisor took away (steal).
    pub steal: f64,
}

/// A snapshot to measure [`CpuUse`] from.
pub struct CpuMark {
    at: Instant,
    me: f64,
    target: f64,
    machine: MachineCpu,
}

impl CpuMark {
    pub fn now(target: Option<&Proc>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            me: self_cpu_s(),
            target: target.and_then(Proc::cpu_s).unwrap_or(0.0),
            machine: machine_cpu_s(),
        }
    }

    pub fn since(&self, target: Option<&Proc>) -> CpuUse {
        let later = CpuMark::now(target);
        let wall = (later.at - self.at).as_secs_f64().max(1e-3);
        let generator = (later.me - self.me) / wall;
        let target = (later.target - self.target) / wall;
        let processes = (later.machine.processes - self.machine.processes) / wall;
        CpuUse {
            generator,
            target,
            others: (processes - generator - target).max(0.0),
            irq: (later.machine.irq - self.machine.irq) / wall,
            steal: (later.machine.steal - self.machine.steal) / wall,
        }
    }
}

/// Waits until an MQTT CONNECT to `addr` is answered.
pub async fn wait_mqtt(addr: SocketAddr, proc: &mut Proc) -> anyhow::Result<()> {
    // Generous: a hub started under valgrind takes a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.check_alive()?;
        if let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(2),
            Conn::connect(addr, "bench-ready-probe", 30),
        )
        .await
        {
            drop(conn);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not accept MQTT on {addr} within 60 s", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which broker a measurement ran against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Smarthub,
    Rumqttd,
    Mosquitto,
    /// The hub without its backpressure (`[hub] ingest_pause_max_ms = 0`, `broker_nice = 0`): what the
    /// ingest section compares the hub with to show what holding the connections back costs and saves.
    #[serde(rename = "smarthub-unheld")]
    SmarthubUnheld,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Smarthub => "smarthub",
            Target::Rumqttd => "rumqttd",
            Target::Mosquitto => "mosquitto",
            Target::SmarthubUnheld => "smarthub-unheld",
        }
    }

    /// Whether this is the hub (persisting to SQLite), in any configuration.
    pub fn is_hub(self) -> bool {
        matches!(self, Target::Smarthub | Target::SmarthubUnheld)
    }
}

/// The default config with the hub's backpressure turned off (see [`Target::SmarthubUnheld`]).
fn unheld_config() -> anyhow::Result<String> {
    let mut text = smarthub::config::DEFAULT_CONFIG.to_owned();
    for (from, to) in [
        (
            "\ningest_pause_max_ms = 500\n",
            "\ningest_pause_max_ms = 0\n",
        ),
        ("\nbroker_nice = 19\n", "\nbroker_nice = 0\n"),
    ] {
        if !text.contains(from) {
            bail!(
                "broker.toml no longer has `{}`: update the bench's smarthub-unheld config",
                from.trim()
            );
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub smarthub: PathBuf,
    pub rumqttd: Option<PathBuf>,
    pub mosquitto: Option<PathBuf>,
    /// Scratch space; every started process gets a directory below it.
    pub scratch: PathBuf,
    /// A profiler to run the hub under (empty: none).
    pub hub_wrapper: Vec<String>,
    /// The brokers to measure (`--targets`).
    pub only: Vec<Target>,
}

/// A started broker (or hub) and its addresses.
pub struct Running {
    pub proc: Proc,
    pub mqtt: SocketAddr,
    /// The hub's HTTP address (smarthub only).
    pub http: Option<SocketAddr>,
    pub dir: PathBuf,
}

/// rumqttd's config for the comparison: its own schema, plain (no TLS, console or metrics).
pub const RUMQTTD_CONFIG: &str = include_str!("../../bench/rumqttd.toml");
/// mosquitto's config for the comparison: defaults, one loopback listener, anonymous, no persistence.
pub const MOSQUITTO_CONFIG: &str = include_str!("../../bench/mosquitto.conf");

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let f = std::fs::File::create(dir.join(name))
        .with_context(|| format!("cannot create {}", dir.join(name).display()))?;
    Ok(Stdio::from(f))
}

impl Programs {
    fn fresh_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.scratch.join(format!("{name}-{n}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    pub fn available(&self, target: Target) -> bool {
        self.only.contains(&target)
            && match target {
                Target::Smarthub | Target::SmarthubUnheld => true,
                Target::Rumqttd => self.rumqttd.is_some(),
                Target::Mosquitto => self.mosquitto.is_some(),
            }
    }

    /// The targets to measure, in the order runs take turns.
    pub fn targets(&self) -> Vec<Target> {
        [
            Target::Smarthub,
            Target::Rumqttd,
            Target::Mosquitto,
            Target::SmarthubUnheld,
        ]
        .into_iter()
        .filter(|t| self.available(*t))
        .collect()
    }

    /// Starts `target` on free loopback ports in a fresh directory and waits until it serves MQTT.
    pub async fn start(&self, target: Target) -> anyhow::Result<Running> {
        let dir = self.fresh_dir(target.name())?;
        self.start_in(target, dir).await
    }

    async fn start_in(&self, target: Target, dir: PathBuf) -> anyhow::Result<Running> {
        let port = free_port()?;
        let mqtt = loopback(port);
        let mut http = None;
        let mut cmd = match target {
            Target::Smarthub | Target::SmarthubUnheld => {
                let http_addr = loopback(free_port()?);
                http = Some(http_addr);
                let mut c = match self.hub_wrapper.split_first() {
                    Some((wrapper, args)) => {
                        let mut c = Command::new(wrapper);
                        c.args(args).arg(&self.smarthub);
                        c
                    }
                    None => Command::new(&self.smarthub),
                };
                // The hub as users get it: the built-in default config (no broker.toml in its working
                // directory), only the listen addresses changed.
                c.args(["run", "--data-dir"])
                    .arg(&dir)
                    .args(["--mqtt-listen", &mqtt.to_string()])
                    .args(["--http-listen", &http_addr.to_string()])
                    .env_remove("CONFIGURATION_DIRECTORY")
                    .env_remove("STATE_DIRECTORY")
                    .env("RUST_LOG", "warn,rumqttd=off");
                if target == Target::SmarthubUnheld {
                    let config = dir.join("unheld.toml");
                    std::fs::write(&config, unheld_config()?)?;
                    c.arg("--config").arg(&config);
                }
                c
            }
            Target::Rumqttd => {
                let bin = self.rumqttd.as_ref().context("rumqttd is not installed")?;
                let config = dir.join("rumqttd.toml");
                std::fs::write(
                    &config,
                    RUMQTTD_CONFIG.replace("127.0.0.1:1883", &mqtt.to_string()),
                )?;
                let mut c = Command::new(bin);
                c.arg("-q").arg("-c").arg(&config);
                c
            }
            Target::Mosquitto => {
                let bin = self
                    .mosquitto
                    .as_ref()
                    .context("mosquitto is not installed")?;
                let config = dir.join("mosquitto.conf");
                std::fs::write(
                    &config,
                    MOSQUITTO_CONFIG.replace("listener 1883", &format!("listener {port}")),
                )?;
                let mut c = Command::new(bin);
                c.arg("-c").arg(&config);
                c
            }
        };
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log_file(&dir, "stdout.log")?)
            .stderr(log_file(&dir, "stderr.log")?);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", target.name()))?;
        let mut proc = Proc {
            name: target.name().into(),
            child,
        };
        let ready = wait_mqtt(mqtt, &mut proc).await;
        if let Err(e) = ready {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!("{e:#}; its stderr ends with: {}", tail.join(" | "));
        }
        Ok(Running {
            proc,
            mqtt,
            http,
            dir,
        })
    }
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass and nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unheld_hub_differs_from_the_default_only_in_backpressure() {
        let text = unheld_config().unwrap();
        let unheld = smarthub::config::Config::parse(&text, "unheld.toml").unwrap();
        let default = smarthub::config::Config::default_config();
        assert_eq!(unheld.hub.ingest_pause_max_ms, 0);
        assert_eq!(unheld.hub.broker_nice, 0);
        assert_ne!(default.hub.ingest_pause_max_ms, 0);
        assert_eq!(unheld.hub.ingest_backlog, default.hub.ingest_backlog);
        let changed = text
            .lines()
            .zip(smarthub::config::DEFAULT_CONFIG.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 2);
    }
}
