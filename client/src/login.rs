//! `kakehashi login`: the loopback redirect (RFC 8252) with state and PKCE
//! (RFC 7636). The portal does the WebAuthn ceremony in the browser and
//! redirects to `http://127.0.0.1:PORT/callback?code=…&state=…`; the code is
//! then redeemed over the laptop's mutual-TLS connection, which binds the
//! token to this laptop's certificate.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::rand::SecureRandom as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Largest callback request head accepted (hyper's smallest read buffer).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a connection has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to the callback served at once (only the browser's redirect
/// is expected; any local process can connect).
const MAX_CONNECTIONS: usize = 8;

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
    /// The code is returned once its page has been sent.
    pub async fn wait(self, state: &str, within: Duration) -> anyhow::Result<String> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        tokio::time::timeout(within, async {
            loop {
                tokio::select! {
                    Some(done) = conns.join_next() => {
                        if let Ok(Some(outcome)) = done {
                            return outcome;
                        }
                    }
                    // The cap is taken before accepting.
                    r = self.listener.accept(), if slots.available_permits() > 0 => {
                        let (tcp, _) = r?;
                        let permit = slots.clone().try_acquire_owned()?;
                        conns.spawn(serve_one(tcp, state.to_owned(), permit));
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

/// What a callback request ended the wait with: the code, or the portal's
/// refusal (`portal: …`).
type Outcome = Arc<Mutex<Option<anyhow::Result<String>>>>;

/// The callback's state: the login's `state`, and where the outcome goes.
#[derive(Clone)]
struct CallbackState {
    state: Arc<str>,
    outcome: Outcome,
}

/// Serves one connection (one request: no keep-alive) with the one-route
/// router; returns the outcome once the response has been written.
async fn serve_one(
    tcp: tokio::net::TcpStream,
    state: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<anyhow::Result<String>> {
    let outcome = Outcome::default();
    let app = Router::new()
        .route("/callback", get(callback).fallback(not_a_get))
        .fallback(not_found)
        .with_state(CallbackState {
            state: state.into(),
            outcome: outcome.clone(),
        });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false);
    let svc = hyper_util::service::TowerToHyperService::new(app);
    // A slow, oversized or broken request just ends its connection.
    let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
    let mut slot = outcome.lock().unwrap_or_else(PoisonError::into_inner);
    slot.take()
}

/// `GET /callback?…`: the code for the right state; an error page otherwise.
async fn callback(State(cb): State<CallbackState>, RawQuery(query): RawQuery) -> Response {
    match parse_callback(query.as_deref(), &cb.state) {
        Ok(code) => {
            *cb.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ok(code));
            page(StatusCode::OK, PAGE_OK)
        }
        Err(e) => {
            if e.to_string().starts_with("portal:") {
                *cb.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(e));
            }
            page(StatusCode::BAD_REQUEST, PAGE_FAIL)
        }
    }
}

/// Any other method on `/callback`.
async fn not_a_get() -> Response {
    page(StatusCode::BAD_REQUEST, PAGE_FAIL)
}

/// Any other path.
async fn not_found() -> Response {
    page(StatusCode::NOT_FOUND, "not found")
}

fn page(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

const PAGE_OK: &str = "<!doctype html><meta charset=utf-8><title>Kakehashi</title>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>ログインしました</h1>\
<p>このウィンドウは閉じてかまいません。</p><p lang=en>You are logged in. You may close this window.</p>";
const PAGE_FAIL: &str = "<!doctype html><meta charset=utf-8><title>Kakehashi</title>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>ログインできませんでした</h1>\
<p>もう一度 kakehashi login を実行してください。</p><p lang=en>Login failed. Run kakehashi login again.</p>";

/// The code of a callback with `query`, if its state is `state`. Public
/// for the `login_callback` fuzz target: the query comes from whoever
/// requests the loopback URL.
pub fn parse_callback(query: Option<&str>, state: &str) -> anyhow::Result<String> {
    let pairs = || url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    let get = |k: &str| pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
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
    get("code")
        .filter(|c| !c.is_empty() && c.len() <= 256)
        .ok_or_else(|| anyhow!("no code"))
}

/// Try to open `url` in the person's browser (the `webbrowser` crate:
/// `$BROWSER`, else the desktop's default browser). Returns false if none
/// could be started.
pub fn open_browser(url: &str) -> bool {
    webbrowser::open(url).is_ok()
}

/// A unix time in Japan time, e.g. `2026-11-22 17:15 JST`.
pub fn local_time(unix: u64) -> String {
    // Japan time whatever the laptop's time zone (and the time crate cannot
    // read the local offset once the runtime's threads run): staff read the
    // end of their login in the time their work hours are written in.
    let jst = time::UtcOffset::from_hms(9, 0, 0).expect("a valid offset");
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(jst);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] JST");
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
    let cert_serial = crate::token::cert_serial(&cfg.cert);
    // Any gateway of the cluster redeems the code (the store is shared).
    let (gateways, _) = crate::failover::Gateways::establish(cfg, choice).await?;
    let res = gateways
        .dialer()
        .await
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
            cert_serial,
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn times_are_shown_in_japan_time() {
        // 2026-01-15 00:00 UTC is 09:00 in Japan.
        assert_eq!(local_time(1_768_435_200), "2026-01-15 09:00 JST");
    }

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
        assert_eq!(
            parse_callback(Some("code=abc&state=S1"), "S1").unwrap(),
            "abc"
        );
        assert!(
            parse_callback(Some("code=abc&state=S1"), "S2").is_err(),
            "state mismatch"
        );
        assert!(parse_callback(Some("state=S1"), "S1").is_err(), "no code");
        assert!(parse_callback(Some("error=denied&state=S1"), "S1")
            .unwrap_err()
            .to_string()
            .starts_with("portal:"));
        // An error without the right state is someone else's request: it
        // does not end the login (not a `portal:` error).
        for forged in [Some("error=denied"), Some("error=denied&state=S2"), None] {
            let e = parse_callback(forged, "S1").unwrap_err().to_string();
            assert!(!e.starts_with("portal:"), "{forged:?}: {e}");
        }
    }

    /// The answer to a raw request on a new connection to `addr`.
    async fn raw(addr: &str, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        r
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
        // A connection that never sends its request does not hold up the others.
        let _idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        for (req, expect) in [
            ("GET /favicon.ico HTTP/1.1\r\nHost: l\r\n\r\n", "404"),
            (
                "POST /callback?code=a&state=st HTTP/1.1\r\nHost: l\r\nContent-Length: 0\r\n\r\n",
                "400",
            ),
            (
                "GET /callback?error=access_denied HTTP/1.1\r\nHost: l\r\n\r\n",
                "400",
            ),
            (
                "GET /callback?code=x&state=wrong HTTP/1.1\r\nHost: l\r\n\r\n",
                "400",
            ),
            (
                "GET /callback?code=c0de&state=st HTTP/1.1\r\nHost: l\r\n\r\n",
                "200",
            ),
        ] {
            let r = raw(&addr, req).await;
            assert!(r.starts_with(&format!("HTTP/1.1 {expect}")), "{r}");
            assert!(
                r.to_ascii_lowercase().contains("cache-control: no-store"),
                "{r}"
            );
        }
        assert_eq!(waiter.await.unwrap().unwrap(), "c0de");
    }

    /// `host:port` of a bound callback.
    fn callback_addr(cb: &Callback) -> String {
        cb.redirect_uri
            .trim_start_matches("http://")
            .trim_end_matches("/callback")
            .to_string()
    }

    #[tokio::test]
    async fn the_portals_refusal_ends_the_wait() {
        let cb = Callback::bind().await.unwrap();
        let addr = callback_addr(&cb);
        let waiter = tokio::spawn(async move { cb.wait("st", Duration::from_secs(5)).await });
        let r = raw(
            &addr,
            "GET /callback?error=access_denied&state=st HTTP/1.1\r\nHost: l\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let e = waiter.await.unwrap().unwrap_err().to_string();
        assert!(e.starts_with("portal: login failed (access_denied)"), "{e}");
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused() {
        let cb = Callback::bind().await.unwrap();
        let addr = callback_addr(&cb);
        let waiter = tokio::spawn(async move { cb.wait("st", Duration::from_secs(5)).await });
        let big = format!(
            "GET /callback?code=c&state=st HTTP/1.1\r\nHost: l\r\nX: {}\r\n\r\n",
            "a".repeat(2 * MAX_REQUEST)
        );
        let r = raw(&addr, &big).await;
        assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
        let r = raw(
            &addr,
            "GET /callback?code=c1&state=st HTTP/1.1\r\nHost: l\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(waiter.await.unwrap().unwrap(), "c1");
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
