//! The gateway's load, and the admission rules on it (`[relay.limits]
//! busy_cpu_percent` and `busy_delay`): while the gateway is short of CPU,
//! a new session is refused with `gateway_busy` instead of being admitted
//! to slow every live one down. Live sessions are never cut by them.
//!
//! The budget of bytes in flight ([`crate::budget`]) bounds memory, not
//! CPU. A gateway short of CPU (its cores, its cgroup quota, a noisy
//! neighbour) falls behind on every session at once: their bytes wait in
//! the sockets' buffers, and each session admitted makes the wait longer.
//! Two figures, each a mean over the last [`WINDOW`]:
//!
//! - **CPU**: the CPU time the process used, against the CPU it may use
//!   (the cores it may run on, or its cgroup's quota when lower). Past
//!   capacity this is what reaches its ceiling: the bytes queue in the
//!   kernel, not in the runtime, so the runtime itself stays punctual.
//! - **Scheduling delay**: how late a probe that sleeps [`PROBE`] at a time
//!   wakes (with the timer's 1 ms granularity: about 0.5 ms when idle). It
//!   sees what CPU time does not: a process stopped or starved by others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How often the probe wakes.
pub(crate) const PROBE: Duration = Duration::from_millis(10);
/// The span each figure is averaged over.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// How often the CPU time is read (every tenth probe).
const CPU_EVERY: u32 = 10;
/// From this fraction of the CPU limit on, sessions are admitted at most
/// one per [`PACE`]: a new session's traffic shows in the CPU figure (a
/// mean over the last second) only after it has started, so a storm
/// admitted at full speed up to the limit overshoots it.
const NEAR: f64 = 0.8;
/// One admission per this while near the CPU limit.
const PACE: Duration = Duration::from_millis(100);

/// Why a new session is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Busy {
    /// CPU in use, percent of what the gateway may use, at its limit; or
    /// (`paced`) near it, and a session was admitted less than [`PACE`] ago.
    Cpu {
        percent: f64,
        limit: f64,
        paced: bool,
    },
    /// Scheduling delay over its limit.
    Delay { delay: Duration, limit: Duration },
}

/// The figures, shared with the admission rule.
#[derive(Debug)]
pub(crate) struct Load {
    delay_us: AtomicU64,
    /// Percent of the available CPU (an `f64`'s bits).
    cpu_percent: AtomicU64,
    /// `None`: the rule is off (`busy_delay = "0s"`).
    delay_limit: Option<Duration>,
    /// `None`: the rule is off (`busy_cpu_percent = 0`).
    cpu_limit: Option<f64>,
    /// When the next session may be admitted near the CPU limit, ms from `epoch`.
    paced_at: AtomicU64,
    epoch: std::time::Instant,
}

