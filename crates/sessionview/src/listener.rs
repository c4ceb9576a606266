//! What a connection may take of a listener: a cap on open connections and an idle timeout,
//! applied to every accepted socket (under TLS, so handshakes count) before hyper sees it.
//!
//! hyper's own `header_read_timeout` (set in `telemetry::serve`) starts only once the protocol
//! is known and covers HTTP/1 alone; a client that connects and sends nothing, or an HTTP/2
//! connection that goes quiet, is closed here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connection-level limits of a listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Most connections open at once; more are closed as they arrive.
    pub(crate) max_connections: usize,
    /// A connection that sends and receives nothing for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Longest time for a request's headers to arrive (HTTP/1; also between keep-alive requests).
    pub(crate) header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Wraps an acceptor: takes a connection permit (or closes the socket) and makes the stream
/// time out when idle.
#[derive(Debug, Clone)]
pub(crate) struct Guard<A> {
    inner: A,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl<A> Guard<A> {
    pub(crate) fn new(inner: A, limits: &ConnLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle: limits.idle_timeout,
        }
    }
}

impl<A, I, S> Accept<I, S> for Guard<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let permit = Arc::clone(&self.permits).try_acquire_owned();
        let idle = self.idle;
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let Ok(permit) = permit else {
                tracing::warn!(
                    "connection limit reached (--max-connections): closing a new connection"
                );
                metrics::counter!(REFUSED_CONNECTIONS).increment(1);
                return Err(io::Error::other("connection limit reached"));
            };
            let (io, service) = accepted.await?;
            Ok((Guarded::new(io, permit, idle), service))
        })
    }
}

/// Connections closed at once because `--max-connections` were open.
pub(crate) const REFUSED_CONNECTIONS: &str = "sessionview_http_refused_connections_total";

/// A stream that fails with `TimedOut` after `idle` without a byte read or written.
#[derive(Debug)]
pub(crate) struct Guarded<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn new(io: T, permit: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            io,
            _permit: permit,
            idle,
            last: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touched(&mut self) {
        self.last = Instant::now();
    }

    /// A write's outcome: bytes out count as activity; a write that waits may time out.
    fn written(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touched();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    /// Pending until the idle deadline, then the error that ends the connection.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last + self.idle;
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if self.last + self.idle <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for longer than --idle-timeout",
                ));
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(written, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
