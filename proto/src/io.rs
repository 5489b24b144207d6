//! Reading and writing frames on any async byte stream (no sockets here:
//! the callers own the streams). Reads take exactly one frame, never more.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{decode_header, Frame, FrameError, HEADER_LEN};
use crate::message::Message;

/// An I/O or framing error while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameIoError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended before a frame started.
    #[error("stream closed by peer")]
    Closed,
}

/// Read exactly one frame. A stream that ends before the first header byte
/// gives [`FrameIoError::Closed`]; one that ends inside a frame gives
/// [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Frame, FrameIoError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameIoError::Closed
            } else {
                FrameError::Truncated.into()
            });
        }
        got += n;
        // Reject a bad version byte without waiting for the rest.
        if header[0] != crate::frame::PROTOCOL_VERSION {
            return Err(FrameError::Version(header[0]).into());
        }
    }
    let h = decode_header(&header)?;
    let mut payload = vec![0u8; h.len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameIoError::Frame(FrameError::Truncated)
        } else {
            FrameIoError::Io(e)
        }
    })?;
    Ok(Frame {
        kind: h.kind,
        payload,
    })
}

/// Write an encoded frame and flush it.
pub async fn write_raw<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bytes: &[u8],
) -> Result<(), FrameIoError> {
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Encode, write and flush a message.
pub async fn write_message<W: AsyncWrite + Unpin + ?Sized, M: Message>(
    w: &mut W,
    m: &M,
) -> Result<(), FrameIoError> {
    write_raw(w, &m.to_frame()?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, FrameKind};
    use crate::message::SessionRequest;

    #[tokio::test]
    async fn reads_exactly_one_frame() {
        let mut bytes = SessionRequest {
            desk: "D1".into(),
            token: None,
        }
        .to_frame()
        .unwrap();
        bytes.extend_from_slice(b"after");
        let mut r = &bytes[..];
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(SessionRequest::from_frame(&f).unwrap().desk, "D1");
        assert_eq!(r, b"after");
    }

    #[tokio::test]
    async fn truncated_and_closed() {
        let mut r = &[][..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameIoError::Closed)
        ));
        let bytes = encode(FrameKind::Ticket, &[1; 10]).unwrap();
        let mut r = &bytes[..8];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameIoError::Frame(FrameError::Truncated))
        ));
        let mut r = &bytes[..3];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameIoError::Frame(FrameError::Truncated))
        ));
    }

    #[tokio::test]
    async fn garbage_is_refused_at_the_first_byte() {
        let mut r = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameIoError::Frame(FrameError::Version(b'G')))
        ));
    }
}