impl Load {
    pub(crate) fn new(delay_limit: Duration, cpu_limit_percent: u32) -> Self {
        Self {
            delay_us: AtomicU64::new(0),
            cpu_percent: AtomicU64::new(0),
            delay_limit: (!delay_limit.is_zero()).then_some(delay_limit),
            cpu_limit: (cpu_limit_percent > 0).then_some(f64::from(cpu_limit_percent)),
            paced_at: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// The mean scheduling delay over the last second.
    pub(crate) fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// CPU in use over the last second, percent of what the gateway may use.
    pub(crate) fn cpu_percent(&self) -> f64 {
        f64::from_bits(self.cpu_percent.load(Ordering::Relaxed))
    }

    /// Whether a new session is to be refused, and why: a rule that is on
    /// and whose figure is above its limit.
    pub(crate) fn busy(&self) -> Option<Busy> {
        let (percent, delay) = (self.cpu_percent(), self.delay());
        if let Some(limit) = self.cpu_limit.filter(|l| percent >= *l) {
            return Some(Busy::Cpu {
                percent,
                limit,
                paced: false,
            });
        }
        self.delay_limit
            .filter(|l| delay > *l)
            .map(|limit| Busy::Delay { delay, limit })
    }

    /// Whether a new session may be admitted now: not [`Load::busy`], and
    /// near the CPU limit not within [`PACE`] of the last admission there.
    pub(crate) fn admit(&self) -> Result<(), Busy> {
        if let Some(b) = self.busy() {
            return Err(b);
        }
        let percent = self.cpu_percent();
        let Some(limit) = self.cpu_limit.filter(|l| percent >= l * NEAR) else {
            return Ok(());
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now = ms(self.epoch.elapsed());
        let next = self.paced_at.load(Ordering::Relaxed);
        let then = now.saturating_add(ms(PACE));
        if now >= next
            && self
                .paced_at
                .compare_exchange(next, then, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Ok(())
        } else {
            Err(Busy::Cpu {
                percent,
                limit,
                paced: true,
            })
        }
    }
}

/// The last [`WINDOW`]'s worth of samples and their sum.
#[derive(Debug)]
struct Window {
    samples: VecDeque<u64>,
    sum: u64,
    len: usize,
}

impl Window {
    fn new(len: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(len),
            sum: 0,
            len,
        }
    }

    /// Adds one sample and returns the window's sum.
    fn push(&mut self, x: u64) -> u64 {
        if self.samples.len() == self.len {
            self.sum -= self.samples.pop_front().unwrap_or(0);
        }
        self.samples.push_back(x);
        self.sum += x;
        self.sum
    }

    fn count(&self) -> u64 {
        self.samples.len() as u64
    }
}

/// The probe: runs until `shutdown` starts draining (from then on every
/// new session is refused with `restarting`, and a probe left running would
/// hold the stop for its whole linger), updating `load` and the gauges
/// `kakehashi_scheduling_delay_seconds` and `kakehashi_cpu_used_ratio`.
pub(crate) async fn probe(
    load: Arc<Load>,
    delay_gauge: prometheus::Gauge,
    cpu_gauge: prometheus::Gauge,
    shutdown: kakehashi_transport::shutdown::Shutdown,
) {
    let probes = (WINDOW.as_millis() / PROBE.as_millis()) as usize;
    let mut delays = Window::new(probes);
    // CPU microseconds used and wall microseconds passed, per interval.
    let (mut used, mut wall) = (Window::new(probes / 10), Window::new(probes / 10));
    let cpus = available_cpus();
    let mut last = (Instant::now(), cpu_time());
    let mut n = 0u32;
    loop {
        let due = Instant::now() + PROBE;
        tokio::select! {
            _ = shutdown.draining() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        // A stall longer than the window counts as the window.
        let late = Instant::now().saturating_duration_since(due).min(WINDOW);
        let sum = delays.push(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        let mean = sum / delays.count();
        load.delay_us.store(mean, Ordering::Relaxed);
        delay_gauge.set(mean as f64 / 1e6);
        n += 1;
        if n.is_multiple_of(CPU_EVERY) {
            let now = (Instant::now(), cpu_time());
            let dt = now.0.saturating_duration_since(last.0);
            let du = now.1.saturating_sub(last.1);
            last = now;
            let used = used.push(u64::try_from(du.as_micros()).unwrap_or(u64::MAX));
            let wall = wall.push(u64::try_from(dt.as_micros()).unwrap_or(u64::MAX));
            let ratio = used as f64 / (wall.max(1) as f64 * cpus);
            load.cpu_percent
                .store((ratio * 100.0).to_bits(), Ordering::Relaxed);
            cpu_gauge.set(ratio);
        }
    }
}

/// CPU time this process has used, user and system.
fn cpu_time() -> Duration {
    Duration::from_secs_f64(crate::metrics::process::cpu_secs())
}

/// The CPU this process may use, in cores: the CPUs it may run on, or its
/// cgroup's quota (v1 or v2) when that is lower.
pub(crate) fn available_cpus() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cgroup_quota().map_or(cores, |q| q.min(cores))
}

/// The CPU quota of this process's cgroup, in cores, if it has one.
fn cgroup_quota() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            // v2: "max 100000" or "QUOTA PERIOD".
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/cpu.max")).ok();
            if let Some(q) = max.as_deref().and_then(parse_v2) {
                return Some(q);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let dir = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
                .iter()
                .map(|root| format!("{root}/{path}"))
                .find(|d| std::path::Path::new(d).join("cpu.cfs_quota_us").exists())?;
            let read = |f: &str| {
                std::fs::read_to_string(format!("{dir}/{f}"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
            };
            let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
            return (quota > 0 && period > 0).then(|| quota as f64 / period as f64);
        }
    }
    None
}

/// `cpu.max` of cgroup v2: `max PERIOD` (no quota) or `QUOTA PERIOD`.
fn parse_v2(s: &str) -> Option<f64> {
    let mut f = s.split_whitespace();
    let quota = f.next()?.parse::<f64>().ok()?;
    let period = f.next()?.parse::<f64>().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_its_last_samples() {
        let mut w = Window::new(100);
        assert_eq!(w.push(1000), 1000);
        assert_eq!(w.push(3000), 4000);
        for _ in 0..100 {
            w.push(500);
        }
        assert_eq!(w.count(), 100);
        assert_eq!(w.push(500), 50_000, "the old samples have left the window");
    }

    #[test]
    fn each_rule_refuses_above_its_limit_and_zero_turns_it_off() {
        let off = Load::new(Duration::ZERO, 0);
        off.delay_us.store(u64::MAX / 2, Ordering::Relaxed);
        off.cpu_percent.store(100f64.to_bits(), Ordering::Relaxed);
        assert_eq!(off.busy(), None);

        let l = Load::new(Duration::from_millis(20), 90);
        l.delay_us.store(20_000, Ordering::Relaxed);
        l.cpu_percent.store(89.99f64.to_bits(), Ordering::Relaxed);
        assert_eq!(l.busy(), None, "at the delay limit is not over it");
        l.delay_us.store(20_001, Ordering::Relaxed);
        assert!(matches!(l.busy(), Some(Busy::Delay { .. })));
        // Near the CPU limit: one admission per PACE.
        l.delay_us.store(0, Ordering::Relaxed);
        l.cpu_percent.store(80f64.to_bits(), Ordering::Relaxed);
        assert_eq!(l.admit(), Ok(()));
        assert!(matches!(l.admit(), Err(Busy::Cpu { paced: true, .. })));
        l.paced_at.store(0, Ordering::Relaxed);
        assert_eq!(l.admit(), Ok(()), "a PACE later");
        l.cpu_percent.store(71f64.to_bits(), Ordering::Relaxed);
        assert_eq!(l.admit(), Ok(()));
        assert_eq!(l.admit(), Ok(()), "below NEAR: not paced");
        l.cpu_percent.store(90f64.to_bits(), Ordering::Relaxed);
        assert_eq!(
            l.busy(),
            Some(Busy::Cpu {
                percent: 90.0,
                limit: 90.0,
                paced: false
            })
        );
    }

    #[test]
    fn cgroup_v2_quotas_parse() {
        assert_eq!(parse_v2("max 100000\n"), None);
        assert_eq!(parse_v2("25000 100000\n"), Some(0.25));
        assert_eq!(parse_v2("200000 100000"), Some(2.0));
        assert_eq!(parse_v2(""), None);
        let cpus = available_cpus();
        assert!(cpus > 0.0 && cpus <= 4096.0, "{cpus}");
    }

    /// A runtime whose only thread is blocked runs nothing on time: the
    /// probe sees it and the rule refuses.
    #[test]
    fn a_blocked_runtime_is_over_the_delay_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let load = Arc::new(Load::new(Duration::from_millis(20), 0));
        let gauge = prometheus::Gauge::new("d", "d").unwrap();
        let cpu = prometheus::Gauge::new("c", "c").unwrap();
        rt.block_on(async {
            tokio::spawn(probe(load.clone(), gauge.clone(), cpu, Default::default()));
            tokio::time::sleep(PROBE * 3).await;
            // Hold the only thread for 1.5 s, as a starved gateway would be.
            std::thread::sleep(Duration::from_millis(1500));
            tokio::time::sleep(PROBE * 2).await;
        });
        assert!(
            matches!(load.busy(), Some(Busy::Delay { .. })),
            "{:?}",
            load.delay()
        );
        assert!(gauge.get() > 0.02, "gauge {}", gauge.get());
    }

    /// A runtime that spins on its CPU for a second uses all of one core:
    /// at least the share of the CPU one core is of what the process may
    /// use, less the tick granularity.
    #[test]
    fn a_spinning_runtime_is_over_the_cpu_limit() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        // A fifth of a core, in percent of what the process may use: a
        // loaded test machine still gives the spinner that.
        let fifth_of_a_core = 20.0 / available_cpus();
        let load = Arc::new(Load::new(Duration::ZERO, 1));
        let (d, c) = (
            prometheus::Gauge::new("d", "d").unwrap(),
            prometheus::Gauge::new("c", "c").unwrap(),
        );
        rt.block_on(async {
            tokio::spawn(probe(load.clone(), d, c.clone(), Default::default()));
            // Spin on a blocking thread (the workers stay free for the
            // probe) until the probe has seen a whole window of it.
            let spin = tokio::task::spawn_blocking(|| {
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_millis(1600) {
                    std::hint::black_box(0u64);
                }
            });
            spin.await.unwrap();
        });
        assert!(
            matches!(load.busy(), Some(Busy::Cpu { .. })),
            "{} % of {} cores",
            load.cpu_percent(),
            available_cpus()
        );
        assert!(
            load.cpu_percent() >= fifth_of_a_core,
            "{} % of {} cores",
            load.cpu_percent(),
            available_cpus()
        );
        assert!(c.get() > 0.0);
    }
}
