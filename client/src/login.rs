//! `kakehashi login`: the loopback redirect (RFC 8252) with state and PKCE
//! (RFC 7636). The portal does the WebAuthn ceremony in the browser and
//! redirects to `http://127.0.0.1:PORT/callback?code=…&state=…`; the code is
//! then redeemed over the laptop's mutual-TLS connection, which binds the
//! token to this laptop's certificate.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest callback request accepted.
const MAX_REQUEST: usize = 8 * 1024;

/// base64url (no padding) of `n` random bytes.
pub fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A PKCE verifier and its S256 challenge.
#[derive(Debug)]
pub struct Pkce {
    /// Kept by the client, sent only when redeeming.
    pub verifier: String,
    /// Sent to the portal.
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier (43 characters) and its challenge.
    pub fn new() -> Self {
        let verifier = random_b64(32);
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
        Self {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// The portal's login page URL for this attempt.
pub fn login_url(
    portal: &str,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
    device: &str,
) -> anyhow::Result<url::Url> {
    let mut u =
        url::Url::parse(portal).with_context(|| format!("portal URL {portal:?} is not valid"))?;
    u.set_path("/login");
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        q.append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("device", device);
    }
    Ok(u)
}

/// The loopback listener the portal redirects to.
#[derive(Debug)]
pub struct Callback {
    listener: TcpListener,
    /// `http://127.0.0.1:PORT/callback`.
    pub redirect_uri: String,
}

impl Callback {
    /// Listen on an ephemeral loopback port.
    pub async fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot open a loopback port for the login redirect")?;
        let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
        Ok(Self {
            listener,
            redirect_uri,
        })
    }

    /// Wait for the redirect carrying `state`; return its code. Requests
    /// with another state are answered with an error page and ignored.
    pub async fn wait(self, state: &str, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, async {
            loop {
                let (mut s, _) = self.listener.accept().await?;
                let head = match read_head(&mut s).await {
                    Ok(h) => h,
                    Err(_) => continue,
                };
                match parse_callback(&head, state) {
                    Ok(Some(code)) => {
                        let _ = respond(&mut s, 200, PAGE_OK).await;
                        return Ok(code);
                    }
                    Ok(None) => {
                        let _ = respond(&mut s, 404, "not found").await;
                    }
                    Err(e) => {
                        let _ = respond(&mut s, 400, PAGE_FAIL).await;
                        if e.to_string().starts_with("portal:") {
                            return Err(e);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow!(
                "no login within {} minutes; run `kakehashi login` again",
                within.as_secs() / 60
            )
        })?
    }
}

const PAGE_OK: &str = "<!doctype html><meta charset=utf-8><title>Kakehashi</title>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>ログインしました</h1>\
<p>このウィンドウは閉じてかまいません。</p><p lang=en>You are logged in. You may close this window.</p>";
const PAGE_FAIL: &str = "<!doctype html><meta charset=utf-8><title>Kakehashi</title>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>ログインできませんでした</h1>\
<p>もう一度 kakehashi login を実行してください。</p><p lang=en>Login failed. Run kakehashi login again.</p>";

async fn read_head(s: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed");
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_REQUEST {
                bail!("request too large");
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow!("slow request"))??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `Ok(Some(code))` for a good callback, `Ok(None)` for another path.
fn parse_callback(head: &str, state: &str) -> anyhow::Result<Option<String>> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        bail!("not a GET");
    };
    let u = url::Url::parse(&format!("http://127.0.0.1{target}"))?;
    if u.path() != "/callback" {
        return Ok(None);
    }
    let get = |k: &str| {
        u.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    // The state first: any local process can request this URL, and only
    // the portal knows the state, so an `error` without it must not abort
    // the login that is waiting.
    let got_state = get("state").unwrap_or_default();
    use subtle::ConstantTimeEq as _;
    if !bool::from(got_state.as_bytes().ct_eq(state.as_bytes())) {
        bail!("state mismatch");
    }
    if let Some(err) = get("error") {
        bail!("portal: login failed ({err})");
    }
    let code = get("code")
        .filter(|c| !c.is_empty() && c.len() <= 256)
        .ok_or_else(|| anyhow!("no code"))?;
    Ok(Some(code))
}

async fn respond(s: &mut tokio::net::TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await
}

/// Try to open `url` in the person's browser. Returns false if no opener ran.
pub fn open_browser(url: &str) -> bool {
    let candidates: &[(&str, &[&str])] = if cfg!(windows) {
        &[("cmd", &["/C", "start", ""])]
    } else if cfg!(target_os = "macos") {
        &[("open", &[])]
    } else {
        &[("xdg-open", &[])]
    };
    candidates.iter().any(|(cmd, args)| {
        std::process::Command::new(cmd)
            .args(*args)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
    })
}

/// A unix time as local wall-clock text, e.g. `2026-11-22 17:15 +09:00`.
pub fn local_time(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let t = match time::UtcOffset::current_local_offset() {
        Ok(o) => t.to_offset(o),
        Err(_) => t,
    };
    let f = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] [offset_hour sign:mandatory]:[offset_minute]"
    );
    t.format(&f).unwrap_or_else(|_| unix.to_string())
}

/// The device id in this laptop's certificate, if it can be read.
pub fn device_id(cert: &std::path::Path) -> Option<String> {
    let certs = kakehashi_transport::tls::load_certs(cert).ok()?;
    match kakehashi_pki::identity_from_der(certs.first()?).ok()? {
        kakehashi_pki::Identity::Device { id, .. } => Some(id),
        _ => None,
    }
}

/// `kakehashi login`: get a one-time code from the portal (browser, or the
/// configured software authenticator), redeem it over mutual TLS, keep the token.
pub async fn run(cfg: crate::Config, no_browser: bool) -> anyhow::Result<()> {
    let portal = cfg
        .portal
        .clone()
        .ok_or_else(|| anyhow!("the configuration has no [login] portal = \"https://…\" (ask IT for an updated client.toml)"))?;
    // The portal binds the one-time code to this laptop: without the device
    // id of its certificate there is nothing to bind it to.
    let device = device_id(&cfg.cert).ok_or_else(|| {
        anyhow!(
            "cannot read this laptop's device id from its certificate {} (is it a Kakehashi device certificate?)",
            cfg.cert.display()
        )
    })?;
    let pkce = Pkce::new();
    let state = random_b64(16);
    let cb = Callback::bind().await?;
    let url = login_url(&portal, &cb.redirect_uri, &state, &pkce.challenge, &device)?;
    let code = match cfg.soft_authenticator.clone() {
        Some(file) => {
            let waiter = tokio::spawn(cb.wait_owned(state.clone(), Duration::from_secs(60)));
            crate::soft::login(&url, &file, &cfg).await?;
            waiter.await.context("login redirect task")??
        }
        None => {
            println!("login url: {url}");
            println!("この端末 / this laptop: {device} (ログイン画面に同じ番号が表示されていることを確かめてください / check the login page shows the same)");
            println!("ブラウザでログインしてください (セキュリティキーまたは Windows Hello) / Log in in your browser (security key or Windows Hello).");
            if !no_browser && !open_browser(url.as_str()) {
                println!("ブラウザを開けませんでした。上の URL を開いてください / Could not open a browser: open the URL above.");
            }
            cb.wait(&state, Duration::from_secs(300)).await?
        }
    };
    let choice = cfg.transport;
    let token_file = cfg.token_file.clone();
    let (dialer, _) = crate::Dialer::establish(cfg, choice).await?;
    let res = dialer
        .redeem(
            kakehashi_proto::message::Secret(code),
            kakehashi_proto::message::Secret(pkce.verifier),
        )
        .await?;
    crate::token::save(
        &token_file,
        &crate::token::StoredToken {
            user: res.user.clone(),
            token: res.token,
            expires_at: res.expires_at,
        },
    )?;
    println!(
        "ログインしました / logged in: {} (有効期限 / until {})",
        res.user,
        local_time(res.expires_at)
    );
    Ok(())
}

impl Callback {
    /// [`Callback::wait`] taking ownership of the state (for spawning).
    pub async fn wait_owned(self, state: String, within: Duration) -> anyhow::Result<String> {
        self.wait(&state, within).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        let p = Pkce::new();
        assert_eq!(p.verifier.len(), 43);
        let d = ring::digest::digest(&ring::digest::SHA256, p.verifier.as_bytes());
        assert_eq!(
            p.challenge,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
        );
    }

    #[test]
    fn callback_parsing() {
        let ok = "GET /callback?code=abc&state=S1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_callback(ok, "S1").unwrap(), Some("abc".into()));
        assert!(parse_callback(ok, "S2").is_err(), "state mismatch");
        assert_eq!(
            parse_callback("GET /favicon.ico HTTP/1.1\r\n\r\n", "S1").unwrap(),
            None
        );
        assert!(parse_callback("POST /callback?code=a&state=S1 HTTP/1.1\r\n\r\n", "S1").is_err());
        assert!(
            parse_callback("GET /callback?error=denied&state=S1 HTTP/1.1\r\n\r\n", "S1")
                .unwrap_err()
                .to_string()
                .starts_with("portal:")
        );
        // An error without the right state is someone else's request: it
        // does not end the login (not a `portal:` error).
        for forged in [
            "GET /callback?error=denied HTTP/1.1\r\n\r\n",
            "GET /callback?error=denied&state=S2 HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_callback(forged, "S1").unwrap_err().to_string();
            assert!(!e.starts_with("portal:"), "{forged}: {e}");
        }
    }

    #[tokio::test]
    async fn callback_returns_the_code_for_the_right_state() {
        let cb = Callback::bind().await.unwrap();
        let uri = cb.redirect_uri.clone();
        let waiter = tokio::spawn(async move { cb.wait("st", Duration::from_secs(5)).await });
        let addr = uri
            .trim_start_matches("http://")
            .trim_end_matches("/callback")
            .to_string();
        for (target, expect) in [
            ("/callback?error=access_denied", "400"),
            ("/callback?code=x&state=wrong", "400"),
            ("/callback?code=c0de&state=st", "200"),
        ] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: l\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).await.unwrap();
            assert!(r.starts_with(&format!("HTTP/1.1 {expect}")), "{r}");
        }
        assert_eq!(waiter.await.unwrap().unwrap(), "c0de");
    }

    #[test]
    fn login_url_has_the_pkce_parameters() {
        let u = login_url(
            "https://gw.example:8444/ignored",
            "http://127.0.0.1:5/callback",
            "st",
            "ch",
            "LAPTOP-1",
        )
        .unwrap();
        assert_eq!(u.path(), "/login");
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5/callback");
        assert_eq!(q["device"], "LAPTOP-1");
    }
}
