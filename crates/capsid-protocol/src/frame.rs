//! Framing (DESIGN 3.8): each frame is a 4-byte big-endian length and that many bytes of
//! JSON, at most `MAX_FRAME_BYTES`. A length over the cap is refused before any of the body
//! is read.

use capsid_core::limits::MAX_FRAME_BYTES;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the cap; nothing of the body was read.
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The stream ended inside a frame.
    #[error("the connection closed inside a frame")]
    Truncated,
    /// The frame's body did not arrive in time.
    #[error("the frame's body did not arrive in time")]
    Slow,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame: `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_limited(r, MAX_FRAME_BYTES, std::time::Duration::MAX).await
}

/// Reads one frame of at most `max` bytes whose body arrives within `body_timeout` of its
/// length (waiting for the length itself is not bounded here).
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    body_timeout: std::time::Duration,
) -> Result<Option<Vec<u8>>, FrameError> {
    match read_frame_len(r, max).await? {
        None => Ok(None),
        Some(len) => read_frame_body(r, len, body_timeout).await.map(Some),
    }
}

/// Reads a frame's length prefix, refusing (before any of the body is read) one over `max`;
/// `Ok(None)` at a clean end of stream.
pub async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Reads a frame's `len`-byte body, which must arrive within `timeout` (`Duration::MAX`:
/// no bound).
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; len];
    let read = r.read_exact(&mut body);
    let done = if timeout == std::time::Duration::MAX {
        read.await
    } else {
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| FrameError::Slow)?
    };
    done.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(body)
}

/// Writes one frame (refusing, without writing, a body over the cap).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {} bytes is over the limit", body.len()),
        ));
    }
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Serializes and writes `value` as one frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_frame(w, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_named() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"{\"x\":1}")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = read_frame(&mut b).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_deref(), Some(&b"{\"x\":1}"[..]));

        let too_big = u32::try_from(MAX_FRAME_BYTES + 1).unwrap_or(u32::MAX);
        a.write_all(&too_big.to_be_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, b'{'])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::Truncated)
        ));
    }
}
