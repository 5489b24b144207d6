//! The PROXY protocol, version 2, in front of the TLS/TCP listeners: a load
//! balancer in TCP mode (HAProxy `send-proxy-v2`) opens each connection with
//! a binary header naming the client it forwards, so the audit log and the
//! logs carry the laptop's address rather than the balancer's.
//!
//! Trust is by address: only connections from [`Balancers`] (the gateway's
//! `[relay] proxy_protocol_from`) may — and then must — start with a header.
//! A header from any other address is refused and the connection closed,
//! never believed; a connection from another address that does not look
//! like PROXY is served as before (laptops may still connect directly).
//!
//! The header is read before TLS, byte-exact: 16 fixed bytes, then exactly
//! the length they announce, so not one TLS byte is consumed. The decoding
//! itself is the `ppp` crate's, behind [`decode`], which is pure (no I/O) and
//! fuzzed (`fuzz/fuzz_targets/proxy_header.rs`).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part: signature, version and command, family and protocol,
/// length of the rest.
pub const FIXED_LEN: usize = 16;

/// Most bytes after the fixed part that we read: the IPv6 address block
/// (36 bytes) plus 512 bytes of TLVs. The protocol allows 65,535; a balancer
/// in TCP mode sends a few short TLVs at most (HAProxy: none unless asked,
/// then a unique id of up to 128 bytes, an authority or ALPN, a CRC), and we
/// use none of them. A larger header is refused before it is read, so a
/// connection holds at most this much for its header.
pub const MAX_REST: usize = 36 + 512;

/// What a balancer's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// A client's connection, from this address (TCP over IPv4 or IPv6).
    Client(SocketAddr),
    /// The balancer's own connection (`LOCAL`, e.g. a health check): no
    /// client behind it; the gateway closes it without a log line.
    Local,
}

/// Why a connection was closed at its PROXY header. The codes are stable
/// (logs, the `kakehashi_proxy_headers_total` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyRefusal {
    /// A PROXY header (version 1 or 2) from an address that is not in
    /// `[relay] proxy_protocol_from`: anyone could write one, so it is not
    /// believed and the connection is closed.
    Untrusted,
    /// A connection from a listed balancer that does not start with a
    /// version 2 header (TLS straight away, version 1 text, anything else).
    Missing,
    /// A version 2 header that does not decode: an unknown version or
    /// command, an address block shorter than its family needs, a bad TLV,
    /// or the connection ended inside it.
    Invalid,
    /// A version 2 header announcing more than [`MAX_REST`] bytes.
    TooLarge,
    /// A `PROXY` command for anything but TCP over IPv4 or IPv6 (UDP, Unix
    /// sockets, an unspecified family).
    Unsupported,
}

impl ProxyRefusal {
    /// Every refusal.
    pub const ALL: &'static [ProxyRefusal] = &[
        ProxyRefusal::Untrusted,
        ProxyRefusal::Missing,
        ProxyRefusal::Invalid,
        ProxyRefusal::TooLarge,
        ProxyRefusal::Unsupported,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "proxy_untrusted",
            ProxyRefusal::Missing => "proxy_header_missing",
            ProxyRefusal::Invalid => "proxy_header_invalid",
            ProxyRefusal::TooLarge => "proxy_header_too_large",
            ProxyRefusal::Unsupported => "proxy_address_unsupported",
        }
    }

    /// The Japanese sentence (for the administrator: nobody behind the
    /// connection reads it).
    pub fn ja(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "proxy_protocol_from に登録されていないアドレスから PROXY ヘッダーが送られたため、接続を閉じました。",
            ProxyRefusal::Missing => "proxy_protocol_from に登録されたロードバランサーからの接続が PROXY プロトコル v2 のヘッダーで始まらなかったため、接続を閉じました。",
            ProxyRefusal::Invalid => "PROXY プロトコル v2 のヘッダーが不正なため、接続を閉じました。",
            ProxyRefusal::TooLarge => "PROXY プロトコル v2 のヘッダーが大きすぎるため、接続を閉じました。",
            ProxyRefusal::Unsupported => "PROXY ヘッダーの接続元が IPv4/IPv6 の TCP ではないため、接続を閉じました。",
        }
    }

    /// The English sentence.
    pub fn en(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "The connection was closed because it sent a PROXY header from an address not listed in proxy_protocol_from.",
            ProxyRefusal::Missing => "The connection was closed because a load balancer listed in proxy_protocol_from did not start it with a PROXY protocol v2 header.",
            ProxyRefusal::Invalid => "The connection was closed because its PROXY protocol v2 header is malformed.",
            ProxyRefusal::TooLarge => "The connection was closed because its PROXY protocol v2 header is too large.",
            ProxyRefusal::Unsupported => "The connection was closed because its PROXY header names a source other than TCP over IPv4 or IPv6.",
        }
    }
}

