//! The RDP channel filter on the wire (DESIGN.md §6): the agent reads the
//! cleartext X.224 negotiation, terminates the client's TLS with the RDP
//! server's own certificate and key, opens TLS to the RDP server pinned to
//! that same certificate, and pumps the decrypted streams through
//! [`kakehashi_rdpfilter::Filter`], which passes CredSSP unchanged (so NLA
//! completes) and enforces the ticket's controls in the MCS/GCC and
//! virtual-channel PDUs.
//!
//! Shape: [`serve`] drives one session from one task. Each [`Output`] is queued
//! before the next filter call; reading a side stops while the bytes queued for
//! the *other* side exceed [`HIGH_WATER`], so each direction is back-pressured
//! on its own and a peer that does not read cannot stall the other direction
//! (no cross-direction deadlock). Buffers are bounded by [`HIGH_WATER`] plus
//! one filter output (itself bounded by the filter's reassembly limit).
//!
//! What the filter itself holds is bounded per session by its
//! [`Limits::max_held`] (2 MiB) and across all of the agent's sessions by
//! [`AGENT_FILTER_BUDGET`]: a laptop that makes its filter hold more (e.g.
//! leaving device announces unfinished) ends its own session, logged with
//! `reason="rdp_uninspectable"` and reported to the gateway like any refusal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use kakehashi_proto::message::FilterReport;
use kakehashi_proto::Controls;
use kakehashi_rdpfilter::{
    BlockedKind, Event, Filter, FilterError, Limits, Output, Phase, SharedBudget,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::config::RdpConfig;

/// Bytes read from a peer at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Reading a side pauses while more than this waits to be written to the other side.
pub const HIGH_WATER: usize = 256 * 1024;
/// Distinct blocked (kind, what, direction) tuples reported per session; more are
/// only counted in the agent's log.
const MAX_DISTINCT_REPORTS: usize = 64;
/// Bytes the RDP filters of all the agent's sessions may hold together: 32
/// sessions at their full budget ([`Limits::max_held`], 2 MiB), far more than a
/// desk PC's one user needs at once. Past it, the session that asks for more ends.
pub const AGENT_FILTER_BUDGET: usize = 64 << 20;

/// What every filtered session of the agent uses, built once from `[rdp]`: the
/// two TLS legs and the filters' shared memory budget ([`AGENT_FILTER_BUDGET`]).
#[derive(Clone)]
pub struct RdpTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    budget: Arc<SharedBudget>,
}

impl std::fmt::Debug for RdpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdpTls").finish_non_exhaustive()
    }
}

impl RdpTls {
    /// Server side for RDP clients (the RDP server's own certificate and key) and
    /// client side to the RDP server (accepting exactly that certificate). TLS 1.2
    /// and 1.3: RDP clients in the field (older mstsc) still use 1.2.
    pub fn new(cfg: &RdpConfig) -> anyhow::Result<Self> {
        let provider = kakehashi_transport::tls::provider();
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .context("tls versions")?
            .with_no_client_auth()
            .with_single_cert(cfg.chain.clone(), cfg.key.clone_key())
            .context("invalid [rdp] server certificate or key")?;
        // No resumption: every client sees the full certificate, every time.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let pinned = PinnedServer {
            cert: cfg.chain[0].clone(),
            provider: provider.clone(),
        };
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .context("tls versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned))
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_sni = false;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            budget: SharedBudget::new(AGENT_FILTER_BUDGET),
        })
    }

    /// Bytes the filters of all sessions hold now.
    pub fn filter_held(&self) -> usize {
        self.budget.used()
    }
}

/// Accepts exactly one end-entity certificate (byte for byte) and checks the
/// handshake signature against it, so the peer must hold its private key.
#[derive(Debug)]
struct PinnedServer {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a filtered session ended.
#[derive(Debug)]
pub enum Ended {
    /// A peer closed; bytes read from the client and from the server.
    Closed {
        /// Bytes read from the RDP client.
        up: u64,
        /// Bytes read from the RDP server.
        down: u64,
    },
    /// The RDP server refused the client's negotiation itself (its answer was passed on).
    ServerRefused,
    /// The filter refused the session (`rdp_uninspectable`, `protocol_error`).
    Refused(FilterError),
    /// The RDP server did not present the configured certificate: nothing was forwarded
    /// after the cleartext negotiation and the client's TLS was never accepted.
    ServerKeyMismatch(String),
    /// A peer failed or was too slow.
    Failed(anyhow::Error),
}

/// Timeouts of a filtered session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the client's first bytes (its X.224 Connection Request).
    pub first_bytes: Duration,
    /// For each later setup step (the server's Confirm, each TLS handshake).
    pub step: Duration,
}

