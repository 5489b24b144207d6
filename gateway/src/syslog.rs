//! Forwarding of audit records to a central syslog server: RFC 5424
//! messages over UDP (RFC 5426, one record per datagram), TCP (RFC 6587
//! octet counting) or TLS (RFC 5425: the same octet counting inside TLS,
//! the server checked against `[syslog] ca`, the gateway's own
//! certificate offered for mutual authentication).
//!
//! A background task tails the audit table by `seq`, so every committed
//! record is forwarded — the gateway's own and those the admin CLI writes
//! while the gateway runs — and nothing on the session path ever waits for
//! the syslog server. Records pass through a bounded queue to the sending
//! task; when the server is away long enough to fill it, further records are
//! dropped from forwarding (never from the store), counted in
//! `kakehashi_syslog_dropped_total` and logged with their seq range, and the
//! receiver sees the gap in `seq`. The TCP connection is re-established with
//! capped, jittered backoff.
//!
//! Each message carries the record's seq, action, actor, subject and reason
//! as structured data, and the whole record — hashes included, the same
//! JSON line as `audit export --format jsonl` — as the message, so the
//! forwarded records can be checked with `audit verify --file`.
//!
//! Forwarding starts at the chain head when the gateway starts: records
//! written while the gateway is stopped are in the store (`audit export`),
//! not in syslog. With several gateways on one database, configure
//! forwarding on one of them only, or every record arrives once per gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_store::{AuditRecord, Store};
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The RFC 5424 APP-NAME of every message.
pub const APP_NAME: &str = "kakehashi";
/// The SD-ID of the structured data element (32473 is the example private
/// enterprise number of RFC 5612).
pub const SD_ID: &str = "kakehashi@32473";
/// Largest message sent over UDP; larger records are counted as dropped.
const MAX_UDP: usize = 65_000;
/// Records read from the store at once.
const PAGE: u32 = 500;
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// `udp://HOST:PORT`
    Udp(String),
    /// `tcp://HOST:PORT`
    Tcp(String),
    /// `tls://HOST:PORT` (RFC 5425; the usual port is 6514)
    Tls(String),
}

impl SyslogTarget {
    fn addr(&self) -> &str {
        match self {
            SyslogTarget::Udp(a) | SyslogTarget::Tcp(a) | SyslogTarget::Tls(a) => a,
        }
    }
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Udp(a) => write!(f, "udp://{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp://{a}"),
            SyslogTarget::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

impl FromStr for SyslogTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = s.split_once("://").with_context(|| {
            format!(
                "[syslog] url {s:?}: expected udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT"
            )
        })?;
        let rest = rest.trim_end_matches('/');
        let port_ok = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok || rest.contains('/') {
            bail!("[syslog] url {s:?}: expected HOST:PORT after {scheme}://");
        }
        match scheme {
            "udp" => Ok(SyslogTarget::Udp(rest.into())),
            "tcp" => Ok(SyslogTarget::Tcp(rest.into())),
            "tls" => Ok(SyslogTarget::Tls(rest.into())),
            other => bail!("[syslog] url {s:?}: unknown scheme {other:?} (udp, tcp or tls)"),
        }
    }
}

