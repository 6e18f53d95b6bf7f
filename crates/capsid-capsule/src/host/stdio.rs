//! Guest stdout and stderr, as lines in the capsule's log.

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use capsid_core::limits::MAX_LOG_LINE_BYTES;

use crate::logbuf::{CapsuleLog, LogLevel, LogSource};

/// A WASI output that splits what it is given into lines for the capsule's log. A line
/// longer than the log's limit is emitted in pieces rather than buffered without bound.
pub(super) struct GuestOutput {
    log: CapsuleLog,
    source: LogSource,
    pending: Vec<u8>,
}

impl GuestOutput {
    pub(super) fn new(log: CapsuleLog, source: LogSource) -> Self {
        Self {
            log,
            source,
            pending: Vec::new(),
        }
    }

    fn level(&self) -> LogLevel {
        if self.source == LogSource::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.log
            .push(self.level(), self.source, &String::from_utf8_lossy(line));
    }

    fn take(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        while self.pending.len() >= MAX_LOG_LINE_BYTES {
            let piece: Vec<u8> = self.pending.drain(..MAX_LOG_LINE_BYTES).collect();
            self.emit(&piece);
        }
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Self::new(self.log.clone(), self.source))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncGuestOutput(Self::new(self.log.clone(), self.source)))
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LOG_LINE_BYTES)
    }
}

/// The same, for WASI p3's async streams.
struct AsyncGuestOutput(GuestOutput);

impl tokio::io::AsyncWrite for AsyncGuestOutput {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
