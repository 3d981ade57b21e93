//! What every accepted client connection gets, on the public listeners and
//! the admin listener alike: a place under the connection limits, an idle
//! timeout, a 408 for a request whose headers never finish, and accept
//! errors that back off.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Open connections against a limit that a reload may change. Over the
/// limit, the listener stops accepting: new connections wait in the
/// kernel's backlog (HAProxy's `maxconn`).
#[derive(Debug, Default)]
pub struct ConnLimit {
    open: AtomicUsize,
    freed: Notify,
}

/// One connection's place under a [`ConnLimit`]; released on drop.
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl ConnLimit {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until fewer than `limit()` are open, then takes a place.
    /// `limit` is read again after each release, so a reload applies.
    pub async fn acquire(self: &Arc<Self>, limit: impl Fn() -> usize) -> ConnPermit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let max = limit();
            if self
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
            {
                return ConnPermit(self.clone());
            }
            // A reload may raise the limit without a release: look again
            // now and then.
            let _ = tokio::time::timeout(Duration::from_millis(250), freed).await;
        }
    }
}

/// The soft open-file limit raised to the hard one, as HAProxy does at start;
/// returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The default global connection limit for an open-file limit: each client
/// connection may hold an upstream connection too, and some files are kept
/// for listeners, logs and health checks (HAProxy derives `maxconn` from
/// `ulimit -n` the same way).
pub fn default_max_connections(open_files: u64) -> usize {
    (open_files.saturating_sub(64) / 2).clamp(64, 1_000_000) as usize
}

/// Delays between failed `accept` calls: from 5 ms doubling to 1 s, so
/// running out of files does not spin a core, and nothing is lost once one
/// closes.
pub fn accept_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times()
        .build()
}

