//! Rough memory cost of an idle session: RSS of the gateway (and of the
//! agent and client) before and after opening N sessions that then sit idle.
//!
//! `benches/idle-memory.sh [N] [quic|tcp]` builds release binaries, raises
//! the file-descriptor limit and runs this.

use std::time::Duration;

use kakehashi_pki::TerminalClass;
use kakehashi_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let transport = args.next().unwrap_or_else(|| "quic".into());
    let mut pki = Pki::new();
    let gw = start_gateway(
        &pki,
        GatewayOpts {
            max_sessions: Some(n + 100),
            // All `n` sessions go through one laptop's QUIC connection. The
            // gateway returns the streams of ended sessions (probes, warm-up)
            // in steps of 1/8 of the limit: leave room for them.
            // The budget of bytes in flight out of the way: this bench
            // measures idle memory, not the admission rule.
            limits: format!(
                "terminal_quic_streams = {}\nmemory_budget_mib = 1048576\n",
                2 * n + 64
            ),
            ..Default::default()
        },
    )
    .await;
    let desk = echo_server().await;
    let agent = start_agent(&mut pki, "DESK-IDLE", &gw.addrs, desk, &transport);
    let dev = pki.device("LAPTOP-IDLE", TerminalClass::Home);
    let cfg = client_config(&pki, &dev, gw.addrs.terminal_tcp, gw.addrs.terminal_quic);
    let client = start_client(&pki, &cfg, "DESK-IDLE", &transport).await?;
    wait_echo(client.listen, Duration::from_secs(20)).await?;
    // Warm up: allocator pools, TLS session caches, a few sessions open and closed.
    for _ in 0..20 {
        roundtrip(client.listen, b"warm").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = [
        ("gateway", gw.proc.pid()),
        ("agent", agent.pid()),
        ("client", client.proc.pid()),
    ];
    let before: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(client.listen).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b)).await??;
        open.push(s);
        if (i + 1) % 250 == 0 {
            eprintln!("{} sessions open", i + 1);
        }
    }
    // Let the sessions settle into idleness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    println!("idle sessions: {n} over {transport}");
    for (i, (name, _)) in pids.iter().enumerate() {
        let delta = after[i] as i64 - before[i] as i64;
        println!(
            "{name:8} RSS {:>7} KiB -> {:>7} KiB  delta {:>7} KiB  = {:.1} KiB per session",
            before[i],
            after[i],
            delta,
            delta as f64 / n as f64
        );
    }
    drop(open);
    Ok(())
}
