//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/status`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connection::{Activity, ConnLimit, Deadlines};
use crate::state::Shared;

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(
    tcp: TcpListener,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // Scrapers and people: a few connections. Silent or idle ones are
    // closed, and past the limit new ones wait in the backlog, so the admin
    // port cannot hold the process's files.
    let limit = Arc::new(ConnLimit::default());
    let mut backoff = crate::connection::accept_backoff();
    loop {
        let place = tokio::select! {
            () = stop.cancelled() => break,
            p = limit.acquire(|| ADMIN_MAX_CONNECTIONS) => p,
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = tcp.accept() => match r {
                Ok(pair) => {
                    backoff = crate::connection::accept_backoff();
                    pair
                }
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed; backing off");
                    drop(place);
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let registry = registry.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _place = place;
            let activity = Arc::new(Activity::default());
            let service = service_fn({
                let activity = activity.clone();
                move |req| {
                    let _busy = activity.busy();
                    let resp = route(&shared, &registry, &req);
                    async move { Ok::<_, Infallible>(resp) }
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let deadlines = Deadlines {
                first_request: ADMIN_HEADER_TIMEOUT,
                idle: ADMIN_IDLE_TIMEOUT,
            };
            crate::connection::drive(conn, peer, &activity, deadlines, None, None).await;
        });
    }
}

/// Time a client of the admin listener has to send its request headers.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection with no request in progress this long is closed.
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most admin connections open at once.
const ADMIN_MAX_CONNECTIONS: usize = 256;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let snapshot = shared.snapshot.load();
    let Some(token) = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref())
    else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name
/// is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Compare digests so neither length nor content leaks through timing.
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn route(shared: &Shared, registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if shared.is_ready() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" | "/status" if !authorized(shared, req) => {
            let mut r = respond(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "a bearer token is required\n",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::encode(registry),
        ),
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            status_json(shared).to_string(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /status, /healthz or /readyz\n",
        ),
    }
}

/// The `/status` document: every pool and endpoint with its live state.
pub fn status_json(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.snapshot.load_full();
    let now = Instant::now();
    let weights: std::collections::HashMap<(&str, &str), u32> = snapshot
        .pools
        .iter()
        .flat_map(|p| {
            p.members
                .iter()
                .map(move |m| ((p.settings.name.as_str(), m.state.address()), m.weight))
        })
        .collect();
    let states = shared.endpoints.all();
    let pools: Vec<_> = snapshot
        .config
        .pools
        .values()
        .map(|pool| {
            let endpoints: Vec<_> = states
                .iter()
                .filter(|s| s.pool() == pool.name)
                .map(|s| {
                    let last_check = s.last_check().map(|c| {
                        json!({
                            "ok": c.ok,
                            "detail": c.detail,
                            "secondsAgo": SystemTime::now().duration_since(c.at).unwrap_or_default().as_secs_f64(),
                        })
                    });
                    json!({
                        "address": s.address(),
                        "weight": weights.get(&(pool.name.as_str(), s.address())),
                        "state": s.state(now).as_str(),
                        "inFlight": s.in_flight(),
                        "sessions": s.sessions(),
                        "ejectedForSeconds": s.ejected_until(now).map(|u| u.saturating_duration_since(now).as_secs_f64()),
                        "lastCheck": last_check,
                    })
                })
                .collect();
            let runtime = snapshot.pool(&pool.name);
            let live = runtime.map(|p| &p.live);
            json!({
                "name": pool.name,
                "queued": live.map(|l| l.queue.depth()),
                "startingEndpoints": runtime.map(|p| p.starting(now)),
                "usingBackup": live.map(|l| l.is_on_backup()),
                "backupPool": pool.backup_pool,
                "balance": format!("{:?}", pool.balance),
                "healthCheck": pool.health_check.as_ref().map(|h| h.path.clone()),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "ready": shared.is_ready(),
        "configFile": snapshot.config.source.display().to_string(),
        "pools": pools,
    })
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER  s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("Basic s3cret"), None);
        assert_eq!(bearer_token("Bearers3cret"), None);
    }
}
