//! The baselines' side of a comparison: desks reached directly over TLS or
//! plain TCP (behind HAProxy, rathole or socat), a bare tokio-rustls
//! mutual-TLS accept loop, and clients that dial them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kakehashi_proto::{frame, FrameKind};
use kakehashi_transport::tls::{self, TlsMaterial};
use kakehashi_transport::BoxIo;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::traffic::{self, DeskMode};

/// A plain rustls server config: TLS 1.3, ring, client certificates
/// required and verified against the CA and CRL, `alpn` if not empty.
pub fn server_config(
    m: &TlsMaterial,
    crl: Option<&std::path::Path>,
    alpn: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let roots = tls::roots(&m.ca)?;
    let mut vb = WebPkiClientVerifier::builder_with_provider(roots, tls::provider());
    if let Some(crl) = crl {
        vb = vb.with_crls(kakehashi_transport::crl::CrlFile::read(crl)?.ders);
    }
    let verifier = vb.build().context("client verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())?;
    if !alpn.is_empty() {
        cfg.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(cfg)
}

/// Serve desks in `mode` over mutual TLS on `l` until `stop`.
pub async fn serve_tls(
    l: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    mode: DeskMode,
    stop: CancellationToken,
) {
    let acc = TlsAcceptor::from(cfg);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = l.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue } },
        };
        let _ = tcp.set_nodelay(true);
        let acc = acc.clone();
        conns.spawn(async move {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await
            {
                let _ = traffic::serve_desk(s, mode).await;
            }
        });
    }
    conns.abort_all();
}

/// Serve desks in `mode` over plain TCP on `l` until `stop`.
pub async fn serve_plain(l: TcpListener, mode: DeskMode, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = l.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue } },
        };
        let _ = tcp.set_nodelay(true);
        conns.spawn(async move {
            let _ = traffic::serve_desk(tcp, mode).await;
        });
    }
    conns.abort_all();
}

/// The bare mutual-TLS accept loop of the handshake baseline: accept, full
/// handshake under a timeout, answer one Ping frame with a Pong, close. The
/// same shape as the gateway's loop (cap, timeout, `JoinSet`), nothing else.
pub async fn handshake_loop(
    l: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) {
    let acc = TlsAcceptor::from(cfg);
    let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
    let pong: Arc<[u8]> = pong.into();
    let cap = Arc::new(tokio::sync::Semaphore::new(25_000));
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = l.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue } },
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acc, pong) = (acc.clone(), pong.clone());
        conns.spawn(async move {
            let _permit = permit;
            let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await
            else {
                return;
            };
            let mut h = [0u8; frame::HEADER_LEN];
            if s.read_exact(&mut h).await.is_ok() {
                let _ = s.write_all(&pong).await;
                let _ = s.flush().await;
            }
            let _ = s.shutdown().await;
        });
    }
    conns.abort_all();
}

/// A client of a baseline relay.
#[derive(Debug, Clone)]
pub enum Dial {
    /// Mutual TLS to this address.
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
    /// Plain TCP to this address.
    Plain(SocketAddr),
}

impl Dial {
    /// Open one stream.
    pub async fn open(&self) -> anyhow::Result<BoxIo> {
        match self {
            Dial::Tls(addr, cfg) => {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let s = TlsConnector::from(cfg.clone())
                    .connect(tls::server_name("localhost")?, tcp)
                    .await?;
                Ok(Box::new(s))
            }
            Dial::Plain(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(tcp))
            }
        }
    }
}
