//! Child processes that do not outlive their parent.
//!
//! `tokio::process::Command::kill_on_drop` ends a child when its `Child` is
//! dropped, which needs the parent to run its destructors: a parent killed
//! with SIGKILL (a test harness's timeout, an operator's `kill -9`, the OOM
//! killer) leaves its children running, orphaned. [`die_with_parent`] asks
//! the kernel instead (`prctl(PR_SET_PDEATHSIG, SIGKILL)`, Linux): the child
//! gets SIGKILL as soon as its parent dies, however it dies.
//!
//! The kernel's "parent" is the *thread* that spawned the child: the child
//! is killed when that thread exits, even while the process lives on. Spawn
//! from the main thread or from a Tokio runtime's worker threads (which live
//! as long as the runtime), never from `spawn_blocking` or another
//! short-lived thread.
//!
//! The signal survives `execve` (except into set-user-ID programs, which
//! none of ours are), so it applies to the program run, not only to the
//! forked copy of the parent. It reaches the direct child only: a child
//! that starts programs of its own must tie them to itself the same way
//! (`setpriv --pdeathsig` in a shell script).
//!
//! Elsewhere than Linux, [`die_with_parent`] does nothing.
//!
//! [`ask_to_stop`] sends a child the signal that asks it to stop in good
//! order (SIGTERM, or SIGINT for PostgreSQL's fast shutdown), for a parent
//! that stops its children one after the other rather than all at once.
//!
//! This is the workspace's only unsafe code (`Command::pre_exec`).

use std::process::Command;

/// Make the child that `cmd` spawns get SIGKILL when the spawning thread
/// (see the crate docs) or its process dies. For a Tokio command, pass
/// `cmd.as_std_mut()`.
///
/// Should the parent already be gone by the time the child sets this up
/// (it died between `fork` and `prctl`), the child exits before running the
/// program and the spawn fails.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;

        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before `exec`, where
        // only async-signal-safe calls are allowed: it makes two raw system
        // calls (prctl, getppid) through rustix, allocates nothing, takes no
        // lock and touches no state shared with the parent's other threads.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                let os_error =
                    |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(os_error)?;
                // The parent may have died before the line above ran: then
                // no signal will come, and this child now has another parent.
                if rustix::process::getppid() != Some(parent) {
                    return Err(os_error(rustix::io::Errno::SRCH));
                }
                Ok(())
            });
        }
    }
    cmd
}

/// The signal [`ask_to_stop`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopSignal {
    /// SIGTERM: our programs drain and stop (`kakehashi-gateway` waits
    /// `[relay.limits] shutdown_grace`).
    Term,
    /// SIGINT: PostgreSQL's "fast" shutdown (ends its sessions, writes a
    /// checkpoint, exits), what `pg_ctl stop` does by default.
    Int,
}

/// Ask the process `pid` (a child of ours: the caller holds its `Child`,
/// so the pid cannot have been reused) to stop with `signal`. Unix only;
/// elsewhere an `Unsupported` error.
pub fn ask_to_stop(pid: u32, signal: StopSignal) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{kill_process, Pid, Signal};
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let sig = match signal {
            StopSignal::Term => Signal::TERM,
            StopSignal::Int => Signal::INT,
        };
        kill_process(pid, sig).map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, signal);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn alive(pid: u32) -> bool {
        // A killed child not yet reaped is a zombie: dead, for this purpose.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
            })
            .unwrap_or(false)
    }

    /// A child spawned from a thread dies when that thread ends, although
    /// nobody kills it and its `Child` is never waited for.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_child_dies_with_the_spawning_thread() {
        let mut child = std::thread::spawn(|| {
            let child = die_with_parent(Command::new("sleep").arg("60"))
                .spawn()
                .expect("sleep runs");
            assert!(alive(child.id()));
            // Not killed: only the kernel ends it, when this thread exits.
            child
        })
        .join()
        .expect("the spawning thread");
        let pid = child.id();
        let start = Instant::now();
        while alive(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "child {pid} outlived the thread that spawned it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reaped here; it was killed, not told to exit.
        let status = child.wait().expect("the child's status");
        assert!(!status.success(), "{status}");
    }

    /// SIGTERM reaches the child and ends it (`sleep` does not catch it).
    #[cfg(target_os = "linux")]
    #[test]
    fn ask_to_stop_sends_the_signal() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = die_with_parent(Command::new("sleep").arg("60"))
            .spawn()
            .expect("sleep runs");
        ask_to_stop(child.id(), StopSignal::Term).expect("signal sent");
        let status = child.wait().expect("the child's status");
        assert_eq!(status.signal(), Some(15), "{status}");
    }

    /// Without the call, the child outlives the thread (what happened to
    /// the demo's Xvfb and freerdp-shadow-cli).
    #[cfg(target_os = "linux")]
    #[test]
    fn without_it_the_child_outlives_the_thread() {
        let mut child = std::thread::spawn(|| Command::new("sleep").arg("60").spawn().unwrap())
            .join()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(alive(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
