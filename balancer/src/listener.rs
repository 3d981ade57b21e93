//! Client-facing listeners: accept, optional TLS, HTTP/1.1 and HTTP/2 via
//! hyper-util's auto builder, and graceful connection shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Limits, Listener};
use crate::connection::{Activity, ConnLimit, Deadlines, Probed, Served};
use crate::metrics::ListenerLabels;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use crate::tls::{self, SniResolver};

/// Per-listener settings that a reload may change.
pub struct ListenerRuntime {
    /// Limits applied to new connections.
    pub limits: Limits,
    /// The listener's name, for access logs.
    pub name: Arc<str>,
    /// Whether new connections log each request.
    pub access_log: bool,
    /// Plain listeners: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    builder: auto::Builder<TokioExecutor>,
    /// TLS connections whose ALPN chose `h2`: HTTP/2 only, so a bad
    /// preface gets GOAWAY rather than an HTTP/1 answer.
    h2_only: auto::Builder<TokioExecutor>,
}

impl ListenerRuntime {
    /// Builds the connection settings of listener `config`.
    pub fn new(config: &crate::config::Listener) -> Self {
        let limits = &config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The first request's header deadline is ours (it answers 408);
        // hyper's, a little later, covers the requests after it.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout + std::time::Duration::from_millis(500))
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        // PINGs every 30 s on HTTP/2; a client that does not answer within
        // 20 s is gone. Idle connections are closed by `idleTimeout`.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(20));
        Self {
            limits: limits.clone(),
            name: Arc::from(config.name.as_str()),
            access_log: config.access_log,
            h2_only: builder.clone().http2_only(),
            builder,
        }
    }
}

/// A bound listener and its swappable settings.
pub struct BoundListener {
    /// Name from the config.
    pub name: String,
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    /// Settings for new connections.
    pub runtime: ArcSwap<ListenerRuntime>,
    /// SNI certificates, when TLS is on.
    pub resolver: Option<Arc<SniResolver>>,
    tcp: std::sync::Mutex<Option<TcpListener>>,
    /// Connections open on this listener, against `limits.maxConnections`.
    connections: Arc<ConnLimit>,
}

impl BoundListener {
    /// Binds `config.bind`.
    pub async fn bind(config: &Listener) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(config.bind).await?;
        Ok(Self {
            name: config.name.clone(),
            local_addr: tcp.local_addr()?,
            runtime: ArcSwap::from_pointee(ListenerRuntime::new(config)),
            resolver: config.tls.as_ref().map(|t| Arc::new(SniResolver::new(t))),
            tcp: std::sync::Mutex::new(Some(tcp)),
            connections: Arc::default(),
        })
    }

    /// Applies a reloaded listener config to new connections and handshakes.
    pub fn update(&self, config: &Listener) {
        let current = self.runtime.load();
        if current.limits != config.limits || current.access_log != config.access_log {
            self.runtime.store(Arc::new(ListenerRuntime::new(config)));
        }
        match (&self.resolver, &config.tls) {
            (Some(r), Some(t)) => r.update(t),
            (None, None) => {}
            _ => tracing::warn!(
                listener = %self.name,
                "turning TLS on or off needs a restart; the listener keeps its current mode"
            ),
        }
        if config.bind != self.local_addr && config.bind.port() != 0 {
            tracing::warn!(listener = %self.name, bind = %config.bind, "changing a bind address needs a restart");
        }
    }

    /// Accepts connections until shutdown begins.
    pub async fn serve(self: Arc<Self>, shared: Arc<Shared>) {
        let Some(tcp) = self.tcp.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let acceptor = self
            .resolver
            .clone()
            .map(|r| TlsAcceptor::from(tls::server_config(r)));
        let labels = ListenerLabels {
            listener: self.name.clone(),
        };
        let open = shared
            .metrics
            .downstream_connections
            .get_or_create_owned(&labels);
        let accepted = shared
            .metrics
            .downstream_connections_total
            .get_or_create_owned(&labels);
        let tls_errors = shared
            .metrics
            .tls_handshake_errors
            .get_or_create_owned(&labels);
        let mut backoff = crate::connection::accept_backoff();
        let mut failures = 0u64;
        loop {
            // At a connection limit, stop accepting: new connections wait in
            // the kernel's backlog until one closes (HAProxy's maxconn).
            let places = async {
                let global = shared
                    .connections
                    .acquire(|| shared.max_connections())
                    .await;
                let mine = self
                    .connections
                    .acquire(|| {
                        self.runtime
                            .load()
                            .limits
                            .max_connections
                            .unwrap_or(usize::MAX)
                    })
                    .await;
                (global, mine)
            };
            let places = tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                places = places => places,
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => {
                        if failures > 0 {
                            tracing::info!(listener = %self.name, failures, "accepting again");
                            failures = 0;
                            backoff = crate::connection::accept_backoff();
                        }
                        pair
                    }
                    Err(e) => {
                        // EMFILE and friends: back off (5 ms doubling to
                        // 1 s) instead of spinning, and say so once.
                        if failures == 0 {
                            tracing::warn!(listener = %self.name, error = %e, "accept failed; backing off");
                        }
                        failures += 1;
                        drop(places);
                        let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(1));
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            accepted.inc();
            let runtime = self.runtime.load_full();
            let shared2 = shared.clone();
            let acceptor = acceptor.clone();
            let conn = ConnTracking {
                open: open.clone(),
                tls_errors: tls_errors.clone(),
            };
            shared.tasks.spawn(async move {
                let _places = places;
                conn.open.inc();
                let _open = scopeguard(conn.open.clone());
                match acceptor {
                    None => {
                        serve_connection(stream, peer, "http", Protocol::Auto, runtime, shared2)
                            .await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            runtime.limits.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                // Serve HTTP/2 only when ALPN said so: a bad
                                // preface then gets GOAWAY, not an HTTP/1 400.
                                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                let protocol = if h2 { Protocol::H2 } else { Protocol::Auto };
                                serve_connection(tls, peer, "https", protocol, runtime, shared2)
                                    .await
                            }
                            Ok(Err(e)) => {
                                conn.tls_errors.inc();
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                conn.tls_errors.inc();
                                tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        }
                    }
                }
            });
        }
        drop(tcp);
        tracing::info!(listener = %self.name, "stopped accepting connections");
    }
}

