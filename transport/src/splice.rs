//! Bidirectional copy between two session streams.
//!
//! Unlike `tokio::io::copy_bidirectional`, which keeps an 8 KiB buffer per
//! direction for the life of the session, a direction here takes a buffer
//! from a per-thread pool only when its reader has bytes, and returns it as
//! soon as they are written. Twenty thousand idle sessions hold no buffers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool;

/// Size of one copy buffer.
pub const BUF_SIZE: usize = 16 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    pool::take(&POOL, || vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(b: Box<[u8]>) {
    pool::give(&POOL, b);
}

/// Bytes copied so far each way, readable while the splice runs and after
/// it was cancelled.
#[derive(Debug, Default)]
pub struct Counters {
    /// `a → b`.
    pub a_to_b: AtomicU64,
    /// `b → a`.
    pub b_to_a: AtomicU64,
}

impl Counters {
    /// Current totals `(a → b, b → a)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::Relaxed),
            self.b_to_a.load(Ordering::Relaxed),
        )
    }
}

#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    amt: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        counter: &AtomicU64,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let mut buf = self.buf.take().unwrap_or_else(take_buf);
                let mut rb = ReadBuf::new(&mut buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        give_buf(buf);
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        give_buf(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            give_buf(buf);
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let buf = self
                    .buf
                    .as_ref()
                    .expect("buffer held while bytes are pending");
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.amt += n as u64;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                self.need_flush = true;
            }
            if let Some(b) = self.buf.take() {
                give_buf(b);
                self.pos = 0;
                self.cap = 0;
            }
            if self.read_done {
                ready!(w.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.amt));
            }
        }
    }
}

/// Copy both ways until both directions reach end of stream (each end is
/// passed on as a write shutdown) or either fails. Returns bytes copied
/// `a → b` and `b → a`.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    splice_counted(a, b, &Counters::default()).await
}

/// [`splice`], adding to `counters` as bytes are written.
pub async fn splice_counted<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &Counters,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Direction::default();
    let mut ba = Direction::default();
    poll_fn(|cx| {
        if !ab.done {
            if let Poll::Ready(r) =
                ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), &counters.a_to_b)
            {
                r?;
                ab.done = true;
            }
        }
        if !ba.done {
            if let Poll::Ready(r) =
                ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), &counters.b_to_a)
            {
                r?;
                ba.done = true;
            }
        }
        if ab.done && ba.done {
            Poll::Ready(Ok((ab.amt, ba.amt)))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_on_eof() {
        let (mut client, mut relay_a) = tokio::io::duplex(1024);
        let (mut relay_b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { splice(&mut relay_a, &mut relay_b).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&send).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        assert_eq!(relay.await.unwrap().unwrap(), (data.len() as u64, 3));
    }
}