/// Counts blocked attempts of one session and reports each distinct one to the
/// gateway when first seen; repeats are sent, added up, by [`Reporter::finish`].
#[derive(Debug)]
pub struct Reporter {
    session_id: String,
    tx: Option<mpsc::Sender<FilterReport>>,
    seen: HashMap<(&'static str, String, Option<&'static str>), u32>,
    /// Blocked attempts in this session.
    pub blocked: u64,
}

impl Reporter {
    /// Reports for `session_id` go to `tx` (the tunnel's control stream), if any.
    pub fn new(session_id: String, tx: Option<mpsc::Sender<FilterReport>>) -> Self {
        Self {
            session_id,
            tx,
            seen: HashMap::new(),
            blocked: 0,
        }
    }

    /// Something was blocked.
    pub fn blocked(&mut self, kind: &'static str, what: String, direction: Option<&'static str>) {
        self.blocked += 1;
        let key = (kind, what, direction);
        if let Some(n) = self.seen.get_mut(&key) {
            *n += 1;
            return;
        }
        info!(kind, what = %key.1, direction, "RDP filter blocked");
        if self.seen.len() >= MAX_DISTINCT_REPORTS {
            return;
        }
        self.send(&key, 1);
        self.seen.insert(key, 0);
    }

    /// The filter refused the whole session.
    pub fn refused(&mut self, reason_code: &'static str) {
        self.blocked("session_refused", reason_code.to_string(), None);
    }

    /// Send the repeats counted since each first report.
    pub fn finish(&mut self) {
        let repeats: Vec<_> = self.seen.drain().filter(|(_, n)| *n > 0).collect();
        for (key, n) in repeats {
            self.send(&key, n);
        }
        if self.blocked > 0 {
            info!(
                blocked = self.blocked,
                "RDP filter blocked attempts in this session"
            );
        }
    }

    fn send(&self, key: &(&'static str, String, Option<&'static str>), count: u32) {
        let Some(tx) = &self.tx else { return };
        let report = FilterReport {
            session_id: self.session_id.clone(),
            kind: key.0.to_string(),
            what: key.1.clone(),
            direction: key.2.map(str::to_string),
            count,
        };
        if tx.try_send(report).is_err() {
            warn!("Filter report dropped: the tunnel's report queue is full or closed");
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Blocked { what, direction } => {
                let (kind, subject) = describe(&what);
                self.blocked(kind, subject, Some(direction.as_str()));
            }
            Event::Negotiated {
                requested,
                forwarded,
                selected,
            } => debug!(?requested, ?forwarded, ?selected, "RDP security negotiated"),
            Event::Channels(list) => {
                let names: Vec<String> = list
                    .iter()
                    .map(|c| format!("{}={:?}", c.name, c.action))
                    .collect();
                info!(channels = %names.join(" "), "RDP static channels");
            }
            other => debug!(event = ?other, "RDP filter event"),
        }
    }
}

/// Report kind and subject of a blocked attempt.
fn describe(what: &BlockedKind) -> (&'static str, String) {
    match what {
        BlockedKind::StaticChannel(n) => ("static_channel", printable(n)),
        BlockedKind::DynamicChannel(n) => ("dynamic_channel", printable(n)),
        BlockedKind::Device { kind, name } => {
            ("device", format!("{} {}", kind.as_str(), printable(name)))
        }
        BlockedKind::ClipboardData => ("clipboard_data", String::new()),
        BlockedKind::FileContents => ("file_contents", String::new()),
        other => ("other", printable(&other.to_string())),
    }
}

/// Names come from the RDP client: printable ASCII only, at most 64 characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

/// Does `controls` need the filter (anything restricted)? With an allow-everything
/// ticket the filter would only pass bytes through: the caller splices raw.
pub fn needs_filter(controls: Controls) -> bool {
    Filter::new(controls).phase() != Phase::PassThrough
}