/// Requests in progress on one connection, whether one ever started, and
/// when the last one ended.
#[derive(Debug)]
pub struct Activity {
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` at the last request end.
    last_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }
}

/// Counts one request as in progress on its connection until dropped.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// Marks a request in progress (until the guard drops, which is when
    /// its response has been sent).
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves when `within` has passed without a first request: the
    /// first request's headers must arrive within `headerReadTimeout`.
    /// hyper's own header timeout only starts once HTTP/1 parsing has begun,
    /// so protocol sniffing and the HTTP/2 preface would otherwise have no
    /// deadline, and a client that sends nothing would hold the connection.
    pub async fn first_request_late(&self, within: Duration) {
        tokio::time::sleep(within).await;
        if self.started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once the connection has had no request in progress for
    /// `idle`: the HTTP/1 keep-alive timeout and the HTTP/2 idle timeout
    /// (Envoy's `idle_timeout`; HAProxy's `timeout http-keep-alive`).
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let idle_since = if self.in_flight.load(Ordering::Acquire) > 0 {
                None
            } else {
                Some(self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
            };
            match idle_since {
                Some(since) if since.elapsed() >= idle => return,
                Some(since) => tokio::time::sleep_until(since + idle).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// A served hyper connection that can be asked to finish gracefully.
pub trait Served:
    std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
{
    /// Starts a graceful shutdown (GOAWAY, or close after the response).
    fn shut_down(self: Pin<&mut Self>);
}

/// Implements [`Served`] for hyper-util's connection types.
macro_rules! served {
    ($conn:ident, $($io:tt)+) => {
        impl<I, S, E> Served for hyper_util::server::conn::auto::$conn<'_, I, S, E>
        where
            Self: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
            S: hyper::service::HttpService<hyper::body::Incoming>,
            I: $($io)+,
            S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            S::ResBody: http_body::Body + 'static,
            <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
        {
            fn shut_down(self: Pin<&mut Self>) {
                self.graceful_shutdown();
            }
        }
    };
}
served!(
    UpgradeableConnection,
    hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static
);
served!(Connection, hyper::rt::Read + hyper::rt::Write + Unpin);

/// The deadlines of one served connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// For the first request's headers.
    pub first_request: Duration,
    /// With no request in progress.
    pub idle: Duration,
}

/// Serves `conn` until it ends, its first request is late, it has been idle
/// for `deadlines.idle`, or `shutdown` (when given) is cancelled; the last
/// two close it gracefully. A late first request gets 408 through `probe`
/// when one watches the stream.
pub async fn drive(
    mut conn: Pin<&mut (dyn Served + Send + '_)>,
    peer: std::net::SocketAddr,
    activity: &Activity,
    deadlines: Deadlines,
    probe: Option<&Probe>,
    shutdown: Option<&tokio_util::sync::CancellationToken>,
) {
    let shutdown = async {
        match shutdown {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = activity.first_request_late(deadlines.first_request) => {
            // A partial request gets 408 as the stream closes; a silent
            // connection is closed silently.
            if let Some(probe) = probe {
                probe.answer_timeout();
            }
            tracing::debug!(%peer, "no request headers within the header timeout; closing");
        }
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
        () = activity.idle_for(deadlines.idle) => {
            tracing::debug!(%peer, "idle timeout; closing");
            conn.as_mut().shut_down();
            let _ = tokio::time::timeout(deadlines.idle, conn.as_mut()).await;
        }
        () = shutdown => {
            conn.as_mut().shut_down();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error while draining");
            }
        }
    }
}

/// A client connection's byte stream, noting what arrived: the first bytes
/// (to tell HTTP/2's preface from HTTP/1) and whether any did. When
/// [`Probe::answer_timeout`] was called, dropping it writes a best-effort
/// `408 Request Timeout` (HAProxy answers a slow request the same way).
pub struct Probed<I: AsyncWrite + Unpin> {
    inner: I,
    probe: Arc<Probe>,
}

/// What a [`Probed`] stream saw, shared with the code serving it.
#[derive(Debug, Default)]
pub struct Probe {
    read: AtomicU64,
    first: AtomicU64,
    answer: AtomicBool,
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\nconnection: close\r\n\r\nusher: the request headers took too long\r\n";

impl Probe {
    /// Whether any byte arrived.
    pub fn got_bytes(&self) -> bool {
        self.read.load(Ordering::Relaxed) > 0
    }

    /// Whether the stream began like HTTP/2's connection preface.
    pub fn looks_like_h2(&self) -> bool {
        let first = self.first.load(Ordering::Relaxed).to_be_bytes();
        &first[5..8] == b"PRI"
    }

    /// Asks for a 408 when the stream is dropped: only for an HTTP/1
    /// request that started and never finished its headers.
    pub fn answer_timeout(&self) {
        if self.got_bytes() && !self.looks_like_h2() {
            self.answer.store(true, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncWrite + Unpin> Probed<I> {
    /// Wraps `inner`.
    pub fn new(inner: I) -> (Self, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        (
            Self {
                inner,
                probe: probe.clone(),
            },
            probe,
        )
    }
}

impl<I: AsyncWrite + Unpin> Drop for Probed<I> {
    fn drop(&mut self) {
        if !self.probe.answer.load(Ordering::Relaxed) {
            return;
        }
        // Best effort, without blocking: the answer is small enough for the
        // socket buffer, and the connection closes right after.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.poll_write(&mut cx, RESPONSE_408) {
            let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
            let _ = Pin::new(&mut self.inner).poll_shutdown(&mut cx);
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Probed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let seen = self
                .probe
                .read
                .fetch_add(new.len() as u64, Ordering::Relaxed);
            if seen < 3 {
                let mut first = self.probe.first.load(Ordering::Relaxed).to_be_bytes();
                for (i, b) in new.iter().take(3 - seen as usize).enumerate() {
                    first[5 + seen as usize + i] = *b;
                }
                self.probe
                    .first
                    .store(u64::from_be_bytes(first), Ordering::Relaxed);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Probed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_end() {
        let a = Arc::new(Activity::default());
        let busy = a.busy();
        let waited = tokio::time::Instant::now();
        let idle = tokio::spawn({
            let a = a.clone();
            async move { a.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!idle.is_finished(), "a request in progress is not idle");
        drop(busy);
        idle.await.unwrap();
        assert_eq!(waited.elapsed(), Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_deadline_holds_only_before_one_starts() {
        let late = Arc::new(Activity::default());
        let t0 = tokio::time::Instant::now();
        late.first_request_late(Duration::from_secs(10)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        let on_time = Arc::new(Activity::default());
        drop(on_time.busy());
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            on_time.first_request_late(Duration::from_secs(10)),
        )
        .await;
        assert!(
            waited.is_err(),
            "a connection that had a request is never late"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_holds_new_connections_until_one_closes() {
        let limit = Arc::new(ConnLimit::default());
        let a = limit.acquire(|| 2).await;
        let _b = limit.acquire(|| 2).await;
        let third = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire(|| 2).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished());
        assert_eq!(limit.open(), 2);
        drop(a);
        let _c = third.await.unwrap();
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let delays: Vec<Duration> = accept_backoff().take(12).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn default_limit_leaves_room_for_upstream_connections() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(10), 64);
        assert_eq!(default_max_connections(1 << 20), 524_256);
    }
}