struct ConnTracking {
    open: Gauge,
    tls_errors: Counter,
}

struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn scopeguard(gauge: Gauge) -> OpenGuard {
    OpenGuard(gauge)
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    proto: &'static str,
    protocol: Protocol,
    runtime: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(ConnInfo {
        peer,
        proto,
        max_body_bytes: runtime.limits.max_body_bytes,
        listener: runtime.name.clone(),
        access_log: runtime.access_log,
    });
    let shared_for_service = shared.clone();
    let activity = Arc::new(Activity::default());
    let activity_for_service = activity.clone();
    let service = service_fn(move |req| {
        let busy = activity_for_service.busy();
        let (shared, info) = (shared_for_service.clone(), info.clone());
        // Boxed: hyper keeps room for one service future per HTTP/1
        // connection, idle or not, and the request path's future is large.
        // Boxed, an idle keep-alive connection holds a pointer instead, and
        // the future's memory lives only while a request is in flight. The
        // request path's future is made inside the box, not moved into it.
        Box::pin(async move {
            let resp = proxy::handle(shared, info, req).await;
            drop(busy);
            resp
        })
    });
    let (io, probe) = Probed::new(io);
    let io = TokioIo::new(io);
    let mut conn: Pin<Box<dyn Served + Send + '_>> = match protocol {
        Protocol::Auto => Box::pin(runtime.builder.serve_connection_with_upgrades(io, service)),
        // hyper-util ignores `http2_only` with upgrades; HTTP/2 has none.
        Protocol::H2 => Box::pin(runtime.h2_only.serve_connection(io, service)),
    };
    let deadlines = Deadlines {
        first_request: runtime.limits.header_read_timeout,
        idle: runtime.limits.idle_timeout,
    };
    crate::connection::drive(
        conn.as_mut(),
        peer,
        &activity,
        deadlines,
        Some(&probe),
        Some(&shared.shutdown),
    )
    .await;
}

/// Which protocols a connection may speak.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// HTTP/1.1, or HTTP/2 by its preface (h2c, or TLS without ALPN `h2`).
    Auto,
    /// HTTP/2 only (TLS with ALPN `h2`).
    H2,
}
