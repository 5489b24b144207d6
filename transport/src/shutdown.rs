//! [`Shutdown`]: the one way every long-running task of a process stops.
//!
//! Stopping has two steps. *Drain*: listeners stop accepting and work in
//! progress (a session, a web request) is left to finish. *Force*: after
//! the grace period whatever is left is ended. Work registers itself with
//! [`Shutdown::work`], so the drain waits for exactly that and no longer —
//! a gateway with no sessions stops at once, one with sessions waits at most
//! the grace. Every task started with [`Shutdown::spawn`] ends by the force
//! step at the latest (agent tunnels, idle connections, background jobs).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long tasks get to end after the force step before the process goes on without them.
const LINGER: Duration = Duration::from_secs(2);

/// The drain and force signals of a process, and the tasks and work that
/// follow them. Cheap to clone; every clone is the same shutdown.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    force: CancellationToken,
    tasks: TaskTracker,
    work: TaskTracker,
}

/// What [`Shutdown::stop`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Work still in progress when the grace period ended (it was forced).
    pub cut: usize,
    /// Tasks still running after the force step and its short linger.
    pub lingering: usize,
}

impl Shutdown {
    /// A shutdown that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `task` until it ends; it must end by itself once
    /// [`forced`](Self::forced) (or earlier, on [`draining`](Self::draining)).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Mark work in progress until the returned token drops: the drain
    /// waits for it (up to the grace period).
    pub fn work(&self) -> TaskTrackerToken {
        self.work.token()
    }

    /// Work in progress now.
    pub fn work_in_progress(&self) -> usize {
        self.work.len()
    }

    /// Resolves when draining starts (at once if it has).
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.drain.cancelled()
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when the grace period is over and the rest must end.
    pub fn forced(&self) -> WaitForCancellationFuture<'_> {
        self.force.cancelled()
    }

    /// Whether the force step has come.
    pub fn is_forced(&self) -> bool {
        self.force.is_cancelled()
    }

    /// The drain signal as a token, for APIs that take one.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Stop: drain, wait up to `grace` for the work in progress, force,
    /// and give every task a moment to end.
    pub async fn stop(&self, grace: Duration) -> Stopped {
        info!(
            work = self.work.len(),
            ?grace,
            "Shutting down: no new connections"
        );
        self.drain.cancel();
        self.work.close();
        let cut = match tokio::time::timeout(grace, self.work.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let cut = self.work.len();
                warn!(work = cut, "Grace period over: ending what remains");
                cut
            }
        };
        self.force.cancel();
        self.tasks.close();
        let lingering = match tokio::time::timeout(LINGER, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        };
        if lingering > 0 {
            warn!(tasks = lingering, "Tasks still running after the shutdown");
        }
        Stopped { cut, lingering }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_no_work_the_stop_does_not_wait_for_the_grace() {
        let s = Shutdown::new();
        let t = s.clone();
        // A background task that ends on drain.
        s.spawn(async move { t.draining().await });
        let r = tokio::time::timeout(Duration::from_secs(5), s.stop(Duration::from_secs(60))).await;
        assert_eq!(
            r.expect("stopped before the grace"),
            Stopped {
                cut: 0,
                lingering: 0
            }
        );
    }

    #[tokio::test]
    async fn work_gets_the_grace_and_is_forced_after_it() {
        let s = Shutdown::new();
        // Work that finishes inside the grace…
        let quick = s.work();
        s.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(quick);
        });
        // …and work that would run on: it ends at the force step.
        let slow = s.work();
        let t = s.clone();
        let ended_by_force = s.spawn(async move {
            let _w = slow;
            tokio::select! {
                _ = t.forced() => true,
                _ = tokio::time::sleep(Duration::from_secs(600)) => false,
            }
        });
        assert!(!s.is_draining());
        let r = s.stop(Duration::from_millis(300)).await;
        assert_eq!(
            r,
            Stopped {
                cut: 1,
                lingering: 0
            }
        );
        assert!(s.is_draining() && s.is_forced());
        assert!(ended_by_force.await.unwrap());
        assert_eq!(s.work_in_progress(), 0);
    }
}