/// One filtered session between the RDP client (`client`, the session stream from
/// the gateway) and the RDP server (`server`).
pub async fn serve<C, S>(
    client: C,
    mut server: S,
    server_name: ServerName<'static>,
    controls: Controls,
    tls: &RdpTls,
    timeouts: Timeouts,
    reporter: &mut Reporter,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = client;
    let mut filter = Filter::with_shared_budget(controls, Limits::default(), tls.budget.clone());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut capture = capture::Capture::start(controls);

    // 1. Cleartext X.224: Connection Request, then Confirm.
    let mut first = true;
    loop {
        let step = match filter.phase() {
            Phase::NeedTls { .. } => break,
            Phase::Failed => return Ended::ServerRefused,
            Phase::ConnectionRequest => {
                let wait = if first {
                    timeouts.first_bytes
                } else {
                    timeouts.step
                };
                first = false;
                read_some(&mut client, &mut buf, wait, "RDP client")
                    .await
                    .map(|n| (true, n))
            }
            Phase::ConnectionConfirm => {
                read_some(&mut server, &mut buf, timeouts.step, "RDP server")
                    .await
                    .map(|n| (false, n))
            }
            other => return Ended::Failed(anyhow!("unexpected filter phase {other:?}")),
        };
        let (from_client, n) = match step {
            Ok(x) => x,
            Err(e) => return Ended::Failed(e),
        };
        capture.record(from_client, &buf[..n]);
        let out = if from_client {
            filter.client_bytes(&buf[..n])
        } else {
            filter.server_bytes(&buf[..n])
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => return refuse(&mut client, e, reporter).await,
        };
        if let Err(e) = write_output(&mut client, &mut server, out, reporter).await {
            return Ended::Failed(e);
        }
    }

    // 2. TLS to the server first, pinned: if its key is not the configured one, the
    //    client's TLS is never accepted, so not even its credentials (CredSSP) move.
    let server_tls =
        match tokio::time::timeout(timeouts.step, tls.connector.connect(server_name, server)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if is_pin_failure(&e) {
                    return Ended::ServerKeyMismatch(e.to_string());
                }
                return Ended::Failed(
                    anyhow::Error::new(e).context("TLS to the RDP server failed"),
                );
            }
            Err(_) => return Ended::Failed(anyhow!("TLS to the RDP server timed out")),
        };
    let client_tls = match tokio::time::timeout(timeouts.step, tls.acceptor.accept(client)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Ended::Failed(anyhow::Error::new(e).context("TLS from the RDP client failed"))
        }
        Err(_) => return Ended::Failed(anyhow!("TLS from the RDP client timed out")),
    };
    if let Err(e) = filter.tls_established() {
        return Ended::Refused(e);
    }
    capture.tls();

    // 3. The decrypted streams, both ways, through the filter.
    pump(client_tls, server_tls, &mut filter, reporter, &mut capture).await
}

async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    within: Duration,
    who: &str,
) -> anyhow::Result<usize> {
    match tokio::time::timeout(within, r.read(buf)).await {
        Ok(Ok(0)) => Err(anyhow!("{who} closed during the negotiation")),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("{who} failed"))),
        Err(_) => Err(anyhow!("{who} did not send its negotiation in time")),
    }
}

async fn write_output<C, S>(
    client: &mut C,
    server: &mut S,
    out: Output,
    reporter: &mut Reporter,
) -> anyhow::Result<()>
where
    C: AsyncWrite + Unpin,
    S: AsyncWrite + Unpin,
{
    for e in out.events {
        reporter.event(e);
    }
    if !out.to_server.is_empty() {
        server.write_all(&out.to_server).await?;
        server.flush().await?;
    }
    if !out.to_client.is_empty() {
        client.write_all(&out.to_client).await?;
        client.flush().await?;
    }
    Ok(())
}

async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    e: FilterError,
    reporter: &mut Reporter,
) -> Ended {
    reporter.refused(e.reason_code());
    if let Some(reply) = e.reply_to_client() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.write_all(reply).await;
            let _ = client.flush().await;
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
    Ended::Refused(e)
}

fn is_pin_failure(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// Pending bytes for one peer.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    pos: usize,
    flush: bool,
}

impl Queue {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        self.flush = true;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }
}

