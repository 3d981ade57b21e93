//! Client-facing listeners: accept, optional TLS, HTTP/1.1 and HTTP/2 via
//! hyper-util's auto builder, and graceful connection shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    builder: auto::Builder<TokioExecutor>,
}

impl ListenerRuntime {
    /// Builds the connection settings of listener `config`.
    pub fn new(config: &crate::config::Listener) -> Self {
        let limits = &config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
        Self {
            limits: limits.clone(),
            name: Arc::from(config.name.as_str()),
            access_log: config.access_log,
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
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
                conn.open.inc();
                let _open = scopeguard(conn.open.clone());
                match acceptor {
                    None => serve_connection(stream, peer, "http", runtime, shared2).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            runtime.limits.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                serve_connection(tls, peer, "https", runtime, shared2).await
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
    // hyper's header_read_timeout only starts once HTTP/1 parsing has begun:
    // the protocol sniffing before it (auto builder) and the HTTP/2 preface and
    // handshake have no deadline, so a client that connects and sends nothing
    // (or a partial preface) would hold the connection forever. The first
    // request's headers must arrive within headerReadTimeout.
    let started = Arc::new(AtomicBool::new(false));
    let started_for_service = started.clone();
    let service = service_fn(move |req| {
        started_for_service.store(true, Ordering::Relaxed);
        proxy::handle(shared_for_service.clone(), info.clone(), req)
    });
    let first_request_deadline = async {
        tokio::time::sleep(runtime.limits.header_read_timeout).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let conn = runtime
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        () = first_request_deadline => {
            tracing::debug!(%peer, "no request headers within headerReadTimeout; closing");
        }
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error while draining");
            }
        }
    }
}
