//! The upstream HTTP/1.1 client: keep-alive pooling with an idle timeout and
//! a connect timeout.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Timeouts;

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies as the proxy passes them on.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A pooled upstream client.
pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// A client whose idle connections close after `timeouts.idle`.
pub fn client(timeouts: &Timeouts) -> UpstreamClient {
    client_with(timeouts, true)
}

/// An upstream client for requests that must not be sent twice (POST,
/// PATCH): each goes on a new connection, so it never meets the race of a
/// pooled connection that the pod closed (or crashed on) just as the
/// request was written, which would leave it unknown whether the pod saw it.
/// A refused connect is still retried elsewhere. HAProxy's `http-reuse safe`
/// keeps such requests off idle connections for the same reason.
pub fn fresh_client(timeouts: &Timeouts) -> UpstreamClient {
    client_with(timeouts, false)
}

fn client_with(timeouts: &Timeouts, reuse: bool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(timeouts.idle)
        .pool_max_idle_per_host(if reuse { usize::MAX } else { 0 })
        .build(connector)
}