kakehashi_proto::impl_reason_text!(ProxyRefusal);

impl std::fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The length of the rest of a header whose fixed part is `fixed`, or why
/// the connection must close now.
pub fn rest_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyRefusal> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyRefusal::Missing);
    }
    // High nibble: the version (2); low nibble: the command (0 LOCAL, 1 PROXY).
    if (fixed[12] >> 4) != 2 || (fixed[12] & 0x0f) > 1 {
        return Err(ProxyRefusal::Invalid);
    }
    let rest = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if rest > MAX_REST {
        return Err(ProxyRefusal::TooLarge);
    }
    Ok(rest)
}

/// Decode one whole version 2 header: `header` is exactly its bytes (the
/// fixed part and the length it announces), nothing before or after. Pure
/// and total: any input gives a result, never a panic.
pub fn decode(header: &[u8]) -> Result<Forwarded, ProxyRefusal> {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let fixed: &[u8; FIXED_LEN] = header
        .get(..FIXED_LEN)
        .and_then(|f| f.try_into().ok())
        .ok_or(ProxyRefusal::Invalid)?;
    let rest = rest_len(fixed)?;
    if header.len() != FIXED_LEN + rest {
        return Err(ProxyRefusal::Invalid);
    }
    let h = Header::try_from(header).map_err(|_| ProxyRefusal::Invalid)?;
    if h.command == Command::Local {
        // A balancer's own connection: closed whatever else it carries.
        return Ok(Forwarded::Local);
    }
    if h.protocol != Protocol::Stream {
        return Err(ProxyRefusal::Unsupported);
    }
    let client = match h.addresses {
        Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        _ => return Err(ProxyRefusal::Unsupported),
    };
    // TLVs are not used, but a header whose TLVs do not parse is not one a
    // balancer wrote.
    if h.tlvs().any(|t| t.is_err()) {
        return Err(ProxyRefusal::Invalid);
    }
    Ok(Forwarded::Client(client))
}

/// A version 2 header as a balancer writes it: `PROXY` over TCP from
/// `client` to `to` (both of one family), or `LOCAL` for `None`. For tests,
/// the fuzz target and the benches; the gateway only reads headers.
pub fn encode(forwarded: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    let mut block = Vec::new();
    let (command, family) = match forwarded {
        None => (0x20, 0x00),
        Some((SocketAddr::V4(c), SocketAddr::V4(t))) => {
            block.extend(c.ip().octets());
            block.extend(t.ip().octets());
            block.extend(c.port().to_be_bytes());
            block.extend(t.port().to_be_bytes());
            (0x21, 0x11)
        }
        Some((c, t)) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            block.extend(v6(c).octets());
            block.extend(v6(t).octets());
            block.extend(c.port().to_be_bytes());
            block.extend(t.port().to_be_bytes());
            (0x21, 0x21)
        }
    };
    out.push(command);
    out.push(family);
    let len = u16::try_from(block.len()).expect("an address block is at most 36 bytes");
    out.extend(len.to_be_bytes());
    out.extend(block);
    out
}

/// Why reading a header ended the connection.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending a byte (a balancer's plain TCP
    /// check, a port scan): nothing to log above debug.
    Closed,
    /// Refused, with its reason.
    Refused(ProxyRefusal),
    /// The socket failed.
    Io(std::io::Error),
}

/// Read exactly one version 2 header from `io` (a connection from a listed
/// balancer): the fixed part, then the length it announces, and not a
/// byte more. The caller bounds the time (the handshake time-out).
pub async fn read_header<S: AsyncRead + Unpin>(io: &mut S) -> Result<Forwarded, ReadError> {
    let mut fixed = [0u8; FIXED_LEN];
    let mut got = 0;
    while got < FIXED_LEN {
        match io.read(&mut fixed[got..]).await {
            Ok(0) if got == 0 => return Err(ReadError::Closed),
            // What came so far was the signature's start (checked below).
            Ok(0) => return Err(ReadError::Refused(ProxyRefusal::Invalid)),
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e)),
        }
        // Stop at the first byte that cannot be a header's (TLS sent
        // straight to a balancer-only connection, say) instead of waiting
        // for 16 bytes that may never come.
        let seen = got.min(SIGNATURE.len());
        if fixed[..seen] != SIGNATURE[..seen] {
            return Err(ReadError::Refused(ProxyRefusal::Missing));
        }
    }
    let rest = rest_len(&fixed).map_err(ReadError::Refused)?;
    let mut header = Vec::with_capacity(FIXED_LEN + rest);
    header.extend_from_slice(&fixed);
    header.resize(FIXED_LEN + rest, 0);
    match io.read_exact(&mut header[FIXED_LEN..]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ReadError::Refused(ProxyRefusal::Invalid))
        }
        Err(e) => return Err(ReadError::Io(e)),
    }
    decode(&header).map_err(ReadError::Refused)
}