/// Moves the decrypted streams through `filter` until a peer closes or fails.
pub async fn pump<C, S>(
    client: C,
    server: S,
    filter: &mut Filter,
    reporter: &mut Reporter,
    capture: &mut capture::Capture,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let mut cbuf = vec![0u8; READ_CHUNK];
    let mut sbuf = vec![0u8; READ_CHUNK];
    let (mut to_client, mut to_server) = (Queue::default(), Queue::default());
    let (mut up, mut down) = (0u64, 0u64);
    let mut open = true;
    let result: anyhow::Result<()> = loop {
        let idle = to_client.pending() == 0
            && to_server.pending() == 0
            && !to_client.flush
            && !to_server.flush;
        if !open && idle {
            break Ok(());
        }
        tokio::select! {
            r = cr.read(&mut cbuf), if open && to_server.pending() < HIGH_WATER => match r {
                Ok(0) => open = false,
                Ok(n) => {
                    up += n as u64;
                    capture.record(true, &cbuf[..n]);
                    match filter.client_bytes(&cbuf[..n]) {
                        Ok(out) => queue(out, &mut to_client, &mut to_server, reporter),
                        Err(e) => { reporter.refused(e.reason_code()); return Ended::Refused(e) }
                    }
                }
                Err(e) => break Err(anyhow::Error::new(e).context("RDP client failed")),
            },
            r = sr.read(&mut sbuf), if open && to_client.pending() < HIGH_WATER => match r {
                Ok(0) => open = false,
                Ok(n) => {
                    down += n as u64;
                    capture.record(false, &sbuf[..n]);
                    match filter.server_bytes(&sbuf[..n]) {
                        Ok(out) => queue(out, &mut to_client, &mut to_server, reporter),
                        Err(e) => { reporter.refused(e.reason_code()); return Ended::Refused(e) }
                    }
                }
                Err(e) => break Err(anyhow::Error::new(e).context("RDP server failed")),
            },
            r = drain(&mut cw, &to_client.buf[to_client.pos..]), if to_client.pending() > 0 || to_client.flush => match r {
                Ok(Some(0)) => break Err(anyhow!("RDP client stopped reading")),
                Ok(Some(n)) => to_client.advance(n),
                Ok(None) => to_client.flush = false,
                Err(e) => break Err(anyhow::Error::new(e).context("writing to the RDP client")),
            },
            r = drain(&mut sw, &to_server.buf[to_server.pos..]), if to_server.pending() > 0 || to_server.flush => match r {
                Ok(Some(0)) => break Err(anyhow!("RDP server stopped reading")),
                Ok(Some(n)) => to_server.advance(n),
                Ok(None) => to_server.flush = false,
                Err(e) => break Err(anyhow::Error::new(e).context("writing to the RDP server")),
            },
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = cw.shutdown().await;
        let _ = sw.shutdown().await;
    })
    .await;
    match result {
        Ok(()) => Ended::Closed { up, down },
        Err(e) => Ended::Failed(e),
    }
}

/// Writes some of `pending`, or flushes when nothing is pending (`None`). Cancel-safe:
/// a write that did not complete consumed nothing.
async fn drain<W: AsyncWrite + Unpin>(w: &mut W, pending: &[u8]) -> std::io::Result<Option<usize>> {
    if pending.is_empty() {
        w.flush().await.map(|()| None)
    } else {
        w.write(pending).await.map(Some)
    }
}

fn queue(out: Output, to_client: &mut Queue, to_server: &mut Queue, reporter: &mut Reporter) {
    for e in out.events {
        reporter.event(e);
    }
    to_server.push(&out.to_server);
    to_client.push(&out.to_client);
}

/// Seed capture for the `rdpfilter` fuzz target (cargo feature `rdp-capture`, never in a
/// release): with `KAKEHASHI_RDP_CAPTURE_DIR` set, the first 256 KiB each deny-all session
/// feeds to its filter are written there in `kakehashi_rdpfilter::fuzz_feed`'s input
/// format. The files hold the decrypted session, CredSSP included: test peers only.
pub mod capture {
    use kakehashi_proto::Controls;

    /// A capture in progress, or nothing.
    #[derive(Debug, Default)]
    pub struct Capture {
        #[cfg(feature = "rdp-capture")]
        file: Option<(std::path::PathBuf, Vec<u8>)>,
    }

    #[cfg(feature = "rdp-capture")]
    const MAX: usize = 256 * 1024;

