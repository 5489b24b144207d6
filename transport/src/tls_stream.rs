//! The server side of TLS over TCP, holding no buffer while the connection
//! is idle.
//!
//! tokio-rustls keeps rustls's receive buffer (4 KiB from the first read on)
//! for the whole life of a connection. The gateway holds two TLS connections
//! per TCP session (the laptop's, the agent's data channel) and one per
//! agent: at 20,000 idle sessions that is over 160 MiB of buffers holding
//! nothing. Here rustls runs unbuffered
//! ([`UnbufferedServerConnection`]): the stream waits until the socket is
//! readable before it takes a receive buffer from a per-thread pool, and
//! gives the buffer back once no partial record is left in it; bytes to send
//! get a buffer only until the socket has taken them. rustls still does all
//! of TLS (the handshake, the client certificate, records, alerts, key
//! updates, close_notify); this module only carries bytes between the socket
//! and rustls.
//!
//! Behaviour matches tokio-rustls where the gateway can tell: errors from
//! rustls are `InvalidData` wrapping the [`rustls::Error`], and a peer that
//! closes the TCP connection without a `close_notify` is an
//! `UnexpectedEof`, not a clean end of stream (a cut connection must not
//! look like a complete one).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pool;

/// A pooled buffer: one TLS 1.3 record (5-byte header, 2^14 bytes of
/// plaintext, up to 256 bytes of expansion) with room to spare.
const BUF: usize = 17 * 1024;
/// First receive buffer of a handshake. Grows when a message needs more, so
/// a peer that trickles a partial ClientHello holds no more than rustls's
/// own buffer would.
const HANDSHAKE_BUF: usize = 4 * 1024;
/// Largest receive buffer. Records of a handshake message stay in it until
/// the whole message is there, and rustls accepts messages up to 64 KiB.
pub const MAX_RECEIVE: usize = 72 * 1024;
/// Plaintext encrypted per write: one full record.
const MAX_PLAIN: usize = 16 * 1024;
/// The most one open connection (past its handshake) holds in memory: a
/// partial record received, one record waiting for the socket, and the
/// plaintext of one record not yet read. What the kernel holds in the
/// socket's buffers is not the process's memory and not counted.
pub const MOST_HELD: usize = 3 * BUF;