/// Whether a connection's first byte (`first`, seen without taking it)
/// starts a PROXY header of either version: `\r` for version 2, `P` for
/// version 1's `PROXY `. A TLS connection starts with a record type (0x16),
/// never either.
pub fn looks_like_proxy(first: u8) -> bool {
    first == SIGNATURE[0] || first == b'P'
}

/// The balancers allowed to send PROXY headers (`[relay]
/// proxy_protocol_from`): addresses and networks. Empty: none, the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balancers {
    nets: Vec<ipnet::IpNet>,
}

/// Most entries in [`Balancers`]: a few balancers, not a routing table.
pub const MAX_BALANCERS: usize = 64;

impl Balancers {
    /// Parse `"10.0.0.5"`, `"10.0.0.0/29"`, `"2001:db8::5"`,
    /// `"2001:db8::/64"`. Networks wider than /16 (IPv4) or /64 (IPv6) are
    /// refused: every host in them could write any client address into the
    /// audit log.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        if entries.len() > MAX_BALANCERS {
            return Err(format!(
                "lists at most {MAX_BALANCERS} balancer addresses or networks"
            ));
        }
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.as_ref().trim();
            let net = match e.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip.to_canonical()),
                Err(_) => e
                    .parse::<ipnet::IpNet>()
                    .map_err(|_| {
                        format!("{e:?} is not an IP address or a network (for example \"10.0.0.5\" or \"10.0.0.0/29\")")
                    })?
                    .trunc(),
            };
            let widest = match net {
                ipnet::IpNet::V4(_) => 16,
                ipnet::IpNet::V6(_) => 64,
            };
            if net.prefix_len() < widest {
                return Err(format!(
                    "{e:?} is too wide (at most /{widest}): list the balancers' own addresses"
                ));
            }
            nets.push(net);
        }
        Ok(Self { nets })
    }

    /// Whether no balancer is configured.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a listed balancer (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decodes_what_a_balancer_writes() {
        let v4 = encode(Some((sa("203.0.113.7:50123"), sa("10.0.1.11:443"))));
        assert_eq!(v4.len(), FIXED_LEN + 12);
        assert_eq!(decode(&v4), Ok(Forwarded::Client(sa("203.0.113.7:50123"))));
        let v6 = encode(Some((sa("[2001:db8::7]:40000"), sa("[2001:db8::1]:443"))));
        assert_eq!(v6.len(), FIXED_LEN + 36);
        assert_eq!(
            decode(&v6),
            Ok(Forwarded::Client(sa("[2001:db8::7]:40000")))
        );
        assert_eq!(decode(&encode(None)), Ok(Forwarded::Local));
    }

    #[test]
    fn a_local_header_may_carry_addresses_and_tlvs() {
        // HAProxy's health checks: LOCAL, with or without an address block.
        let mut h = encode(Some((sa("10.0.0.5:1000"), sa("10.0.1.11:443"))));
        h[12] = 0x20;
        assert_eq!(decode(&h), Ok(Forwarded::Local));
        // A NOOP TLV (type 0x04) of 3 bytes after the addresses.
        let mut t = encode(Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))));
        t.extend([0x04, 0, 3, 1, 2, 3]);
        t[15] += 6;
        assert_eq!(decode(&t), Ok(Forwarded::Client(sa("192.0.2.1:1"))));
    }

    #[test]
    fn refuses_what_is_not_a_tcp_header_of_version_2() {
        let good = encode(Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))));
        // Version 1, and TLS straight away.
        assert_eq!(
            decode(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"),
            Err(ProxyRefusal::Missing)
        );
        let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        tls.resize(40, 0);
        assert_eq!(decode(&tls), Err(ProxyRefusal::Missing));
        // Version 3, command 2.
        for (i, b) in [(12, 0x31), (12, 0x22)] {
            let mut h = good.clone();
            h[i] = b;
            assert_eq!(decode(&h), Err(ProxyRefusal::Invalid), "byte {i} = {b:#x}");
        }
        // UDP over IPv4, Unix stream, unspecified family with PROXY.
        for fam in [0x12, 0x31, 0x01] {
            let mut h = good.clone();
            h[13] = fam;
            if fam == 0x31 {
                // A Unix address block is 216 bytes.
                h.resize(FIXED_LEN + 216, 0);
                h[14..16].copy_from_slice(&216u16.to_be_bytes());
            }
            assert_eq!(
                decode(&h),
                Err(ProxyRefusal::Unsupported),
                "family {fam:#x}"
            );
        }
        // An address block shorter than its family needs.
        let mut h = good.clone();
        h.truncate(FIXED_LEN + 8);
        h[15] = 8;
        assert_eq!(decode(&h), Err(ProxyRefusal::Invalid));
        // Lengths that disagree with the bytes given.
        assert_eq!(decode(&good[..good.len() - 1]), Err(ProxyRefusal::Invalid));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(ProxyRefusal::Invalid));
        // A TLV running past the end.
        let mut t = good.clone();
        t.extend([0x04, 0, 9, 1]);
        t[15] += 4;
        assert_eq!(decode(&t), Err(ProxyRefusal::Invalid));
        // More than MAX_REST announced.
        let mut big = good.clone();
        big[14..16].copy_from_slice(&u16::try_from(MAX_REST + 1).unwrap().to_be_bytes());
        assert_eq!(decode(&big), Err(ProxyRefusal::TooLarge));
        assert_eq!(decode(&[]), Err(ProxyRefusal::Invalid));
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_no_tls_byte() {
        let mut bytes = encode(Some((sa("198.51.100.9:4242"), sa("10.0.1.11:443"))));
        bytes.extend([0x16, 0x03, 0x01]);
        let mut r = &bytes[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Forwarded::Client(sa("198.51.100.9:4242"))
        );
        assert_eq!(r, &[0x16, 0x03, 0x01]);
    }

    #[tokio::test]
    async fn a_read_stops_at_the_first_byte_that_cannot_be_a_header() {
        // A reader that would block after its bytes: a refusal must not wait.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0x16, 0x03])
            .await
            .unwrap();
        match read_header(&mut b).await {
            Err(ReadError::Refused(ProxyRefusal::Missing)) => {}
            other => panic!("{other:?}"),
        }
        // Closed before a byte; closed inside the header.
        match read_header(&mut &b""[..]).await {
            Err(ReadError::Closed) => {}
            other => panic!("{other:?}"),
        }
        let h = encode(None);
        match read_header(&mut &h[..10]).await {
            Err(ReadError::Refused(ProxyRefusal::Invalid)) => {}
            other => panic!("{other:?}"),
        }
        let h = encode(Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))));
        match read_header(&mut &h[..20]).await {
            Err(ReadError::Refused(ProxyRefusal::Invalid)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_proxy_can_start_with_its_first_bytes() {
        assert!(looks_like_proxy(encode(None)[0]));
        assert!(looks_like_proxy(b"PROXY TCP4"[0]));
        assert!(!looks_like_proxy(0x16));
    }

    #[test]
    fn balancers_are_addresses_or_small_networks() {
        let b = Balancers::parse(&["10.0.0.5", "10.0.1.0/29", "2001:db8::/64"]).unwrap();
        for (ip, listed) in [
            ("10.0.0.5", true),
            ("10.0.0.6", false),
            ("10.0.1.7", true),
            ("10.0.1.8", false),
            ("::ffff:10.0.0.5", true),
            ("2001:db8::1234", true),
            ("2001:db8:0:1::1", false),
        ] {
            assert_eq!(b.contains(ip.parse().unwrap()), listed, "{ip}");
        }
        assert!(Balancers::default().is_empty());
        assert!(!Balancers::default().contains("127.0.0.1".parse().unwrap()));
        for bad in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "::/0",
            "gw1.example",
            "10.0.0.5:443",
        ] {
            assert!(Balancers::parse(&[bad]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}")).collect();
        assert!(Balancers::parse(&many).is_err());
    }

    #[test]
    fn codes_are_unique_and_have_both_sentences() {
        let mut seen = std::collections::HashSet::new();
        for r in ProxyRefusal::ALL {
            assert!(seen.insert(r.code()));
            assert!(!r.ja().is_ascii() && r.en().ends_with('.'));
        }
    }
}
