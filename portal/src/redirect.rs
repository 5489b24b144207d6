//! The laptop login request: an RFC 8252 loopback redirect with `state`
//! and an RFC 7636 PKCE S256 challenge, checked strictly before any
//! WebAuthn ceremony, and the redirect back with the one-time code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use super::reason::Reason;

/// The parameters `kakehashi login` sends, as received (query string of
/// `/login`, or fields of `POST /api/login/finish`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct LoginParams {
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub device: Option<String>,
}

/// A checked login request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginRequest {
    /// `http://127.0.0.1:PORT/PATH` or `http://[::1]:PORT/PATH`.
    pub redirect: Url,
    /// Echoed back unchanged.
    pub state: String,
    /// base64url(SHA-256(verifier)), 43 characters.
    pub code_challenge: String,
    /// The laptop the client runs on (the device id of its certificate):
    /// the one-time code is issued for it, and only that laptop's
    /// certificate can redeem it. The page names it so the person can check
    /// it against the label on their laptop.
    pub device: String,
}

const MAX_REDIRECT: usize = 512;
const MAX_STATE: usize = 128;

fn unreserved(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks a loopback redirect URI (RFC 8252 §7.3): `http`, the literal
/// address 127.0.0.1 or ::1 (not `localhost`), an explicit port, no user
/// info, query or fragment.
pub(crate) fn check_redirect(uri: &str) -> Result<Url, Reason> {
    if uri.is_empty() || uri.len() > MAX_REDIRECT || uri.chars().any(char::is_control) {
        return Err(Reason::RedirectInvalid);
    }
    let url = Url::parse(uri).map_err(|_| Reason::RedirectInvalid)?;
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
        _ => false,
    };
    let ok = url.scheme() == "http"
        && loopback
        && url.port().is_some_and(|p| p != 0)
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if ok {
        Ok(url)
    } else {
        Err(Reason::RedirectInvalid)
    }
}

impl LoginParams {
    /// Checks every parameter; the first problem wins.
    pub(crate) fn check(&self) -> Result<LoginRequest, Reason> {
        let redirect = check_redirect(self.redirect_uri.as_deref().unwrap_or(""))?;
        if self.code_challenge_method.as_deref() != Some("S256") {
            return Err(Reason::PkceInvalid);
        }
        let challenge = self.code_challenge.as_deref().unwrap_or("");
        let challenge_ok = challenge.len() == 43
            && challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !challenge_ok {
            return Err(Reason::PkceInvalid);
        }
        let state = self.state.as_deref().unwrap_or("");
        if state.len() < 8 || state.len() > MAX_STATE || !unreserved(state) {
            return Err(Reason::LoginRequestInvalid);
        }
        // Mandatory: a code is bound to the laptop that asked for it.
        let device = self.device.as_deref().unwrap_or("");
        kakehashi_store::validate_id("device", device).map_err(|_| Reason::LoginRequestInvalid)?;
        let device = device.to_owned();
        Ok(LoginRequest {
            redirect,
            state: state.to_owned(),
            code_challenge: challenge.to_owned(),
            device,
        })
    }
}

impl LoginRequest {
    /// `redirect_uri?code=CODE&state=STATE`.
    pub(crate) fn redirect_with(&self, code: &str) -> String {
        let mut url = self.redirect.clone();
        url.query_pairs_mut()
            .append_pair("code", code)
            .append_pair("state", &self.state);
        url.into()
    }

    /// The redirect's host, for logs.
    pub(crate) fn loopback_ip(&self) -> Option<IpAddr> {
        match self.redirect.host() {
            Some(Host::Ipv4(ip)) => Some(ip.into()),
            Some(Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn params(uri: &str) -> LoginParams {
        LoginParams {
            redirect_uri: Some(uri.into()),
            state: Some("st4te-xyz_123".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            device: Some("PC-0001".into()),
        }
    }

    #[test]
    fn loopback_redirects() {
        for ok in [
            "http://127.0.0.1:49152/callback",
            "http://127.0.0.1:1/",
            "http://[::1]:8400/cb/x",
        ] {
            assert!(check_redirect(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://localhost:49152/callback",
            "https://127.0.0.1:49152/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:80/callback",
            "http://127.0.0.2:49152/callback",
            "http://evil.example:49152/callback",
            "http://127.0.0.1.evil.example:49152/",
            "http://user@127.0.0.1:49152/callback",
            "http://127.0.0.1:49152/callback?x=1",
            "http://127.0.0.1:49152/callback#frag",
            "http://[::2]:8400/",
            "javascript:alert(1)",
            "//127.0.0.1:49152/",
        ] {
            assert_eq!(check_redirect(bad), Err(Reason::RedirectInvalid), "{bad}");
        }
    }

    #[test]
    fn parameters() {
        let req = params("http://127.0.0.1:50000/cb").check().unwrap();
        assert_eq!(req.device, "PC-0001");
        assert_eq!(
            req.redirect_with("abc"),
            "http://127.0.0.1:50000/cb?code=abc&state=st4te-xyz_123"
        );
        let mut p = params("http://127.0.0.1:50000/cb");
        p.code_challenge_method = Some("plain".into());
        assert_eq!(p.check(), Err(Reason::PkceInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        p.code_challenge = Some("short".into());
        assert_eq!(p.check(), Err(Reason::PkceInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        p.state = None;
        assert_eq!(p.check(), Err(Reason::LoginRequestInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        p.state = Some("has space in it".into());
        assert_eq!(p.check(), Err(Reason::LoginRequestInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        p.device = Some("../etc".into());
        assert_eq!(p.check(), Err(Reason::LoginRequestInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        // Without a device there is nothing to bind the code to: refused.
        p.device = None;
        assert_eq!(p.check(), Err(Reason::LoginRequestInvalid));
        let mut p = params("http://127.0.0.1:50000/cb");
        p.device = Some(String::new());
        assert_eq!(p.check(), Err(Reason::LoginRequestInvalid));
    }
}
