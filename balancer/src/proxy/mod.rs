//! The request path: route, pick an endpoint, forward, retry when safe.

pub mod body;
pub mod headers;
pub mod upgrade;
pub mod upstream;

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;

use self::body::{Guarded, boxed, empty, local};
use self::upstream::ProxyBody;
use crate::snapshot::PoolRuntime;
use crate::state::Shared;

/// What the proxy knows about a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
}

/// Serves one client request. Never fails: errors become 4xx/5xx responses.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snapshot = shared.snapshot.load_full();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let host = headers::request_host(req.uri(), req.headers());
    let mut resp = match snapshot.route(host.as_deref().unwrap_or_default(), req.uri().path()) {
        None => local(
            StatusCode::NOT_FOUND,
            "usher: no route matches this host and path",
        ),
        Some(pool) => {
            let resp = forward(&shared, &conn, pool, req, host.as_deref()).await;
            pool.live.count_response(resp.status().as_u16());
            resp
        }
    };
    resp.headers_mut()
        .entry(&headers::X_REQUEST_ID)
        .or_insert(request_id);
    Ok(resp)
}

/// Methods that may be retried when no response byte arrived.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    pool: &PoolRuntime,
    mut req: Request<Incoming>,
    host: Option<&str>,
) -> Response<ProxyBody> {
    if content_length(&req).is_some_and(|len| len > conn.max_body_bytes) {
        return local(
            StatusCode::PAYLOAD_TOO_LARGE,
            "usher: request body too large",
        );
    }
    let upgrade = req.version() <= Version::HTTP_11 && headers::is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let retriable = !upgrade && is_idempotent(req.method()) && req.body().is_end_stream();

    let (mut parts, body) = req.into_parts();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    if parts.headers.get(header::HOST).is_none() {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, conn.peer.ip(), conn.proto, host);
    if let (Some(on_upgrade), Some(value)) = (on_upgrade, upgrade_value) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, value);
        return upgrade::forward(shared, pool, parts, on_upgrade).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();

    let mut body = Some(boxed(Limited::new(body, conn.max_body_bytes as usize)));
    let settings = &pool.settings;
    let attempts = 1 + if retriable {
        settings.retries.attempts
    } else {
        0
    };
    let mut tried: Vec<usize> = Vec::with_capacity(attempts as usize);
    let mut failure: Option<Response<ProxyBody>> = None;
    let client = pool.live.client();

    for attempt in 0..attempts {
        let now = Instant::now();
        let Some(idx) = pool.pick(now, &tried, fastrand::u64(..)) else {
            break;
        };
        let retry_guard = if attempt > 0 {
            match pool.live.budget.try_start_retry(
                settings.retries.budget_percent,
                settings.retries.min_concurrency,
            ) {
                Some(g) => {
                    pool.members[tried[tried.len() - 1]].state.count_retry();
                    Some(g)
                }
                None => {
                    shared
                        .metrics
                        .retries_budget_exhausted
                        .get_or_create(&crate::metrics::PoolLabels {
                            pool: settings.name.clone(),
                        })
                        .inc();
                    break;
                }
            }
        } else {
            None
        };
        tried.push(idx);
        let member = &pool.members[idx];
        let in_flight = member.state.start_request();
        let active = pool.live.budget.start_request();

        let uri = match format!("http://{}{}", member.state.address(), path).parse::<http::Uri>() {
            Ok(u) => u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "usher: invalid request target"),
        };
        let mut up = Request::new(body.take().unwrap_or_else(empty));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = parts.headers.clone();

        let started = Instant::now();
        let outcome = tokio::time::timeout(settings.timeouts.response, client.request(up)).await;
        let elapsed = started.elapsed();
        let may_eject = || pool.may_eject(Instant::now());
        match outcome {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                member.state.observe_latency(elapsed.as_secs_f64());
                if let Some(until) = member.state.record_outcome(
                    Ok(status),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                ) {
                    log_ejection(pool, member.state.address(), until);
                }
                let (mut rparts, rbody) = resp.into_parts();
                headers::strip_hop_by_hop(&mut rparts.headers);
                let body = boxed(Guarded::new(rbody, (in_flight, active, retry_guard)));
                return Response::from_parts(rparts, body);
            }
            Ok(Err(e)) => {
                if is_length_limit(&e) {
                    return local(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "usher: request body too large",
                    );
                }
                let connect = e.is_connect();
                if let Some(until) = member.state.record_outcome(
                    Err(connect),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                ) {
                    log_ejection(pool, member.state.address(), until);
                }
                tracing::warn!(
                    pool = %settings.name,
                    endpoint = member.state.address(),
                    attempt,
                    error = %e,
                    cause = e.source().map(|s| s.to_string()).unwrap_or_default(),
                    "upstream request failed"
                );
                failure = Some(local(
                    StatusCode::BAD_GATEWAY,
                    "usher: the upstream server failed to answer",
                ));
            }
            Err(_) => {
                member.state.record_outcome(
                    Err(false),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                );
                tracing::warn!(pool = %settings.name, endpoint = member.state.address(), "upstream response timeout");
                // A timed-out request may have been processed: never retried.
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "usher: the upstream server did not answer in time",
                );
            }
        }
    }
    failure.unwrap_or_else(|| {
        let mut resp = local(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "usher: no healthy endpoint in pool `{}`; try again shortly",
                settings.name
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    })
}

fn log_ejection(pool: &PoolRuntime, endpoint: &str, until: Instant) {
    tracing::warn!(
        pool = %pool.settings.name,
        endpoint,
        seconds = until.saturating_duration_since(Instant::now()).as_secs(),
        "endpoint ejected after consecutive failures"
    );
}
