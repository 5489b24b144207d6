//! What flows on a session once it is open: the desk side (behind the agent,
//! or behind a baseline relay) and the laptop side that paces requests and
//! times the answers.
//!
//! RDP-like traffic: the laptop sends a small request (input events) every
//! `1/hz` seconds, on schedule whatever happened to the previous one (open
//! loop: a stalled relay shows up as latency, not as fewer requests); the
//! desk answers with a screen update sized so that the session averages its
//! rate. The round trip is measured from the *scheduled* send time.
//!
//! Request: `t_us u64 | answer_len u32 | upstream_len u32` then
//! `upstream_len` bytes. Answer: `t_us u64 | len u32` then `len` bytes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::stats::Hist;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
const REQ_LEN: usize = 16;
const ANS_LEN: usize = 12;

/// Microseconds since the process's time base (both ends live in this process).
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What the desk does with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeskMode {
    /// Answer paced requests with screen updates.
    Rdp,
    /// Write as fast as the session takes (bulk throughput).
    Source,
    /// Send back what arrives (request/response latency, idle sessions).
    Echo,
}

/// Serve one session on the desk side until the laptop closes it.
pub async fn serve_desk<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    mode: DeskMode,
) -> io::Result<()> {
    match mode {
        DeskMode::Rdp => desk_rdp(io).await,
        DeskMode::Source => {
            let mut io = io;
            loop {
                io.write_all(&ZEROS).await?;
            }
        }
        DeskMode::Echo => {
            let (mut r, mut w) = tokio::io::split(io);
            let mut buf = vec![0u8; 4096];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                w.write_all(&buf[..n]).await?;
                w.flush().await?;
            }
        }
    }
}

async fn desk_rdp<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> io::Result<()> {
    let mut req = [0u8; REQ_LEN];
    let mut up = vec![0u8; 1024];
    let mut out = Vec::new();
    loop {
        match io.read_exact(&mut req).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let _ = io.shutdown().await;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let t = &req[0..8];
        let len = u32::from_le_bytes(req[8..12].try_into().expect("4 bytes")) as usize;
        let mut upstream = u32::from_le_bytes(req[12..16].try_into().expect("4 bytes")) as usize;
        while upstream > 0 {
            let n = upstream.min(up.len());
            io.read_exact(&mut up[..n]).await?;
            upstream -= n;
        }
        out.clear();
        out.extend_from_slice(t);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        let first = len.min(ZEROS.len() - ANS_LEN);
        out.extend_from_slice(&ZEROS[..first]);
        io.write_all(&out).await?;
        let mut rest = len - first;
        while rest > 0 {
            let n = rest.min(ZEROS.len());
            io.write_all(&ZEROS[..n]).await?;
            rest -= n;
        }
        io.flush().await?;
        if out.capacity() > 256 * 1024 {
            out = Vec::new();
        }
    }
}

/// The paced traffic mix.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Profile {
    /// Requests per second per session.
    pub hz: f64,
    /// Average rate of an ordinary session, kbit/s (desk to laptop).
    pub kbps: f64,
    /// Share of sessions that run at `heavy_kbps` instead.
    pub heavy_frac: f64,
    /// Share of sessions that are open but idle (the user away: no
    /// requests, no screen updates; only the transports' keepalives).
    pub idle_frac: f64,
    /// Average rate of a heavy session, kbit/s.
    pub heavy_kbps: f64,
    /// Mean seconds between bursts (exponential); 0 = no bursts.
    pub burst_every_secs: f64,
    /// Length of a burst, seconds.
    pub burst_secs: f64,
    /// Rate multiplier during a burst (the base rate is lowered so the
    /// average stays at `kbps`).
    pub burst_factor: f64,
    /// Bytes of input events per request (laptop to desk).
    pub up_bytes: u32,
}

impl Profile {
    /// Rate of session number `i`: every `1/heavy_frac`-th session is
    /// heavy; of the others, `idle_frac` of all sessions, spread evenly, are
    /// idle (rate 0); the rest run at `kbps`.
    pub fn rate_of(&self, i: usize) -> f64 {
        if self.heavy_frac > 0.0 {
            let every = (1.0 / self.heavy_frac).round().max(1.0) as usize;
            if i % every == every - 1 {
                return self.heavy_kbps;
            }
        }
        if self.idle_frac > 0.0 {
            // Session i is idle when the running count of idle sessions
            // steps up at i (in millionths, so no rounding): `idle_frac`
            // of any long prefix, evenly spread, from session 0 on (the
            // heavy ones are at the ends of their runs).
            const M: u64 = 1_000_000;
            let k = (self.idle_frac.min(1.0) * M as f64).round() as u64;
            if (i as u64 * k) % M < k {
                return 0.0;
            }
        }
        self.kbps
    }