/// Validated `[syslog]` settings.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// The server.
    pub target: SyslogTarget,
    /// RFC 5424 facility number (0..=23).
    pub facility: u8,
    /// Records queued for the sender at most.
    pub queue: usize,
    /// How often the audit table is polled for new records.
    pub poll: Duration,
    /// For `tls://`: the client configuration (see [`SyslogConfig::with_tls`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl SyslogConfig {
    /// Validate `[syslog] url`, `facility` and `queue`.
    pub fn new(url: &str, facility: &str, queue: usize) -> anyhow::Result<Self> {
        let facility = facility_number(facility).with_context(|| {
            format!("[syslog] facility {facility:?} is not a syslog facility (authpriv, auth, daemon, local0 … local7, …)")
        })?;
        if queue == 0 {
            bail!("[syslog] queue must be at least 1 (for example queue = 10000)");
        }
        Ok(Self {
            target: url.parse()?,
            facility,
            queue,
            poll: Duration::from_millis(500),
            tls: None,
        })
    }

    /// For a `tls://` target: trust the CA certificates in `ca` (PEM) for
    /// the log server, and offer `cert`/`key` (the gateway's own) when the
    /// server asks for a client certificate. Without it a `tls://` target
    /// is refused.
    pub fn with_tls(mut self, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        use kakehashi_transport::tls::{load_certs, load_key, provider};
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca).with_context(|| format!("[syslog] ca {}", ca.display()))? {
            roots
                .add(c)
                .with_context(|| format!("[syslog] ca {}", ca.display()))?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS unavailable")?
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .context("the gateway's certificate and key do not match")?;
        self.tls = Some(Arc::new(cfg));
        Ok(self)
    }
}

/// The RFC 5424 number of a facility name.
pub fn facility_number(name: &str) -> Option<u8> {
    const NAMES: [&str; 16] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    ];
    if let Some(n) = NAMES.iter().position(|&n| n == name) {
        return Some(n as u8);
    }
    let local: u8 = name.strip_prefix("local")?.parse().ok()?;
    (local <= 7).then_some(16 + local)
}

/// Who is sending: fixed header fields of every message.
#[derive(Debug, Clone)]
pub struct Origin {
    /// HOSTNAME (the machine's host name).
    pub hostname: String,
    /// The gateway's configured name (structured data `gateway`).
    pub gateway: String,
    /// PROCID.
    pub pid: u32,
    /// Offset of the `time` field in the message JSON, seconds east of UTC.
    pub utc_offset_secs: i32,
}

impl Origin {
    /// This process on this machine, for `gateway`.
    pub fn this_process(gateway: &str, utc_offset_secs: i32) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| gateway.to_string());
        Self {
            hostname,
            gateway: gateway.to_string(),
            pid: std::process::id(),
            utc_offset_secs,
        }
    }
}

/// Printable US-ASCII without spaces, at most `max` characters, or `-`.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3).
fn sd_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message for `r` (severity informational).
pub fn format_message(r: &AuditRecord, facility: u8, origin: &Origin) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + 6;
    let ts = time::OffsetDateTime::from_unix_timestamp(r.at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into());
    let json = kakehashi_store::export::ExportRecord::new(r, origin.utc_offset_secs).to_json();
    let mut m = format!(
        "<{pri}>1 {ts} {host} {APP_NAME} {pid} {msgid} [{SD_ID} seq=\"{seq}\" action=\"{action}\" actor=\"{actor}\" subject=\"{subject}\" reason=\"{reason}\" gateway=\"{gateway}\"] ",
        host = header_field(&origin.hostname, 255),
        pid = origin.pid,
        msgid = header_field(&r.action, 32),
        seq = r.seq,
        action = sd_value(&r.action),
        actor = sd_value(&r.actor),
        subject = sd_value(&r.subject),
        reason = sd_value(&r.reason),
        gateway = sd_value(&origin.gateway),
    )
    .into_bytes();
    // MSG is UTF-8, so it starts with a byte order mark (RFC 5424 §6.4).
    m.extend_from_slice("\u{feff}".as_bytes());
    m.extend_from_slice(json.as_bytes());
    m
}

