//! What the admin guide says about setting the portal up (issue 20,
//! blockers 3 and 4): a portal certificate of its own, a foreign origin
//! logged at the gateway with the fix, and a missing `[policy] file`
//! refused at start with the command that creates it.

use std::time::Duration;

use kakehashi_tests::*;
use tokio::net::TcpStream;

use super::portal_flood::{exchange, portal_gateway, tls_connector};

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_origin_is_logged_with_the_fix() {
    let pki = Pki::new();
    let db = pki.path().join("k.db");
    let (gw, addr, origin) = portal_gateway(&pki, &db, false, "").await;
    let port = addr.port();
    // As a browser would send it when staff open the portal under another
    // name than [portal] origin says.
    let body = r#"{"user":"u1"}"#;
    let req = |from: &str| {
        format!(
            "POST /api/login/start HTTP/1.1\r\nHost: gw1.example.lg.jp:{port}\r\nOrigin: {from}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let status = exchange(
        TcpStream::connect(addr).await.unwrap(),
        &req(&format!("http://gw1.example.lg.jp:{port}")),
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    gw.proc
        .wait_log(
            "Portal request from another origin refused",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let log = gw.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Portal request from another origin refused"))
        .unwrap();
    for want in [
        "origin_mismatch",
        &format!("http://gw1.example.lg.jp:{port}"),
        &origin,
        "set [portal] origin",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    // The configured origin is served.
    let status = exchange(TcpStream::connect(addr).await.unwrap(), &req(&origin))
        .await
        .unwrap();
    assert_ne!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_portal_serves_its_own_certificate() {
    let pki = Pki::new();
    // A CA the browsers already trust, standing for a public or LGWAN CA.
    // (Its own `localhost` certificate stands for the portal's web certificate.)
    let public = Pki::new();
    let web = public.gateway_cert();
    let db = pki.path().join("k.db");
    let extra = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        web.cert.display(),
        web.key.display()
    );
    let (_gw, addr, _) = portal_gateway(&pki, &db, true, &extra).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&public).connect(name.clone(), tcp).await;
    let status = exchange(
        tls.unwrap(),
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // The private CA's gateway certificate is no longer what the portal shows.
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(tls_connector(&pki).connect(name, tcp).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_policy_file_is_refused_with_the_command_that_creates_it() {
    let pki = Pki::new();
    let db = pki.path().join("k.db");
    let missing = pki.path().join("policy.toml");
    let identity = format!("{}file = \"{}\"\n", store_sections(&db), missing.display());
    let cfg = cli_config(&pki, &db);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(&login_sections(&db), &identity);
    std::fs::write(&cfg, text).unwrap();
    let (ok, out) = gateway_cli(&["run", "--config", cfg.to_str().unwrap()]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "kakehashi-gateway policy default > {}",
            missing.display()
        )),
        "{out}"
    );
}