    /// Average kbit/s over `n` sessions.
    pub fn mean_kbps(&self, n: usize) -> f64 {
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|i| self.rate_of(i)).sum::<f64>() / n as f64
    }
}

/// Counters the laptop side adds to.
#[derive(Debug, Default)]
pub struct Flow {
    /// Answers received.
    pub answers: AtomicU64,
    /// Bytes received from desks.
    pub bytes_down: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Bytes sent to desks (requests, headers included).
    pub bytes_up: AtomicU64,
}

impl Flow {
    /// Bytes the sessions moved so far, both directions, headers included
    /// (what a relay carries between its two legs).
    pub fn bytes_both(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
            + self.bytes_down.load(Ordering::Relaxed)
            + self.answers.load(Ordering::Relaxed) * ANS_LEN as u64
    }
}

/// How a driven session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Stopped by the bench.
    Stopped,
    /// Read failed.
    ReadError,
    /// Write failed.
    WriteError,
    /// The relay or desk closed the session early.
    Eof,
}

impl End {
    /// Error kind for the counts, if it is one.
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            End::Stopped => None,
            End::ReadError => Some("data:read"),
            End::WriteError => Some("data:write"),
            End::Eof => Some("data:closed_early"),
        }
    }
}

/// Drive RDP-like traffic on a session until `stop`; `record` is given each
/// round trip in microseconds (and picks the histogram by phase).
pub async fn drive_rdp<S, F>(
    io: S,
    kbps: f64,
    p: Profile,
    stop: CancellationToken,
    flow: &Flow,
    record: F,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(u64),
{
    if kbps <= 0.0 || p.hz <= 0.0 {
        // Idle: hold the session open until the end.
        let mut io = io;
        let mut b = [0u8; 1];
        return tokio::select! {
            _ = stop.cancelled() => { let _ = io.shutdown().await; End::Stopped }
            r = io.read(&mut b) => match r { Ok(0) => End::Eof, Ok(_) => End::Stopped, Err(_) => End::ReadError },
        };
    }
    let (mut r, mut w) = tokio::io::split(io);
    let interval = Duration::from_secs_f64(1.0 / p.hz);
    let duty = if p.burst_every_secs > 0.0 {
        (p.burst_secs / p.burst_every_secs).min(1.0)
    } else {
        0.0
    };
    let base = kbps / (1.0 + duty * (p.burst_factor - 1.0));
    let bytes_at = |k: f64| ((k * 1000.0 / 8.0) / p.hz).round().max(1.0) as u32;
    let (normal, burst) = (bytes_at(base), bytes_at(base * p.burst_factor));
    let writer = async {
        let mut next = tokio::time::Instant::now() + interval.mul_f64(rand::random::<f64>());
        let mut burst_until = tokio::time::Instant::now();
        let exp = |mean: f64| Duration::from_secs_f64(-mean * (1.0 - rand::random::<f64>()).ln());
        let mut next_burst = if duty > 0.0 {
            tokio::time::Instant::now() + exp(p.burst_every_secs)
        } else {
            tokio::time::Instant::now() + Duration::from_secs(1 << 30)
        };
        let up = vec![0u8; p.up_bytes as usize];
        let mut req = Vec::with_capacity(REQ_LEN + up.len());
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            if next >= next_burst {
                burst_until = next + Duration::from_secs_f64(p.burst_secs);
                next_burst = burst_until + exp(p.burst_every_secs);
            }
            let len = if next < burst_until { burst } else { normal };
            // Scheduled time, on the `now_us` clock.
            let late = tokio::time::Instant::now().saturating_duration_since(next);
            let t = now_us().saturating_sub(late.as_micros() as u64);
            req.clear();
            req.extend_from_slice(&t.to_le_bytes());
            req.extend_from_slice(&len.to_le_bytes());
            req.extend_from_slice(&p.up_bytes.to_le_bytes());
            req.extend_from_slice(&up);
            if w.write_all(&req).await.is_err() || w.flush().await.is_err() {
                return End::WriteError;
            }
            flow.requests.fetch_add(1, Ordering::Relaxed);
            flow.bytes_up.fetch_add(req.len() as u64, Ordering::Relaxed);
            next += interval;
        }
        let _ = w.shutdown().await;
        End::Stopped
    };
    let reader = async {
        let mut hdr = [0u8; ANS_LEN];
        let mut sink = vec![0u8; 16 * 1024];
        loop {
            match r.read_exact(&mut hdr).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return if stop.is_cancelled() {
                        End::Stopped
                    } else {
                        End::Eof
                    };
                }
                Err(_) => {
                    return if stop.is_cancelled() {
                        End::Stopped
                    } else {
                        End::ReadError
                    }
                }
            }
            let t = u64::from_le_bytes(hdr[0..8].try_into().expect("8 bytes"));
            let mut len = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes")) as usize;
            let total = len;
            while len > 0 {
                let n = len.min(sink.len());
                if r.read_exact(&mut sink[..n]).await.is_err() {
                    return if stop.is_cancelled() {
                        End::Stopped
                    } else {
                        End::ReadError
                    };
                }
                len -= n;
            }
            let rtt = now_us().saturating_sub(t);
            record(rtt);
            flow.answers.fetch_add(1, Ordering::Relaxed);
            flow.bytes_down.fetch_add(total as u64, Ordering::Relaxed);
        }
    };
    tokio::pin!(reader);
    tokio::select! {
        w = writer => {
            if w != End::Stopped { return w; }
            // Drain the answers still in flight, briefly.
            match tokio::time::timeout(Duration::from_secs(2), &mut reader).await {
                Ok(End::Eof) | Err(_) => End::Stopped,
                Ok(e) => e,
            }
        }
        r = &mut reader => r,
    }
}