/// Forward every audit record committed after seq `after` (`None`: after
/// the chain head as it is now) until `stop` is cancelled; then forward what
/// was committed up to that moment (best effort) and return.
pub async fn run(
    store: Store,
    cfg: SyslogConfig,
    origin: Origin,
    after: Option<i64>,
    dropped: IntCounter,
    stop: CancellationToken,
) {
    let after = match after {
        Some(seq) => seq,
        None => match store.audit_head().await {
            Ok((seq, _)) => seq,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Cannot read the audit head; forwarding the whole audit log to syslog");
                0
            }
        },
    };
    let (tx, rx) = mpsc::channel(cfg.queue);
    let sender = send_loop(
        cfg.target.clone(),
        cfg.tls.clone(),
        rx,
        dropped.clone(),
        stop.clone(),
    );
    let tailer = tail_loop(store, &cfg, &origin, after, tx, dropped, stop);
    tokio::join!(sender, tailer);
}

/// Poll the audit table for records after the last one seen and queue them.
async fn tail_loop(
    store: Store,
    cfg: &SyslogConfig,
    origin: &Origin,
    mut next: i64,
    tx: mpsc::Sender<(i64, Vec<u8>)>,
    dropped: IntCounter,
    stop: CancellationToken,
) {
    info!(target = %cfg.target, from_seq = next + 1, "Forwarding audit records to syslog");
    let mut ticker = tokio::time::interval(cfg.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Seq range dropped since forwarding last worked, for one warning per gap.
    let mut gap: Option<(i64, i64)> = None;
    loop {
        let stopping = tokio::select! {
            biased;
            _ = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        loop {
            let page = match store.audit_page(next, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "Cannot read the audit log for syslog forwarding");
                    break;
                }
            };
            let full = page.len() == PAGE as usize;
            for r in page {
                next = r.seq;
                let msg = format_message(&r, cfg.facility, origin);
                match tx.try_send((r.seq, msg)) {
                    Ok(()) => {
                        if let Some((first, last)) = gap.take() {
                            warn!(
                                first_seq = first,
                                last_seq = last,
                                dropped = last - first + 1,
                                "Syslog forwarding resumed; records in between were not forwarded (they are in the store)"
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped.inc();
                        match &mut gap {
                            Some((_, last)) => *last = r.seq,
                            None => {
                                warn!(seq = r.seq, queue = cfg.queue, "Syslog queue full; dropping audit records from forwarding until the server keeps up");
                                gap = Some((r.seq, r.seq));
                            }
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            if !full {
                break;
            }
        }
        if stopping {
            return;
        }
    }
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream, Instant),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Instant),
}

async fn connect(
    target: &SyslogTarget,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Conn> {
    let addr: SocketAddr = tokio::net::lookup_host(target.addr())
        .await
        .with_context(|| format!("cannot resolve {}", target.addr()))?
        .next()
        .with_context(|| format!("{} has no address", target.addr()))?;
    match target {
        SyslogTarget::Udp(_) => {
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(local).await?;
            s.connect(addr).await?;
            Ok(Conn::Udp(s))
        }
        SyslogTarget::Tcp(_) => {
            let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
                .await
                .context("connect timed out")??;
            Ok(Conn::Tcp(s, Instant::now()))
        }
        SyslogTarget::Tls(hostport) => {
            let tls = tls.context("tls:// needs [syslog] ca")?;
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = kakehashi_transport::tls::server_name(host)?;
            let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
                .await
                .context("connect timed out")??;
            let s = tokio::time::timeout(
                IO_TIMEOUT,
                tokio_rustls::TlsConnector::from(tls.clone()).connect(name, s),
            )
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake with the syslog server failed")?;
            Ok(Conn::Tls(Box::new(s), Instant::now()))
        }
    }
}

/// Whether the server has closed the TCP connection (a syslog server never
/// sends, so anything readable means end of stream or an error).
/// Whatever was received is discarded: bytes left unread when the socket
/// closes would make the kernel reset the connection, and the server could
/// lose the last messages.
fn peer_closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match s.try_read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Ends a connection in order (TLS close_notify, then FIN), so the server
/// keeps every message sent.
async fn close(conn: Conn) {
    match conn {
        Conn::Udp(_) => {}
        Conn::Tcp(mut s, _) => {
            peer_closed(&s);
            let _ = tokio::time::timeout(IO_TIMEOUT, s.shutdown()).await;
        }
        Conn::Tls(mut s, _) => {
            peer_closed(s.get_ref().0);
            let _ = tokio::time::timeout(IO_TIMEOUT, s.shutdown()).await;
        }
    }
}

/// What became of one message.
enum Sent {
    Ok,
    /// Not sent; try again on a new connection.
    Retry(anyhow::Error),
    /// Not sent and not worth retrying (UDP).
    Lost(anyhow::Error),
}

async fn send_one(conn: &mut Conn, msg: &[u8]) -> Sent {
    match conn {
        Conn::Udp(s) => {
            if msg.len() > MAX_UDP {
                return Sent::Lost(anyhow::anyhow!(
                    "{} bytes is too large for UDP; use tcp://",
                    msg.len()
                ));
            }
            // A refused earlier datagram (ICMP) is reported on the next send; retry once.
            match s.send(msg).await {
                Ok(_) => Sent::Ok,
                Err(_) => match s.send(msg).await {
                    Ok(_) => Sent::Ok,
                    Err(e) => Sent::Lost(e.into()),
                },
            }
        }
        Conn::Tcp(s, _) => {
            if peer_closed(s) {
                return Sent::Retry(anyhow::anyhow!("the server closed the connection"));
            }
            write_frame(s, msg).await
        }
        Conn::Tls(s, _) => {
            // The server sends nothing after the handshake but session
            // tickets and its close; the TLS layer is never read, so only
            // the end of the TCP stream is looked for underneath.
            if peer_closed(s.get_ref().0) {
                return Sent::Retry(anyhow::anyhow!("the server closed the connection"));
            }
            match write_frame(s.as_mut(), msg).await {
                Sent::Ok => match tokio::time::timeout(IO_TIMEOUT, s.flush()).await {
                    Ok(Ok(())) => Sent::Ok,
                    Ok(Err(e)) => Sent::Retry(e.into()),
                    Err(_) => Sent::Retry(anyhow::anyhow!("write timed out")),
                },
                other => other,
            }
        }
    }
}

/// One octet-counted frame (RFC 6587 §3.4.1, RFC 5425 §4.3).
async fn write_frame(s: &mut (impl tokio::io::AsyncWrite + Unpin), msg: &[u8]) -> Sent {
    let mut frame = format!("{} ", msg.len()).into_bytes();
    frame.extend_from_slice(msg);
    match tokio::time::timeout(IO_TIMEOUT, s.write_all(&frame)).await {
        Ok(Ok(())) => Sent::Ok,
        Ok(Err(e)) => Sent::Retry(e.into()),
        Err(_) => Sent::Retry(anyhow::anyhow!("write timed out")),
    }
}

/// Send queued messages, keeping one connection and re-establishing it
/// with backoff. Ends when the tail loop has ended and the queue is empty,
/// or, once `stop` is cancelled, when the server cannot be reached.
async fn send_loop(
    target: SyslogTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut rx: mpsc::Receiver<(i64, Vec<u8>)>,
    dropped: IntCounter,
    stop: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    let mut backoff = kakehashi_transport::backoff::Reconnect::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut pending: Option<(i64, Vec<u8>)> = None;
    loop {
        let (seq, msg) = match pending.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => {
                    if let Some(c) = conn.take() {
                        close(c).await;
                    }
                    return;
                }
            },
        };
        let failure = match &mut conn {
            None => match connect(&target, tls.as_ref()).await {
                Ok(c) => {
                    debug!(%target, "Syslog connection up");
                    conn = Some(c);
                    pending = Some((seq, msg));
                    continue;
                }
                Err(e) => e.context(format!("cannot reach the syslog server {target}")),
            },
            Some(c) => match send_one(c, &msg).await {
                Sent::Ok => {
                    match c {
                        Conn::Tcp(_, since) | Conn::Tls(_, since) => {
                            if since.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                        }
                        Conn::Udp(_) => backoff.reset(),
                    }
                    continue;
                }
                Sent::Lost(e) => {
                    dropped.inc();
                    warn!(seq, error = %format!("{e:#}"), "Audit record not forwarded to syslog");
                    continue;
                }
                Sent::Retry(e) => {
                    if let Some(Conn::Tcp(_, since) | Conn::Tls(_, since)) = &conn {
                        if since.elapsed() >= STABLE_AFTER {
                            backoff.reset();
                        }
                    }
                    conn = None;
                    e.context(format!("syslog connection to {target} lost"))
                }
            },
        };
        // Keep the message for the next connection; while away, the queue
        // fills and the tail loop counts what it cannot queue.
        pending = Some((seq, msg));
        if stop.is_cancelled() {
            warn!(error = %format!("{failure:#}"), "Syslog server unreachable while stopping; records still queued are not forwarded");
            return;
        }
        let delay = backoff.next_delay();
        warn!(error = %format!("{failure:#}"), retry_ms = delay.as_millis() as u64, "Syslog forwarding interrupted; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_store::Audit;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::TcpListener;

    fn origin() -> Origin {
        Origin {
            hostname: "gw-host".into(),
            gateway: "gw1".into(),
            pid: 4242,
            utc_offset_secs: 9 * 3600,
        }
    }

    fn cfg(url: &str, queue: usize) -> SyslogConfig {
        let mut c = SyslogConfig::new(url, "authpriv", queue).unwrap();
        c.poll = Duration::from_millis(20);
        c
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("k.db").to_str().unwrap())
            .await
            .unwrap();
        (dir, s)
    }

    fn rec(n: i64) -> Audit {
        Audit::new(1_736_119_500 + n, "admin:yamada", "user.add")
            .subject(format!("u{n}"))
            .reason("新規採用 \"A\" [x]")
            .detail(serde_json::json!({"dept": "総務課"}))
    }

    /// Splits a message into (header up to MSG, MSG without the BOM).
    fn split(m: &[u8]) -> (String, String) {
        let text = std::str::from_utf8(m).unwrap();
        let (head, msg) = text.split_once("] \u{feff}").expect("SD then BOM");
        (format!("{head}]"), msg.to_string())
    }

    #[test]
    fn target_and_facility_parsing() {
        assert_eq!(
            "udp://127.0.0.1:514".parse::<SyslogTarget>().unwrap(),
            SyslogTarget::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            "tcp://logs.example.lg.jp:6514"
                .parse::<SyslogTarget>()
                .unwrap(),
            SyslogTarget::Tcp("logs.example.lg.jp:6514".into())
        );
        assert!("tcp://[::1]:514".parse::<SyslogTarget>().is_ok());
        assert_eq!(
            "tls://logs.example.lg.jp:6514"
                .parse::<SyslogTarget>()
                .unwrap(),
            SyslogTarget::Tls("logs.example.lg.jp:6514".into())
        );
        for bad in [
            "127.0.0.1:514",
            "tls://h",
            "udp://h",
            "udp://:514",
            "udp://h:0",
            "udp://h:99999",
            "tcp://h:514/x",
        ] {
            assert!(bad.parse::<SyslogTarget>().is_err(), "{bad}");
        }
        assert_eq!(facility_number("kern"), Some(0));
        assert_eq!(facility_number("authpriv"), Some(10));
        assert_eq!(facility_number("local0"), Some(16));
        assert_eq!(facility_number("local7"), Some(23));
        assert_eq!(facility_number("local8"), None);
        assert_eq!(facility_number("security"), None);
        assert!(SyslogConfig::new("udp://h:514", "authpriv", 0).is_err());
    }

    #[test]
    fn message_is_rfc5424_with_structured_data_and_the_record() {
        let r = kakehashi_store::AuditRecord {
            seq: 12,
            at: 1_736_119_500,
            actor: "admin:yamada".into(),
            action: "user.add".into(),
            subject: "u-1".into(),
            reason: "新規採用 \"A\" [x] \\".into(),
            detail: "{\"dept\":\"総務課\"}".into(),
            prev_hash: kakehashi_store::Hash256([1; 32]),
            hash: kakehashi_store::Hash256([2; 32]),
        };
        let m = format_message(&r, 10, &origin());
        let (head, msg) = split(&m);
        assert_eq!(
            head,
            "<86>1 2025-01-05T23:25:00Z gw-host kakehashi 4242 user.add \
             [kakehashi@32473 seq=\"12\" action=\"user.add\" actor=\"admin:yamada\" \
             subject=\"u-1\" reason=\"新規採用 \\\"A\\\" [x\\] \\\\\" gateway=\"gw1\"]"
        );
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["seq"], 12);
        assert_eq!(v["time"], "2025-01-06T08:25:00+09:00");
        assert_eq!(v["hash"], "02".repeat(32));
        assert_eq!(v["prev_hash"], "01".repeat(32));
        assert_eq!(v["detail"], "{\"dept\":\"総務課\"}");
    }

    #[tokio::test]
    async fn forwards_committed_records_over_udp() {
        let (_d, store) = store().await;
        store.append_audit(rec(0)).await.unwrap(); // before the start point: not forwarded
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("udp://{}", sock.local_addr().unwrap());
        let dropped = IntCounter::new("d", "d").unwrap();
        let stop = CancellationToken::new();
        let head = store.audit_head().await.unwrap().0;
        let task = tokio::spawn(run(
            store.clone(),
            cfg(&url, 100),
            origin(),
            Some(head),
            dropped.clone(),
            stop.clone(),
        ));
        let mut written = Vec::new();
        for n in 1..=3 {
            written.push(store.append_audit(rec(n)).await.unwrap());
        }
        let mut buf = vec![0u8; 70_000];
        for w in &written {
            let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            let (head, msg) = split(&buf[..n]);
            assert!(head.starts_with("<86>1 "), "{head}");
            assert!(head.contains(&format!("seq=\"{}\"", w.seq)), "{head}");
            assert!(
                head.contains(&format!("subject=\"{}\"", w.subject)),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            assert_eq!(v["hash"], w.hash.to_hex());
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dropped.get(), 0);
    }

    /// Reads octet-counted frames from `s` until `n` are read.
    async fn frames(s: &mut BufReader<TcpStream>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut len = Vec::new();
            s.read_until(b' ', &mut len).await.unwrap();
            assert!(
                !len.is_empty(),
                "connection closed after {} frames",
                out.len()
            );
            let len: usize = std::str::from_utf8(&len[..len.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            let mut m = vec![0u8; len];
            s.read_exact(&mut m).await.unwrap();
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn forwards_over_tcp_and_reconnects() {
        let (_d, store) = store().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        let dropped = IntCounter::new("d", "d").unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            cfg(&url, 100),
            origin(),
            Some(0),
            dropped.clone(),
            stop.clone(),
        ));
        store.append_audit(rec(1)).await.unwrap();
        store.append_audit(rec(2)).await.unwrap();
        let (s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .unwrap()
            .unwrap();
        let mut s = BufReader::new(s);
        let got = tokio::time::timeout(Duration::from_secs(5), frames(&mut s, 2))
            .await
            .unwrap();
        assert!(got[0].contains("seq=\"1\"") && got[1].contains("seq=\"2\""));
        // The server restarts: the forwarder notices and reconnects.
        drop(s);
        store.append_audit(rec(3)).await.unwrap();
        let (s, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
            .await
            .unwrap()
            .unwrap();
        let mut s = BufReader::new(s);
        let got = tokio::time::timeout(Duration::from_secs(5), frames(&mut s, 1))
            .await
            .unwrap();
        assert!(got[0].contains("seq=\"3\""), "{got:?}");
        assert!(got[0].contains("\u{feff}{\"seq\":3,"), "{got:?}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dropped.get(), 0);
    }

    /// RFC 5425: octet-counted frames inside TLS, the server checked
    /// against `[syslog] ca`; a server whose certificate is from another CA
    /// gets nothing.
    #[tokio::test]
    async fn forwards_over_tls_to_a_server_from_the_configured_ca() {
        use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject};
        let dir = tempfile::tempdir().unwrap();
        let issue = |name: &str| {
            let mut ca = CaDir::init(&dir.path().join(name), &InitOptions::default()).unwrap();
            let i = ca
                .issue(&IssueRequest::new(Subject::Gateway {
                    name: "localhost".into(),
                    ips: vec!["127.0.0.1".parse().unwrap()],
                }))
                .unwrap();
            (ca.ca_cert_path(), i.cert_path, i.key_path)
        };
        let (ca, cert, key) = issue("ca");
        let (_, other_cert, other_key) = issue("other");
        let server = |cert: &Path, key: &Path| {
            use kakehashi_transport::tls::{load_certs, load_key, provider};
            let cfg = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(load_certs(cert).unwrap(), load_key(key).unwrap())
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        };
        for (trusted, server_cert, server_key) in
            [(true, &cert, &key), (false, &other_cert, &other_key)]
        {
            let (_d, store) = store().await;
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("tls://localhost:{}", l.local_addr().unwrap().port());
            let c = cfg(&url, 100).with_tls(&ca, &cert, &key).unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(run(
                store.clone(),
                c,
                origin(),
                Some(0),
                IntCounter::new("d", "d").unwrap(),
                stop.clone(),
            ));
            store.append_audit(rec(1)).await.unwrap();
            store.append_audit(rec(2)).await.unwrap();
            let (tcp, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
                .await
                .unwrap()
                .unwrap();
            let accepted = server(server_cert, server_key).accept(tcp).await;
            if trusted {
                let (r, _w) = tokio::io::split(accepted.unwrap());
                let mut r = BufReader::new(r);
                let got = tokio::time::timeout(Duration::from_secs(5), tls_frames(&mut r, 2))
                    .await
                    .unwrap();
                assert!(got[0].contains("seq=\"1\"") && got[1].contains("seq=\"2\""));
            } else {
                // The client refuses the certificate: the handshake fails.
                assert!(accepted.is_err());
            }
            stop.cancel();
            if trusted {
                tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .unwrap()
                    .unwrap();
            } else {
                // Still retrying the handshake (up to its 10 s time-out).
                task.abort();
            }
        }
        assert!(SyslogConfig::new("tls://localhost:6514", "authpriv", 1)
            .unwrap()
            .tls
            .is_none());
    }

    /// Reads octet-counted frames from a TLS stream until `n` are read.
    async fn tls_frames(
        s: &mut BufReader<impl tokio::io::AsyncRead + Unpin>,
        n: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut len = Vec::new();
            s.read_until(b' ', &mut len).await.unwrap();
            assert!(!len.is_empty(), "closed after {} frames", out.len());
            let len: usize = std::str::from_utf8(&len[..len.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            let mut m = vec![0u8; len];
            s.read_exact(&mut m).await.unwrap();
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking_writers() {
        let (_d, store) = store().await;
        // Nothing listens here: connections are refused, the sender backs off.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", l.local_addr().unwrap());
        drop(l);
        let dropped = IntCounter::new("d", "d").unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            cfg(&url, 2),
            origin(),
            Some(0),
            dropped.clone(),
            stop.clone(),
        ));
        let t0 = std::time::Instant::now();
        for n in 1..=10 {
            store.append_audit(rec(n)).await.unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "writers never wait");
        // One record held by the sender, two queued: at least seven dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dropped.get() < 7 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!((7..=8).contains(&dropped.get()), "{}", dropped.get());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
