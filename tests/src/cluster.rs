//! Helpers of the cluster tests (several gateways on one PostgreSQL):
//! `tests/tests/e2e/cluster.rs` on loopback and `netns_cluster.rs` with
//! each gateway in its own network namespace.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ClientProc, Pki, OPEN_POLICY};

/// `[store]` on PostgreSQL `url`, logins required, and [`OPEN_POLICY`] as
/// the `[policy] file` (written into `pki`'s directory), its change feed
/// polled every `watch` besides LISTEN/NOTIFY.
pub fn pg_sections(pki: &Pki, url: &str, watch: &str) -> String {
    let policy = pki.path().join("open-policy.toml");
    std::fs::write(&policy, OPEN_POLICY).unwrap();
    format!(
        "[store]\nurl = \"{url}\"\n[identity]\nrequire_login = true\n[policy]\nwatch = \"{watch}\"\nfile = \"{}\"\n",
        policy.display()
    )
}

/// A live session through a real `kakehashi connect`: the local stream
/// after one echo round trip of `msg`.
pub async fn echo_session(client: &ClientProc, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(client.listen).await.unwrap();
    echo(&mut s, msg).await;
    s
}

/// One echo round trip of `msg` on `s` (within 10 s).
pub async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(buf, msg);
}