    impl Capture {
        /// Starts a capture if enabled and `controls` deny everything (the fuzz
        /// target's selector 0).
        #[allow(unused_variables)]
        pub fn start(controls: Controls) -> Self {
            #[cfg(feature = "rdp-capture")]
            if let Some(dir) = std::env::var_os("KAKEHASHI_RDP_CAPTURE_DIR") {
                if controls == Controls::default() {
                    let name = format!("session-{}", kakehashi_transport::random_hex(6));
                    return Self {
                        file: Some((std::path::PathBuf::from(dir).join(name), vec![0x00])),
                    };
                }
            }
            Self::default()
        }

        /// Bytes fed to the filter.
        #[allow(unused_variables)]
        pub fn record(&mut self, from_client: bool, bytes: &[u8]) {
            #[cfg(feature = "rdp-capture")]
            if let Some((_, data)) = &mut self.file {
                for chunk in bytes.chunks(127) {
                    if data.len() + chunk.len() + 1 > MAX {
                        return;
                    }
                    data.push(chunk.len() as u8 | if from_client { 0 } else { 0x80 });
                    data.extend_from_slice(chunk);
                }
            }
        }

        /// Both TLS legs are up (the fuzz target calls `tls_established` itself).
        pub fn tls(&mut self) {}
    }

    #[cfg(feature = "rdp-capture")]
    impl Drop for Capture {
        fn drop(&mut self) {
            if let Some((path, data)) = self.file.take() {
                let _ = std::fs::write(path, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_distinct_block_once_then_the_repeats() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut r = Reporter::new("s-1".into(), Some(tx));
        for _ in 0..3 {
            r.event(Event::Blocked {
                what: BlockedKind::StaticChannel("cliprdr".into()),
                direction: kakehashi_rdpfilter::Direction::ClientToServer,
            });
        }
        r.refused("rdp_uninspectable");
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.kind.as_str(), first.what.as_str(), first.count),
            ("static_channel", "cliprdr", 1)
        );
        assert_eq!(first.direction.as_deref(), Some("client_to_server"));
        let refused = rx.try_recv().unwrap();
        assert_eq!(
            (refused.kind.as_str(), refused.what.as_str()),
            ("session_refused", "rdp_uninspectable")
        );
        assert!(rx.try_recv().is_err());
        r.finish();
        let repeats = rx.try_recv().unwrap();
        assert_eq!((repeats.what.as_str(), repeats.count), ("cliprdr", 2));
        assert_eq!(r.blocked, 4);
    }

