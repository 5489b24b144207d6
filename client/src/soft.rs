//! Login with a software authenticator file instead of a browser: the
//! demo's way to complete a real WebAuthn ceremony without a person. The
//! gateway sees exactly what a browser would send; only the authenticator
//! is swapped. Never for production laptops: the key sits in a file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use webauthn_authenticator_rs::prelude::{RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softtoken::SoftTokenFile;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;

/// Largest HTTP response read from the portal.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Run the portal's login ceremony for the `/login?…` URL `login_url` with
/// the authenticator in `file`, then follow the portal's redirect to our
/// loopback callback.
pub async fn login(login_url: &Url, file: &Path, cfg: &crate::Config) -> anyhow::Result<()> {
    let user = cfg
        .user
        .clone()
        .ok_or_else(|| anyhow!("[login] user is needed with soft_authenticator"))?;
    let q: std::collections::HashMap<String, String> =
        login_url.query_pairs().into_owned().collect();
    let origin = Url::parse(&login_url.origin().ascii_serialization())?;
    let http = Http::new(&cfg.ca)?;
    let start = http
        .post_json(login_url, "/api/login/start", &json!({ "user": user }))
        .await?;
    let ceremony = start
        .get("ceremony")
        .cloned()
        .ok_or_else(|| anyhow!("portal answer has no ceremony"))?;
    let options: RequestChallengeResponse = serde_json::from_value(
        start
            .get("options")
            .cloned()
            .ok_or_else(|| anyhow!("portal answer has no options"))?,
    )
    .context("portal sent unexpected WebAuthn options")?;
    let credential = {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .with_context(|| {
                format!("cannot open the software authenticator {}", file.display())
            })?;
        let mut token =
            SoftTokenFile::open(f).map_err(|e| anyhow!("cannot read {}: {e:?}", file.display()))?;
        let c = token
            .do_authentication(origin, options)
            .map_err(|e| anyhow!("software authenticator failed: {e:?}"))?;
        drop(token); // saves the signature counter
        c
    };
    let finish = http
        .post_json(
            login_url,
            "/api/login/finish",
            &json!({
                "ceremony": ceremony,
                "credential": credential,
                "redirect_uri": q.get("redirect_uri"),
                "state": q.get("state"),
                "code_challenge": q.get("code_challenge"),
                "device": q.get("device"),
            }),
        )
        .await?;
    let redirect = finish
        .get("redirect")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("portal answer has no redirect"))?;
    let r = Url::parse(redirect)?;
    if !matches!(r.host_str(), Some("127.0.0.1") | Some("[::1]")) {
        bail!("portal redirected somewhere other than this laptop: {redirect}");
    }
    // Follow the redirect as a browser would: our callback takes the code.
    let s =
        TcpStream::connect((r.host_str().unwrap_or("127.0.0.1"), r.port().unwrap_or(80))).await?;
    request(s, Method::GET, &r, None).await?;
    Ok(())
}

/// Enroll a new software authenticator for `user` with a one-time
/// enrollment code, through the portal at `portal` (its JSON API), and save
/// the authenticator to `file` (mode 0600). Used by the demo.
pub async fn enroll(
    portal: &str,
    ca: &Path,
    user: &str,
    code: &str,
    file: &Path,
) -> anyhow::Result<()> {
    use webauthn_authenticator_rs::softtoken::SoftToken;
    let base = Url::parse(portal)?;
    let origin = Url::parse(&base.origin().ascii_serialization())?;
    let http = Http::new(ca)?;
    let start = http
        .post_json(
            &base,
            "/api/enroll/start",
            &json!({ "user": user, "code": code }),
        )
        .await?;
    let ceremony = start
        .get("ceremony")
        .cloned()
        .ok_or_else(|| anyhow!("portal answer has no ceremony"))?;
    let options = serde_json::from_value(
        start
            .get("options")
            .cloned()
            .ok_or_else(|| anyhow!("portal answer has no options"))?,
    )
    .context("portal sent unexpected WebAuthn options")?;
    let (token, _ca) = SoftToken::new(true)
        .map_err(|e| anyhow!("cannot create a software authenticator: {e:?}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let f = opts
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    let mut token = SoftTokenFile::new(token, f);
    let credential = token
        .do_registration(origin, options)
        .map_err(|e| anyhow!("software authenticator failed: {e:?}"))?;
    drop(token); // saves the key
    http.post_json(
        &base,
        "/api/enroll/finish",
        &json!({ "ceremony": ceremony, "credential": credential }),
    )
    .await?;
    Ok(())
}

/// A client for the portal's JSON API (hyper's HTTP/1.1 client; HTTPS
/// verified against our CA, or plain HTTP on loopback).
struct Http {
    tls: Arc<rustls::ClientConfig>,
}

impl Http {
    fn new(ca: &Path) -> anyhow::Result<Self> {
        let ca = kakehashi_transport::tls::load_certs(ca)?;
        let mut c =
            rustls::ClientConfig::builder_with_provider(kakehashi_transport::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(kakehashi_transport::tls::roots(&ca)?)
                .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { tls: Arc::new(c) })
    }

    async fn post_json(&self, base: &Url, path: &str, body: &Value) -> anyhow::Result<Value> {
        let u = base.join(path)?;
        let host = u
            .host_str()
            .ok_or_else(|| anyhow!("portal URL has no host"))?
            .to_string();
        let port = u.port_or_known_default().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot reach the portal {host}:{port}"))?;
        let body = serde_json::to_vec(body)?;
        let (status, resp) = if u.scheme() == "https" {
            let name = kakehashi_transport::tls::server_name(&host)?;
            let s = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            request(s, Method::POST, &u, Some(body)).await?
        } else {
            request(tcp, Method::POST, &u, Some(body)).await?
        };
        let v: Value = serde_json::from_slice(&resp)
            .with_context(|| format!("portal {path} answered {status} with non-JSON"))?;
        if status != 200 {
            let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
            let ja = v
                .get("message_ja")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let en = v
                .get("message_en")
                .and_then(Value::as_str)
                .unwrap_or_default();
            bail!("portal refused the login [{code}] {ja} / {en}");
        }
        Ok(v)
    }
}

/// One request on its own connection `s` (HTTP/1.1, `Connection: close`);
/// returns the status and the whole body (at most [`MAX_RESPONSE`]).
async fn request<S>(
    s: S,
    method: Method,
    u: &Url,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, u.host_str().unwrap_or_default())
        .header(CONNECTION, "close")
        .header(ACCEPT, "application/json");
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(30), async {
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    anyhow!("portal response too large")
                } else {
                    anyhow!("bad HTTP response: {e}")
                }
            })?
            .to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .map_err(|_| anyhow!("portal did not answer in time"))?
}
