//! The runtime's scheduling delay (`[relay.limits] busy_delay`), and the
//! admission rule on it: while the gateway cannot run its tasks on time, a
//! new session is refused with `gateway_busy` instead of being admitted to
//! slow every live one down.
//!
//! The budget of bytes in flight ([`crate::budget`]) bounds memory, not
//! CPU: a gateway short of CPU (its core, its cgroup quota, a noisy
//! neighbour) queues every packet of every session behind the others, and
//! each session admitted then makes all of them slower. What they feel is
//! how late the runtime runs a task that is ready, so that is what is
//! measured: a probe sleeps [`PROBE`] at a time and records how late it
//! wakes (with the timer's 1 ms granularity: about 0.5 ms when idle). The
//! rule looks at the mean over the last [`WINDOW`], so one late wake-up is
//! not enough to refuse anybody and a stall of a second is. Live sessions
//! are never cut by it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How often the probe wakes.
pub(crate) const PROBE: Duration = Duration::from_millis(10);
/// The span the rule averages over.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The mean scheduling delay over the last [`WINDOW`], shared with the
/// admission rule.
#[derive(Debug)]
pub(crate) struct Delay {
    mean_us: AtomicU64,
    /// `None`: the rule is off (`busy_delay = "0s"`).
    limit: Option<Duration>,
}

impl Delay {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            mean_us: AtomicU64::new(0),
            limit: (!limit.is_zero()).then_some(limit),
        }
    }

    /// The mean delay over the last second.
    pub(crate) fn mean(&self) -> Duration {
        Duration::from_micros(self.mean_us.load(Ordering::Relaxed))
    }

    /// The configured limit, when the rule is on.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// Whether a new session is to be refused: the rule is on and the mean
    /// delay is above its limit.
    pub(crate) fn over(&self) -> bool {
        self.limit.is_some_and(|l| self.mean() > l)
    }
}

/// The last [`WINDOW`]'s worth of probe delays and their sum.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<u64>,
    sum: u64,
}

impl Window {
    const LEN: usize = (WINDOW.as_millis() / PROBE.as_millis()) as usize;

    /// Adds one probe's delay (µs) and returns the window's mean.
    fn push(&mut self, us: u64) -> u64 {
        if self.samples.len() == Self::LEN {
            self.sum -= self.samples.pop_front().unwrap_or(0);
        }
        self.samples.push_back(us);
        self.sum += us;
        self.sum / self.samples.len() as u64
    }
}

/// The probe: runs until the gateway stops, updating `delay` and the gauge
/// `kakehashi_scheduling_delay_seconds` after every wake-up.
pub(crate) async fn probe(delay: Arc<Delay>, gauge: prometheus::Gauge) {
    let mut window = Window::default();
    loop {
        let due = Instant::now() + PROBE;
        tokio::time::sleep_until(due).await;
        // A stall longer than the window counts as the window (it is
        // averaged with nothing else).
        let late = Instant::now().saturating_duration_since(due).min(WINDOW);
        let mean = window.push(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        delay.mean_us.store(mean, Ordering::Relaxed);
        gauge.set(mean as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_one_second_of_samples() {
        let mut w = Window::default();
        assert_eq!(w.push(1000), 1000);
        assert_eq!(w.push(3000), 2000);
        for _ in 0..Window::LEN {
            w.push(500);
        }
        assert_eq!(w.samples.len(), Window::LEN);
        assert_eq!(w.push(500), 500, "the old samples have left the window");
    }

    #[test]
    fn a_zero_limit_turns_the_rule_off() {
        let d = Delay::new(Duration::ZERO);
        d.mean_us.store(u64::MAX, Ordering::Relaxed);
        assert!(!d.over());
        let d = Delay::new(Duration::from_millis(20));
        d.mean_us.store(20_000, Ordering::Relaxed);
        assert!(!d.over(), "at the limit is not over it");
        d.mean_us.store(20_001, Ordering::Relaxed);
        assert!(d.over());
    }

    /// A runtime whose only thread is blocked runs nothing on time: the
    /// probe sees it and the rule refuses.
    #[test]
    fn a_blocked_runtime_is_over_the_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let delay = Arc::new(Delay::new(Duration::from_millis(20)));
        let gauge = prometheus::Gauge::new("d", "d").unwrap();
        rt.block_on(async {
            tokio::spawn(probe(delay.clone(), gauge.clone()));
            tokio::time::sleep(PROBE * 3).await;
            // Hold the only thread for 1.5 s, as a starved gateway would be.
            std::thread::sleep(Duration::from_millis(1500));
            tokio::time::sleep(PROBE * 2).await;
        });
        assert!(delay.over(), "mean {:?}", delay.mean());
        assert!(gauge.get() > 0.02, "gauge {}", gauge.get());
    }
}