/// Read and count bytes until `stop` (bulk throughput, laptop side).
pub async fn drive_sink<S: AsyncRead + Unpin>(
    mut io: S,
    stop: CancellationToken,
    bytes: &AtomicU64,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return End::Stopped,
            r = io.read(&mut buf) => match r {
                Ok(0) => return End::Eof,
                Ok(n) => { bytes.fetch_add(n as u64, Ordering::Relaxed); }
                Err(_) => return End::ReadError,
            }
        }
    }
}

/// `count` sequential request/response exchanges of `size` bytes through an
/// echoing desk; each round trip recorded.
pub async fn drive_rr<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    count: usize,
    size: usize,
    hist: &Hist,
) -> io::Result<()> {
    let req = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    for _ in 0..count {
        let t = Instant::now();
        io.write_all(&req).await?;
        io.flush().await?;
        io.read_exact(&mut back).await?;
        hist.record(t.elapsed());
    }
    let _ = io.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn office(idle_frac: f64) -> Profile {
        Profile {
            hz: 10.0,
            kbps: 150.0,
            heavy_frac: 0.01,
            heavy_kbps: 3000.0,
            idle_frac,
            burst_every_secs: 10.0,
            burst_secs: 1.0,
            burst_factor: 4.0,
            up_bytes: 64,
        }
    }

    #[test]
    fn idle_share_is_spread_and_exact() {
        let p = office(0.2);
        let rates: Vec<f64> = (0..1000).map(|i| p.rate_of(i)).collect();
        let idle = rates.iter().filter(|r| **r == 0.0).count();
        let heavy = rates.iter().filter(|r| **r == 3000.0).count();
        assert_eq!(heavy, 10);
        // Heavy sessions take precedence where the two fall on one index.
        assert!((195..=200).contains(&idle), "{idle} idle of 1000");
        // Spread: every run of 10 has one or two idle sessions.
        for w in rates.chunks(10) {
            let n = w.iter().filter(|r| **r == 0.0).count();
            assert!((1..=2).contains(&n), "{w:?}");
        }
        let mean = p.mean_kbps(1000);
        let want = (1000 - idle - heavy) as f64 * 0.15 + heavy as f64 * 3.0;
        assert!((mean - want).abs() < 1e-9, "{mean} against {want}");
    }

    #[test]
    fn no_idle_share_keeps_the_old_mix() {
        let p = office(0.0);
        assert!((0..1000).all(|i| p.rate_of(i) > 0.0));
        assert_eq!(p.rate_of(99), 3000.0);
        assert_eq!(p.rate_of(98), 150.0);
    }
}