    /// The fuzz seeds are real sessions (xfreerdp ↔ freerdp-shadow-cli, NLA, deny-all)
    /// captured by this agent: replayed through a fresh filter they reach the active
    /// phase without an error, with the redirection channels blocked.
    #[test]
    fn captured_sessions_replay_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rdpfilter");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("xfreerdp-")
            {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data[0], 0, "{}: not a deny-all capture", path.display());
            let mut filter = Filter::new(Controls::default());
            let mut blocked = Vec::new();
            let mut rest = &data[1..];
            while let Some((&h, tail)) = rest.split_first() {
                let n = usize::from(h & 0x7f);
                let (chunk, tail) = tail.split_at(n);
                rest = tail;
                let out = if h & 0x80 != 0 {
                    filter.server_bytes(chunk)
                } else {
                    filter.client_bytes(chunk)
                }
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                for e in out.events {
                    if let Event::Blocked { what, .. } = e {
                        blocked.push(describe(&what).1);
                    }
                }
                if let Phase::NeedTls { .. } = filter.phase() {
                    filter.tls_established().unwrap();
                }
            }
            assert_eq!(filter.phase(), Phase::Active, "{}", path.display());
            for name in ["rdpdr", "cliprdr", "rdpsnd"] {
                assert!(
                    blocked.iter().any(|b| b == name),
                    "{name} not blocked: {blocked:?}"
                );
            }
            replayed += 1;
        }
        assert!(replayed > 0, "no captured session in {}", dir.display());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CaDir::init(&dir.path().join("pki"), &InitOptions::default()).unwrap();
        let mut issue = |name: &str| {
            let i = ca
                .issue(&IssueRequest::new(Subject::Gateway {
                    name: name.into(),
                    ips: vec![],
                }))
                .unwrap();
            (
                kakehashi_transport::tls::load_certs(&i.cert_path).unwrap(),
                kakehashi_transport::tls::load_key(&i.key_path).unwrap(),
            )
        };
        let (chain, key) = issue("rdp-a");
        let (_, other_key) = issue("rdp-b");
        // The check the agent's config runs at start, with the leg it guards.
        kakehashi_transport::tls::check_key_pair(&chain, &key).unwrap();
        assert!(kakehashi_transport::tls::check_key_pair(&chain, &other_key).is_err());
        let tls = RdpTls::new(&RdpConfig {
            chain,
            key: Arc::new(key),
        });
        assert!(tls.is_ok());
    }

    /// A Send Data Request from the client (PER-encoded MCS, [T.125]) on `channel`
    /// carrying a channel PDU header (message length, flags) and `data`.
    fn send_data(channel: u16, total: u32, flags: u32, data: &[u8]) -> Vec<u8> {
        let mut user = total.to_le_bytes().to_vec();
        user.extend_from_slice(&flags.to_le_bytes());
        user.extend_from_slice(data);
        let mut mcs = vec![0x64];
        mcs.extend_from_slice(&(1012u16 - 1001).to_be_bytes()); // initiator
        mcs.extend_from_slice(&channel.to_be_bytes());
        mcs.push(0x70); // high priority, begin and end of segmentation
                        // PER's one-byte length form.
        assert!(user.len() < 0x80);
        mcs.push(u8::try_from(user.len()).expect("under 0x80"));
        mcs.extend_from_slice(&user);
        let len = u16::try_from(4 + 3 + mcs.len()).expect("a short test PDU");
        let mut frame = vec![3, 0];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[2, 0xf0, 0x80]);
        frame.extend_from_slice(&mcs);
        frame
    }

    /// A laptop that makes the filter hold more than a session may (an undecided rdpdr
    /// announce followed by empty chunks the filter must keep) ends its own session: the
    /// filter refuses it over budget, the refusal is reported to the gateway, and the
    /// agent's shared budget gets every byte back.
    #[tokio::test]
    async fn a_session_over_the_filter_budget_ends_and_is_reported() {
        use kakehashi_rdpfilter::{canned, BudgetScope, SecurityProtocol};
        let budget = SharedBudget::new(AGENT_FILTER_BUDGET);
        let controls = Controls {
            smartcard: true,
            ..Controls::default()
        };
        let mut filter = Filter::with_shared_budget(controls, Limits::default(), budget.clone());
        filter
            .client_bytes(&canned::connection_request(SecurityProtocol::SSL))
            .unwrap();
        filter
            .server_bytes(&canned::connection_confirm(SecurityProtocol::SSL))
            .unwrap();
        filter.tls_established().unwrap();
        filter
            .client_bytes(&canned::connect_initial(&["rdpdr"]))
            .unwrap();
        filter.server_bytes(&canned::connect_response(1)).unwrap();
        assert_eq!(filter.phase(), Phase::Active);

        let (agent_client, mut laptop) = tokio::io::duplex(64 * 1024);
        let (agent_server, _desk) = tokio::io::duplex(64 * 1024);
        let rdpdr = 1004;
        let attack = tokio::spawn(async move {
            let first = send_data(rdpdr, 100, 1, &[0x72, 0x44, 0x41, 0x44]);
            let empty = send_data(rdpdr, 100, 0, &[]).repeat(500);
            laptop.write_all(&first).await?;
            for _ in 0..1000 {
                laptop.write_all(&empty).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let (tx, mut rx) = mpsc::channel(16);
        let mut reporter = Reporter::new("s-1".into(), Some(tx));
        let ended = pump(
            agent_client,
            agent_server,
            &mut filter,
            &mut reporter,
            &mut capture::Capture::default(),
        )
        .await;
        match ended {
            Ended::Refused(
                ref e @ FilterError::OverBudget {
                    scope: BudgetScope::Session,
                    ..
                },
            ) => assert_eq!(e.reason_code(), "rdp_uninspectable"),
            other => panic!("{other:?}"),
        }
        let report = rx.try_recv().unwrap();
        assert_eq!(
            (report.kind.as_str(), report.what.as_str()),
            ("session_refused", "rdp_uninspectable")
        );
        assert_eq!(budget.used(), 0);
        drop(filter);
        let _ = attack.await;
    }

    #[test]
    fn names_from_the_client_are_cleaned() {
        assert_eq!(printable("C:\n\u{1b}[31m"), "C:[31m");
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }
}
