//! RSS and CPU time of a process, read from `/proc`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Clock ticks per second for `/proc/*/stat` times.
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident set size in KiB (0 when the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds used so far (`None` when the process is gone).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds on the [`crate::traffic::now_us`] clock.
    pub t: f64,
    /// RSS, KiB.
    pub rss_kib: u64,
    /// CPU over the last interval, percent of one core.
    pub cpu_pct: f64,
}

/// Samples a process every interval until cancelled.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// What a [`Sampler`] reads.
#[derive(Debug, Clone)]
enum Source {
    /// A local process, through `/proc` (its pid changeable after a restart).
    Pid(Arc<std::sync::atomic::AtomicU32>),
    /// A gateway on another machine, through its `/metrics`
    /// (`kakehashi_process_cpu_seconds`, `kakehashi_process_resident_bytes`).
    Metrics {
        addr: std::net::SocketAddr,
        path: String,
    },
}

impl Source {
    /// (identity, CPU seconds, RSS KiB) now.
    async fn read(&self) -> Option<(u32, f64, u64)> {
        match self {
            Source::Pid(pid) => {
                let p = pid.load(std::sync::atomic::Ordering::Relaxed);
                Some((p, cpu_secs(p)?, rss_kib(p)))
            }
            Source::Metrics { addr, path } => {
                let (cpu, rss) = scrape(*addr, path).await.ok()?;
                Some((0, cpu, rss / 1024))
            }
        }
    }
}

/// A gateway's CPU seconds and resident bytes, from its metrics at `addr`.
pub async fn scrape(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(f64, u64)> {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        kakehashi_tests::http_get(addr, path),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr}{path} did not answer within 5 s"))??;
    anyhow::ensure!(status == 200, "{addr}{path} answered {status}");
    let value = |name: &str| -> anyhow::Result<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{addr}{path} has no {name} (a gateway older than this load generator?)"
                )
            })
    };
    Ok((
        value("kakehashi_process_cpu_seconds")?,
        value("kakehashi_process_resident_bytes")? as u64,
    ))
}

/// `http://HOST:PORT/PATH` as an address and a path.
pub fn metrics_url(url: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    use std::net::ToSocketAddrs as _;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: the metrics URL must start with http://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("{url}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{url}: {host} has no address"))?;
    Ok((addr, format!("/{path}")))
}

impl Sampler {
    /// Start sampling `pid` (changeable through the atomic after a restart).
    pub fn start(
        pid: Arc<std::sync::atomic::AtomicU32>,
        every: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self::start_source(Source::Pid(pid), every, stop)
    }

    /// Start sampling a gateway on another machine through its metrics.
    pub fn start_metrics(
        addr: std::net::SocketAddr,
        path: String,
        every: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self::start_source(Source::Metrics { addr, path }, every, stop)
    }

    fn start_source(source: Source, every: Duration, stop: CancellationToken) -> Self {
        let me = Self::default();
        let samples = me.samples.clone();
        tokio::spawn(async move {
            let mut last: Option<(u32, Instant, f64)> = None;
            let mut tick = tokio::time::interval(every);
            // After a stall (a saturated machine), no burst of late ticks:
            // /proc counts CPU in 10 ms ticks, and a 1 ms interval holding
            // one of them would read as 1,000 %.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                // Intervals shorter than half the period: too coarse to read.
                if last.is_some_and(|(_, lt, _)| now.duration_since(lt) < every / 2) {
                    continue;
                }
                let Some((p, cpu, rss)) = source.read().await else {
                    continue;
                };
                let pct = match last {
                    Some((lp, lt, lc)) if lp == p => {
                        (cpu - lc) / now.duration_since(lt).as_secs_f64() * 100.0
                    }
                    _ => f64::NAN,
                };
                last = Some((p, now, cpu));
                if pct.is_nan() {
                    continue;
                }
                samples.lock().expect("samples").push(Sample {
                    t: crate::traffic::now_us() as f64 / 1e6,
                    rss_kib: rss,
                    cpu_pct: pct,
                });
            }
        });
        me
    }

    /// The most recent sample.
    pub fn last(&self) -> Option<Sample> {
        self.samples.lock().expect("samples").last().copied()
    }

    /// Samples with `t` in `[from, to)`.
    pub fn between(&self, from: f64, to: f64) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .filter(|s| s.t >= from && s.t < to)
            .copied()
            .collect()
    }

    /// Every sample so far.
    pub fn all(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }
}

/// Summary of CPU and RSS samples over a phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseUse {
    /// Mean CPU, percent of one core.
    pub cpu_mean_pct: f64,
    /// Highest one-second CPU, percent of one core.
    pub cpu_max_pct: f64,
    /// Mean CPU as a share of the whole machine (all cores), percent.
    pub cpu_mean_machine_pct: f64,
    /// Highest RSS, KiB.
    pub rss_max_kib: u64,
    /// Number of samples.
    pub samples: usize,
}

/// Summarise samples.
pub fn phase_use(s: &[Sample]) -> PhaseUse {
    if s.is_empty() {
        return PhaseUse::default();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mean = s.iter().map(|x| x.cpu_pct).sum::<f64>() / s.len() as f64;
    PhaseUse {
        cpu_mean_pct: mean,
        cpu_max_pct: s.iter().map(|x| x.cpu_pct).fold(0.0, f64::max),
        cpu_mean_machine_pct: mean / cores,
        rss_max_kib: s.iter().map(|x| x.rss_kib).max().unwrap_or(0),
        samples: s.len(),
    }
}

/// This process's soft limit on open files (`/proc/self/limits`); 1024 if unreadable.
pub fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}