thread_local! {
    /// Receive buffers: empty, with `BUF` of capacity (reads fill the spare
    /// capacity, so they need no zeroing).
    static IN_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Send buffers: `BUF` initialised bytes (rustls encrypts into a slice,
    /// and zeroing 17 KiB per record would cost more than the copy).
    static OUT_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_in() -> Vec<u8> {
    pool::take(&IN_POOL, || Vec::with_capacity(BUF))
}

fn take_out() -> Vec<u8> {
    pool::take(&OUT_POOL, || vec![0; BUF])
}

/// Return a receive buffer to the pool (or free it), leaving `v` unallocated.
fn release_in(v: &mut Vec<u8>) {
    let mut b = std::mem::take(v);
    if b.capacity() == BUF {
        b.clear();
        pool::give(&IN_POOL, b);
    }
}

/// Return a send buffer to the pool (or free it), leaving `v` unallocated.
fn release_out(v: &mut Vec<u8>) {
    let b = std::mem::take(v);
    if b.capacity() == BUF && b.len() == BUF {
        pool::give(&OUT_POOL, b);
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What the caller wants from one run of rustls.
enum Want<'a> {
    /// Only what arrived: plaintext, and TLS messages to answer.
    Read,
    /// Encrypt (a prefix of) these bytes.
    Write(&'a [u8]),
    /// Send `close_notify`.
    Close,
}

/// Where rustls stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It needs more bytes from the peer to go on with the handshake.
    Handshaking,
    /// Application data may flow (and more bytes from the peer may arrive).
    Open,
    /// Both sides sent `close_notify`.
    Closed,
}

/// A TLS 1.3 server connection over TCP; see the module documentation.
pub struct ServerTlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (a partial record at most, after
    /// the handshake). Unallocated while empty and idle.
    inbuf: Vec<u8>,
    /// TLS bytes waiting for the socket: `out[out_pos..out_end]`.
    /// Unallocated once the socket has taken them.
    out: Vec<u8>,
    out_pos: usize,
    out_end: usize,
    /// Plaintext decrypted but not yet read, from `plain_pos` on.
    plain: Vec<u8>,
    plain_pos: usize,
    peer_closed: bool,
    write_closed: bool,
}

impl std::fmt::Debug for ServerTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsStream")
            .field("tcp", &self.tcp)
            .field("received", &self.inbuf.len())
            .field("to_send", &(self.out_end - self.out_pos))
            .field("plaintext", &(self.plain.len() - self.plain_pos))
            .field("peer_closed", &self.peer_closed)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

/// Run the TLS handshake as the server on `tcp`. Callers bound it with a
/// timeout; nothing here waits forever on its own.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<ServerTlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut s = ServerTlsStream {
        tcp,
        conn,
        inbuf: Vec::new(),
        out: Vec::new(),
        out_pos: 0,
        out_end: 0,
        plain: Vec::new(),
        plain_pos: 0,
        peer_closed: false,
        write_closed: false,
    };
    poll_fn(|cx| s.poll_handshake(cx)).await?;
    if s.inbuf.is_empty() {
        release_in(&mut s.inbuf);
    }
    Ok(s)
}

impl ServerTlsStream {
    /// The end-entity certificate the client presented.
    pub fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        self.conn.peer_certificates().and_then(|c| c.first())
    }

    /// Whether the handshake was a full one or resumed a session.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Bytes of buffers this connection holds now (zero when idle).
    pub fn buffered_capacity(&self) -> usize {
        self.inbuf.capacity() + self.out.capacity() + self.plain.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let stop = match self.step(&mut None, Want::Read) {
                Ok((stop, _)) => stop,
                Err(e) => {
                    // The alert rustls queued, if the socket takes it now.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            // Our flight has to reach the client before we wait for its answer.
            ready!(self.poll_send(cx))?;
            match stop {
                Stop::Open if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Stop::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client closed the connection during the TLS handshake",
                    )))
                }
                _ => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed the connection during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }

    /// Run rustls over the bytes received so far, until it needs bytes from
    /// the peer or may take application data. Plaintext goes to `dst` while
    /// it has room and to `self.plain` after; TLS bytes to send are queued in
    /// `self.out`. Returns where rustls stopped and how many bytes of a
    /// [`Want::Write`] it encrypted.
    fn step(
        &mut self,
        dst: &mut Option<&mut ReadBuf<'_>>,
        want: Want<'_>,
    ) -> io::Result<(Stop, usize)> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.inbuf);
            let mut stop = None;
            match state {
                Err(e) => {
                    self.inbuf.drain(..discard);
                    self.queue_alert();
                    return Err(invalid(e));
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(invalid)?;
                        put_plain(dst, &mut self.plain, rec.payload);
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, &mut self.out, &mut self.out_end)?
                }
                // The encoded bytes are queued in `out`, in order, ahead of
                // anything encrypted later: as far as rustls is concerned
                // they are sent.
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::BlockedHandshake) => stop = Some((Stop::Handshaking, 0)),
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    stop = Some((Stop::Closed, 0));
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let n = match want {
                        Want::Read => 0,
                        Want::Write(data) => {
                            encrypt(&mut w, data, &mut self.out, &mut self.out_end)?
                        }
                        Want::Close => {
                            close_notify(&mut w, &mut self.out, &mut self.out_end)?;
                            0
                        }
                    };
                    stop = Some((Stop::Open, n));
                }
                // Early data is never enabled in our configs.
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ))
                }
            }
            self.inbuf.drain(..discard);
            if let Some(s) = stop {
                return Ok(s);
            }
        }
    }

    /// After an error, queue the alert rustls prepared for the peer.
    fn queue_alert(&mut self) {
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state {
            let _ = encode(&mut e, &mut self.out, &mut self.out_end);
        }
    }

    /// Read from the socket into `inbuf`. Takes a buffer only once the
    /// socket is readable, and gives it back when the read would block with
    /// nothing buffered.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.inbuf.capacity() == 0 {
                ready!(self.tcp.poll_read_ready(cx))?;
                self.inbuf = if self.conn.is_handshaking() {
                    Vec::with_capacity(HANDSHAKE_BUF)
                } else {
                    take_in()
                };
            }
            let cap = self.inbuf.capacity();
            if self.inbuf.len() == cap {
                if cap >= MAX_RECEIVE {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS message larger than the receive limit",
                    )));
                }
                self.inbuf.reserve_exact(cap.min(MAX_RECEIVE - cap));
            }
            match self.tcp.try_read_buf(&mut self.inbuf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.inbuf.is_empty() {
                        release_in(&mut self.inbuf);
                    }
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Write the queued TLS bytes to the socket; frees the queue once empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_end {
            let pending = &self.out[self.out_pos..self.out_end];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if self.out.capacity() != 0 {
            release_out(&mut self.out);
            self.out_pos = 0;
            self.out_end = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Plaintext to `dst` while it has room, the rest to `plain` (in order:
/// only when nothing is waiting in `plain` already does `dst` get any).
fn put_plain(dst: &mut Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>, mut bytes: &[u8]) {
    if plain.is_empty() {
        if let Some(d) = dst {
            let n = d.remaining().min(bytes.len());
            d.put_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }
    plain.extend_from_slice(bytes);
}

/// Append to `out[..*end]` what `f` writes into the slice after it, growing
/// `out` when `f` asks for more room.
fn append<E>(
    out: &mut Vec<u8>,
    end: &mut usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<usize, E> {
    if out.is_empty() {
        *out = take_out();
    }
    loop {
        let room = out.len() - *end;
        match f(&mut out[*end..]) {
            Ok(n) => {
                *end += n;
                return Ok(n);
            }
            Err(e) => match too_small(&e) {
                Some(required) if required > room => out.resize(*end + required, 0),
                _ => return Err(e),
            },
        }
    }
}

type Server = rustls::server::ServerConnectionData;

fn encode(e: &mut EncodeTlsData<'_, Server>, out: &mut Vec<u8>, end: &mut usize) -> io::Result<()> {
    let too_small = |e: &EncodeError| match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    };
    append(out, end, |b| e.encode(b), too_small)
        .map(|_| ())
        .map_err(|e| io::Error::other(e.to_string()))
}

fn encrypt(
    w: &mut WriteTraffic<'_, Server>,
    data: &[u8],
    out: &mut Vec<u8>,
    end: &mut usize,
) -> io::Result<usize> {
    let data = &data[..data.len().min(MAX_PLAIN)];
    append(out, end, |b| w.encrypt(data, b), too_small_encrypt)
        .map(|_| data.len())
        .map_err(|e| io::Error::other(e.to_string()))
}

fn close_notify(
    w: &mut WriteTraffic<'_, Server>,
    out: &mut Vec<u8>,
    end: &mut usize,
) -> io::Result<()> {
    append(out, end, |b| w.queue_close_notify(b), too_small_encrypt)
        .map(|_| ())
        .map_err(|e| io::Error::other(e.to_string()))
}

fn too_small_encrypt(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Answers rustls queued (a key update) go out when the socket
            // takes them; a full socket is the writer's to wait for.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            let (stop, _) = this.step(&mut Some(&mut *buf), Want::Read)?;
            if buf.filled().len() > before || this.plain_pos < this.plain.len() {
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || stop == Stop::Closed {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without a TLS close_notify",
                )));
            }
        }
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Earlier records first, and no more queued than one record.
        ready!(this.poll_send(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let had_plain = this.plain.len();
        let (stop, n) = this.step(&mut None, Want::Write(data))?;
        if this.plain.len() > had_plain {
            // Records that arrived are now plaintext for the reader.
            cx.waker().wake_by_ref();
        }
        if stop != Stop::Open {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Out now if the socket takes it; otherwise flush or the next write
        // sends it.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_send(cx))?;
            this.write_closed = true;
            this.step(&mut None, Want::Close)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::TestCerts;
    use crate::tls::server_name;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientTls;

    /// A listener on 127.0.0.1, the server's end (ours) and a tokio-rustls
    /// client's end of one connection.
    async fn pair(
        server: Arc<ServerConfig>,
        client: rustls::ClientConfig,
    ) -> (
        io::Result<ServerTlsStream>,
        io::Result<ClientTls<TcpStream>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            connector
                .connect(server_name("localhost").unwrap(), tcp)
                .await
        };
        let server = async {
            let (tcp, _) = l.accept().await.unwrap();
            accept(server, tcp).await
        };
        tokio::join!(server, client)
    }

    async fn connected(c: &TestCerts) -> (ServerTlsStream, ClientTls<TcpStream>) {
        let (s, cl) = pair(Arc::new(c.server(b"t")), c.client(b"t")).await;
        (s.expect("server handshake"), cl.expect("client handshake"))
    }

    fn pattern(n: usize) -> Vec<u8> {
        // The low byte of a sequence that does not repeat every 256 bytes.
        (0..n).map(|i| (i * 31 + i / 7).to_le_bytes()[0]).collect()
    }

    /// Read until `buf` is full or a read waits for 50 ms.
    async fn read_until_idle(s: &mut ServerTlsStream, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match tokio::time::timeout(
                std::time::Duration::from_millis(50),
                s.read(&mut buf[got..]),
            )
            .await
            {
                Ok(r) => got += r.expect("read"),
                Err(_) => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_and_ends_cleanly() {
        let c = TestCerts::new();
        let (mut s, mut cl) = connected(&c).await;
        assert!(s.peer_cert().is_some(), "the client's certificate is known");
        assert_eq!(s.alpn_protocol(), Some(&b"t"[..]));
        let up = pattern(3 * 1024 * 1024 + 17);
        let down = pattern(2 * 1024 * 1024 + 5);
        let (up2, down2) = (up.clone(), down.clone());
        let client = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(cl);
            let send = async {
                w.write_all(&up2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let recv = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(send, recv);
            assert!(got == down2, "the client got what the server sent");
            cl = r.unsplit(w);
            cl
        });
        // The server reads in odd sizes and writes in one go, interleaved.
        let mut got = Vec::new();
        let mut sent = 0;
        let mut chunk = [0u8; 1000];
        loop {
            if sent < down.len() {
                let n = (down.len() - sent).min(70_000);
                s.write_all(&down[sent..sent + n]).await.unwrap();
                sent += n;
            }
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(&down[sent..]).await.unwrap();
        s.shutdown().await.unwrap();
        assert!(got == up, "the server got what the client sent");
        client.await.unwrap();
        assert_eq!(s.read(&mut chunk).await.unwrap(), 0, "end of stream stays");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let c = TestCerts::new();
        let (mut s, mut cl) = connected(&c).await;
        assert_eq!(s.buffered_capacity(), 0, "after the handshake");
        cl.write_all(&pattern(40_000)).await.unwrap();
        cl.flush().await.unwrap();
        let mut buf = vec![0u8; 40_000];
        assert_eq!(read_until_idle(&mut s, &mut buf).await, 40_000);
        assert!(buf == pattern(40_000));
        s.write_all(&pattern(50_000)).await.unwrap();
        s.flush().await.unwrap();
        let mut back = vec![0u8; 50_000];
        cl.read_exact(&mut back).await.unwrap();
        // A read that waits, as the splice's do between a user's keystrokes.
        assert_eq!(read_until_idle(&mut s, &mut buf[..1]).await, 0);
        assert_eq!(s.buffered_capacity(), 0, "while idle between bursts");
    }

    #[tokio::test]
    async fn a_cut_connection_is_not_a_clean_end() {
        let c = TestCerts::new();
        let (mut s, mut cl) = connected(&c).await;
        cl.write_all(b"partial").await.unwrap();
        cl.flush().await.unwrap();
        // TCP FIN with no close_notify: someone cut the connection.
        cl.get_mut().0.shutdown().await.unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"partial");
        let e = s.read(&mut buf).await.expect_err("truncation is an error");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused_with_an_alert() {
        let ours = TestCerts::new();
        let theirs = TestCerts::new();
        // Trusts our gateway, presents a device certificate of another CA
        // (of the same name: the signature does not verify).
        let mut client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(crate::tls::roots(&ours.gateway.ca).unwrap())
            .with_client_auth_cert(theirs.device.chain.clone(), theirs.device.key.clone_key())
            .unwrap();
        client.alpn_protocols = vec![b"t".to_vec()];
        let (s, cl) = pair(Arc::new(ours.server(b"t")), client).await;
        let e = s.expect_err("server refuses");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{e:?}"
        );
        // TLS 1.3 clients finish before the server judges their certificate;
        // they learn of it from the alert on their first read.
        let mut cl = cl.expect("client side of the handshake");
        let mut b = [0u8; 1];
        let e = cl.read(&mut b).await.expect_err("alert");
        assert!(e.to_string().contains("received fatal alert"), "{e}");
    }

    #[tokio::test]
    async fn resumes_with_tickets_and_follows_key_updates() {
        let c = TestCerts::new();
        let server = Arc::new(c.server(b"t"));
        let client = c.client(b"t");
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (s, cl) = pair(server.clone(), client.clone()).await;
            let (mut s, mut cl) = (s.unwrap(), cl.unwrap());
            // The client takes its tickets in with the first bytes it reads.
            s.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            cl.read_exact(&mut one).await.unwrap();
            kinds.push(s.handshake_kind().unwrap());
            // The client asks for new keys both ways, then keeps talking.
            cl.get_mut().1.refresh_traffic_keys().unwrap();
            cl.write_all(b"after the update").await.unwrap();
            cl.flush().await.unwrap();
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"after the update");
            s.write_all(b"answer").await.unwrap();
            let mut buf = [0u8; 6];
            cl.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"answer");
        }
        assert_eq!(
            kinds,
            [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
        );
    }

    #[tokio::test]
    async fn garbage_and_silence_fail_the_handshake() {
        let c = TestCerts::new();
        let server = Arc::new(c.server(b"t"));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Not TLS at all.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = accept(server.clone(), tcp).await.expect_err("not TLS");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A handshake record longer than TLS allows.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        raw.write_all(&[22, 3, 1, 0xff, 0xff]).await.unwrap();
        let e = accept(server.clone(), tcp)
            .await
            .expect_err("oversized record");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A ClientHello that never ends: the peer closes half way, after
        // more than the first handshake buffer holds (it grows, in steps).
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        raw.write_all(&[22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc])
            .await
            .unwrap();
        raw.write_all(&[0u8; 3 * HANDSHAKE_BUF]).await.unwrap();
        raw.shutdown().await.unwrap();
        let e = accept(server, tcp).await.expect_err("cut handshake");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
