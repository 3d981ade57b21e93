//! The request path: route, pick an endpoint, forward, retry when safe.

pub mod admission;
pub mod affinity;
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
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use self::body::{Guarded, boxed, empty, local};
use self::upstream::ProxyBody;
use crate::endpoint::EndpointState;
use crate::snapshot::{CacheResult, PoolRuntime, RetryCause, Snapshot};
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
    /// The listener's name.
    pub listener: Arc<str>,
    /// Whether to log each request (target `usher::access`).
    pub access_log: bool,
}

/// Serves one client request. Never fails: errors become 4xx/5xx responses.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    if let Some(why) = headers::malformed_target(req.version(), req.uri(), req.headers()) {
        let mut resp = local(
            StatusCode::BAD_REQUEST,
            &format!("usher: bad request: {why}"),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    let snapshot = shared.snapshot.load_full();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let host = headers::request_host(req.uri(), req.headers());
    // What the access log needs, taken before the request moves on. The
    // query string is left out: LMS URLs carry session keys there.
    let logged = conn.access_log.then(|| {
        (
            req.method().clone(),
            req.uri().path().to_string(),
            req.version(),
        )
    });
    // An HTTP/1 request with a body that may not be read to its end: by a
    // local answer (an error, a refusal), or an endpoint that answers before
    // reading it. hyper then closes the connection, so the answer says so,
    // and a keep-alive client does not write its next request into a closed
    // socket (RFC 9112 §9.6).
    let body_read = (req.version() <= Version::HTTP_11 && !req.body().is_end_stream()).then(|| {
        let read = body::BodyRead::default();
        req.extensions_mut().insert(read.clone());
        read
    });
    let mut pool_name = None;
    let mut resp = match snapshot.route(host.as_deref().unwrap_or_default(), req.uri().path()) {
        None => local(
            StatusCode::NOT_FOUND,
            "usher: no route matches this host and path",
        ),
        Some((route, pool)) => {
            pool_name = Some(pool.settings.name.clone());
            let resp =
                serve_route(&shared, &conn, &snapshot, route, pool, req, host.as_deref()).await;
            pool.live.count_response(resp.status().as_u16());
            resp
        }
    };
    if let Some((method, path, version)) = logged {
        tracing::info!(
            target: "usher::access",
            listener = %conn.listener,
            client = %conn.peer.ip(),
            method = %method,
            host = host.as_deref().unwrap_or("-"),
            path = %path,
            version = ?version,
            status = resp.status().as_u16(),
            pool = pool_name.as_deref().unwrap_or("-"),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = request_id.to_str().unwrap_or("-"),
        );
    }
    resp.headers_mut()
        .entry(&headers::X_REQUEST_ID)
        .or_insert(request_id);
    if body_read.is_some_and(|read| !read.done()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// Applies the route's rate limit, failover and micro-cache, then forwards.
async fn serve_route(
    shared: &Shared,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    route: usize,
    pool: &Arc<PoolRuntime>,
    req: Request<Incoming>,
    host: Option<&str>,
) -> Response<ProxyBody> {
    let live = &snapshot.route_live[route];
    let now = Instant::now();
    if let Some(limiter) = &live.limiter {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = crate::ratelimit::client_ip(
            conn.peer.ip(),
            forwarded,
            &snapshot.config.trusted_proxies,
        );
        if let Err(wait) = limiter.check(client, now) {
            pool.live.metrics.rate_limited.inc();
            let mut resp = local(
                StatusCode::TOO_MANY_REQUESTS,
                "usher: too many requests; slow down",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    let target = failover(snapshot, pool, now);
    match &live.cache {
        Some(cache)
            if crate::cache::policy::request_cacheable(
                req.method(),
                req.headers(),
                cache.session_cookies(),
            ) =>
        {
            let url = format!(
                "{}://{}{}",
                conn.proto,
                host.unwrap_or_default(),
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let headers = req.headers().clone();
            let (resp, result) = cache
                .serve(url, &headers, || forward(shared, conn, target, req, host))
                .await;
            pool.live.metrics.cache[result as usize].inc();
            resp
        }
        Some(_) => {
            pool.live.metrics.cache[CacheResult::Bypass as usize].inc();
            crate::cache::mark(forward(shared, conn, target, req, host).await, "bypass")
        }
        None => forward(shared, conn, target, req, host).await,
    }
}

/// The pool to use: the route's, or its backup while the route's pool has
/// no endpoint taking new requests.
fn failover<'a>(
    snapshot: &'a Snapshot,
    pool: &'a Arc<PoolRuntime>,
    now: Instant,
) -> &'a Arc<PoolRuntime> {
    let Some(backup) = pool.backup.map(|i| &snapshot.pools[i]) else {
        return pool;
    };
    let primary_up = pool.has_available(now);
    pool.live.set_on_backup(!primary_up, &backup.settings.name);
    if primary_up { pool } else { backup }
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
    in_chain::<LengthLimitError>(e)
}

/// Whether `e` or any of its sources is a `T`.
fn in_chain<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether a failed attempt may be sent again, and why: it never reached the
/// endpoint (a connect error, or a pooled connection that closed before the
/// request was written: safe for any method), or the connection closed or
/// reset before any response byte (a stale keep-alive connection or a
/// crashed pod: safe for idempotent methods only). `None` for anything else,
/// such as a malformed response.
fn retry_cause_of(e: &hyper_util::client::legacy::Error) -> Option<RetryCause> {
    if e.is_connect() {
        return Some(RetryCause::NotSent);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return Some(RetryCause::NotSent);
            }
            if h.is_incomplete_message() || h.is_closed() {
                return Some(RetryCause::Reset);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            if matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted) {
                return Some(RetryCause::Reset);
            }
        }
        cur = err.source();
    }
    None
}

/// Longest a request body may take to upload before the response timeout starts.
const UPLOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// An error reading the client's request body (an aborted upload).
#[derive(Debug)]
struct ClientBodyError(upstream::BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
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
    if upgrade
        && (content_length(&req).is_some_and(|n| n > 0)
            || req.headers().contains_key(header::TRANSFER_ENCODING))
    {
        // The body would be sent as tunnel bytes: refuse the ambiguity.
        return local(
            StatusCode::BAD_REQUEST,
            "usher: an upgrade request must not have a body",
        );
    }
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body_empty = req.body().is_end_stream();
    let affinity = affinity::resolve(pool, req.headers(), Instant::now());

    let (mut parts, body) = req.into_parts();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    // Route, cache key and the forwarded Host agree: an absolute-form target
    // or HTTP/2 `:authority` wins over a `Host` header (RFC 9112 §3.2.2).
    if let Some(v) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, v);
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, conn.peer.ip(), conn.proto, host);

    // A request that will create a session is born where the capacity is
    // (or will be: it may wait for starting pods).
    let class = affinity.class();
    let is_birth = affinity.is_birth(pool);
    let placed_in;
    let mut pool = pool;
    let mut birth = admission::Birth::No;
    let mut first = None;
    if is_birth {
        let (born, current) = admission::place_session(pool).await;
        if let Some(current) = current {
            placed_in = current;
            pool = &placed_in;
        }
        match born {
            admission::Born::At(home) => {
                match home.try_start_request(pool.settings.max_in_flight_per_endpoint) {
                    Some(guard) => first = Some(guard),
                    // Its home filled meanwhile: wait in the queue for one.
                    None => birth = admission::Birth::Queued,
                }
            }
            admission::Born::Queued(how) => birth = how,
            admission::Born::Anywhere => {}
        }
    }

    // The first endpoint: the pinned one, else one picked by
    // least-connections; either within the in-flight limit, through the
    // surge queue.
    let mut first = match first {
        Some(guard) => guard,
        None => match admission::admit(pool, affinity.pinned.as_ref(), class, birth).await {
            Ok(guard) => guard,
            Err(resp) => return resp,
        },
    };
    // Counted in its home's session load until it completes.
    if is_birth {
        first.mark_birth();
    }
    let secure = conn.proto == "https";
    if let (Some(on_upgrade), Some(value)) = (on_upgrade, upgrade_value) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, value);
        let mut resp = upgrade::forward(shared, pool, parts, on_upgrade, first).await;
        if let Some(served) = resp.extensions().get::<Served>().map(|s| s.0.clone()) {
            affinity::finish(pool, &affinity, &served, secure, resp.headers_mut());
        }
        return resp;
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();

    let read = parts
        .extensions
        .remove::<body::BodyRead>()
        .unwrap_or_default();
    let body = body::Reclaimable::new(
        boxed(
            Limited::new(body, conn.max_body_bytes as usize).map_err(|e| {
                if e.is::<LengthLimitError>() {
                    e
                } else {
                    Box::new(ClientBodyError(e)) as upstream::BoxError
                }
            }),
        ),
        read,
    );
    let settings = &pool.settings;
    let idempotent = is_idempotent(&parts.method);
    let attempts = 1 + settings.retries.attempts;
    let mut tried: Vec<Arc<EndpointState>> = Vec::with_capacity(attempts as usize);
    let mut failure: Option<Response<ProxyBody>> = None;
    let client = pool.live.client(idempotent);
    let mut next = Some(first);
    // Why the next attempt is a retry, once one has failed.
    let mut retry_cause: Option<RetryCause> = None;

    for attempt in 0..attempts {
        let (in_flight, retry_guard) = match next.take() {
            Some(guard) => (guard, None),
            None => {
                let (Some(last), Some(cause)) = (tried.last(), retry_cause) else {
                    break;
                };
                let exclude: Vec<usize> = tried.iter().filter_map(|s| pool.index_of(s)).collect();
                let Some((_, guard)) = pool.reserve(Instant::now(), &exclude) else {
                    break;
                };
                // A request that never reached an endpoint adds no load
                // anywhere when sent elsewhere (HAProxy's redispatch): it
                // needs no budget, so a pod's crash cannot starve it.
                let budget = match cause {
                    RetryCause::NotSent => None,
                    RetryCause::Reset => match pool.live.budget.try_start_retry(
                        settings.retries.budget_percent,
                        settings.retries.min_concurrency,
                    ) {
                        Some(g) => Some(g),
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
                    },
                };
                last.count_retry();
                pool.live.metrics.retries[cause as usize].inc();
                (guard, budget)
            }
        };
        let state = in_flight.endpoint().clone();
        tried.push(state.clone());
        let active = pool.live.budget.start_request();

        let uri = match format!("http://{}{}", state.address(), path).parse::<http::Uri>() {
            Ok(u) => u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "usher: invalid request target"),
        };
        // A request with a body: the response timeout runs from the end of
        // the upload, so a long course upload is not cut off (an upload may
        // take UPLOAD_LIMIT). Without a body it runs from the start.
        let (up_body, sent) = if body_empty {
            (empty(), None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (boxed(body::SentSignal::new(body.attempt(), tx)), Some(rx))
        };
        let mut up = Request::new(up_body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = parts.headers.clone();

        let started = Instant::now();
        let call = client.request(up);
        let outcome = match sent {
            None => tokio::time::timeout(settings.timeouts.response, call)
                .await
                .map_err(|_| ()),
            Some(sent) => {
                tokio::pin!(call);
                tokio::select! {
                    biased;
                    done = &mut call => Ok(done),
                    _ = sent => tokio::time::timeout(settings.timeouts.response, &mut call).await.map_err(|_| ()),
                    () = tokio::time::sleep(UPLOAD_LIMIT) => Err(()),
                }
            }
        };
        let elapsed = started.elapsed();
        let may_eject = || pool.may_eject(Instant::now());
        match outcome {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                state.observe_latency(elapsed.as_secs_f64());
                if let Some(until) = state.record_outcome(
                    Ok(status),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                ) {
                    log_ejection(pool, state.address(), until);
                }
                let (mut rparts, rbody) = resp.into_parts();
                headers::strip_hop_by_hop(&mut rparts.headers);
                affinity::finish(pool, &affinity, &state, secure, &mut rparts.headers);
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
                if in_chain::<ClientBodyError>(&e) {
                    // The client's upload failed, not the endpoint.
                    return local(
                        StatusCode::BAD_REQUEST,
                        "usher: the request body was cut off",
                    );
                }
                let connect = e.is_connect();
                if let Some(until) = state.record_outcome(
                    Err(connect),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                ) {
                    log_ejection(pool, state.address(), until);
                }
                tracing::warn!(
                    pool = %settings.name,
                    endpoint = state.address(),
                    attempt,
                    error = %e,
                    cause = e.source().map(|s| s.to_string()).unwrap_or_default(),
                    "upstream request failed"
                );
                failure = Some(local(
                    StatusCode::BAD_GATEWAY,
                    "usher: the upstream server failed to answer",
                ));
                // The body can go again only if no attempt read any of it.
                let body_intact = body_empty || body.unread();
                retry_cause = match retry_cause_of(&e) {
                    Some(RetryCause::NotSent) if body_intact => Some(RetryCause::NotSent),
                    Some(RetryCause::Reset) if body_intact && idempotent => Some(RetryCause::Reset),
                    // A malformed response, or a request that may have been
                    // processed and must not run twice.
                    _ => break,
                };
            }
            Err(_) => {
                state.record_outcome(
                    Err(false),
                    Instant::now(),
                    &settings.outlier_detection,
                    may_eject,
                );
                tracing::warn!(pool = %settings.name, endpoint = state.address(), "upstream response timeout");
                // A timed-out request may have been processed: never retried.
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "usher: the upstream server did not answer in time",
                );
            }
        }
    }
    failure.unwrap_or_else(|| admission::no_healthy_endpoint(pool))
}

/// Marks an upgrade response with the endpoint that served it.
#[derive(Debug, Clone)]
pub struct Served(pub Arc<EndpointState>);

fn log_ejection(pool: &PoolRuntime, endpoint: &str, until: Instant) {
    tracing::warn!(
        pool = %pool.settings.name,
        endpoint,
        seconds = until.saturating_duration_since(Instant::now()).as_secs(),
        "endpoint ejected after consecutive failures"
    );
}
