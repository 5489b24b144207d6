//! The one reconnect backoff (STYLE.md §10): exponential, capped and jittered,
//! from `backon`, so the agent's tunnels, the gateway's syslog forwarder and
//! the load generator's fleet share the same settings.
//!
//! Each delay is drawn uniformly from `[d/2, d)`, where `d` starts at the
//! configured initial delay and doubles up to the configured maximum: the
//! jitter spreads a reconnect storm (every agent of a town hall after a
//! gateway restart) and no delay exceeds the maximum. backon's jitter adds
//! `[0, d)` to `d`, so it is given half of each bound.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};

/// A backon builder with the reconnect settings: delays in `[d/2, d)`, `d`
/// doubling from `initial` to `max`, never giving up.
pub fn reconnect(initial: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(initial / 2)
        .with_max_delay(max.max(initial) / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// A moment drawn uniformly from `[0, within)`: where in a window a peer
/// told to spread its return (a gateway's `restarting` notice) comes back.
pub fn spread(within: Duration) -> Duration {
    within.mul_f64(rand::random::<f64>())
}

/// The delays of one reconnect loop: [`Reconnect::next_delay`] before each
/// new attempt, [`Reconnect::reset`] once a connection has stayed up long
/// enough to count as stable.
#[derive(Debug)]
pub struct Reconnect {
    builder: ExponentialBuilder,
    delays: <ExponentialBuilder as backon::BackoffBuilder>::Backoff,
}

impl Reconnect {
    /// Delays from `initial` up to `max` (see [`reconnect`]).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = reconnect(initial, max);
        Self {
            builder,
            delays: builder.build(),
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times`: the iterator never ends; the fallback is the
        // first delay again, never a busy loop.
        self.delays.next().unwrap_or_else(|| {
            self.reset();
            self.delays.next().unwrap_or(Duration::from_secs(1))
        })
    }

    /// Start again from the initial delay (after a stable connection).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_and_stay_under_the_cap() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let mut r = Reconnect::new(initial, max);
        let mut d = initial;
        for _ in 0..20 {
            let delay = r.next_delay();
            assert!(
                delay >= d / 2 && delay < d,
                "{delay:?} not in [{:?}, {d:?})",
                d / 2
            );
            d = (d * 2).min(max);
        }
    }

    #[test]
    fn reset_starts_from_the_initial_delay() {
        let initial = Duration::from_millis(100);
        let mut r = Reconnect::new(initial, Duration::from_secs(10));
        for _ in 0..10 {
            r.next_delay();
        }
        r.reset();
        let delay = r.next_delay();
        assert!(delay >= initial / 2 && delay < initial, "{delay:?}");
    }

    #[test]
    fn spread_stays_in_its_window_and_varies() {
        let w = Duration::from_secs(10);
        let picks: Vec<Duration> = (0..64).map(|_| spread(w)).collect();
        assert!(picks.iter().all(|d| *d < w), "{picks:?}");
        assert!(picks.iter().any(|d| *d > w / 2) && picks.iter().any(|d| *d < w / 2));
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jitter_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..16 {
            seen.insert(
                Reconnect::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(),
            );
        }
        assert!(seen.len() > 1, "every delay the same: {seen:?}");
    }
}
