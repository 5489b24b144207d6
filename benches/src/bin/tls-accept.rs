//! `tls-accept`: the bare tokio-rustls mutual-TLS accept loop of the
//! handshake benchmark (P3). Same certificate, CA, CRL, TLS 1.3, ring and
//! ALPN as the gateway's terminal listener; after the handshake it answers
//! one Ping frame with a Pong and closes — nothing else.
//!
//! `tls-accept --pki-dir target/bench-pki --listen 127.0.0.1:PORT`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use kakehashi_benches::backend;
use kakehashi_benches::pki::BenchPki;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Cli {
    /// Bench CA directory (see `kakehashi-loadgen pki`).
    #[arg(long, default_value = "target/bench-pki")]
    pki_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pki = BenchPki::open_or_create(&cli.pki_dir)?;
    let cfg = backend::server_config(
        &pki.gateway()?,
        Some(&pki.files.crl),
        kakehashi_proto::ALPN_TERMINAL,
    )?;
    let l = tokio::net::TcpListener::bind(cli.listen).await?;
    println!("listening {}", l.local_addr()?);
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        kakehashi_transport::shutdown_signal().await;
        s2.cancel();
    });
    backend::handshake_loop(l, Arc::new(cfg), stop).await;
    Ok(())
}
