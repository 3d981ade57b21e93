//! Sticky sessions over real sockets: the balancer's own affinity cookie
//! (opaque, signed, kept across reloads, dropped when its endpoint dies or has
//! drained), affinity learned from an application cookie (`MoodleSession`),
//! and affinity on WebSocket upgrades.
//!
//! Every learner is a client with its own cookie jar, filled from the
//! `Set-Cookie` headers it receives and sent back on every request, as a
//! browser would. Backends answer with their name, so the body tells which
//! endpoint served a request.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, TestBalancer, client, config, endpoint_state, eventually, get, send, text};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http as ws_http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The balancer's default affinity cookie.
const AFFINITY: &str = "usher_affinity";

/// Pool YAML turning on the balancer's own affinity cookie, with a 2 h
/// lifetime so that `Max-Age` has a known value.
const STICKY: &str = "    stickySessions:\n      ttl: 2h\n";

// ---------------------------------------------------------------------------
// Cookies and learners
// ---------------------------------------------------------------------------

/// One `Set-Cookie` header, parsed.
#[derive(Debug, Clone)]
struct SetCookie {
    name: String,
    value: String,
    /// Attribute names (lower case) with their values, e.g.
    /// `("max-age", Some("7200"))`, `("httponly", None)`.
    attributes: Vec<(String, Option<String>)>,
    raw: String,
}

impl SetCookie {
    fn parse(raw: &str) -> Self {
        let mut parts = raw.split(';');
        let (name, value) = parts
            .next()
            .and_then(|pair| pair.split_once('='))
            .unwrap_or_else(|| panic!("malformed Set-Cookie {raw:?}"));
        let attributes = parts
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        Self {
            name: name.trim().to_string(),
            value: value.trim().trim_matches('"').to_string(),
            attributes,
            raw: raw.to_string(),
        }
    }

    /// `Some(value)` when the attribute is present (`Some(None)` for a flag).
    fn attribute(&self, name: &str) -> Option<Option<&str>> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref())
    }

    fn max_age(&self) -> Option<i64> {
        self.attribute("max-age").flatten().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad Max-Age in {:?}", self.raw))
        })
    }
}

/// Every `Set-Cookie` of a response, parsed.
fn set_cookies(headers: &HeaderMap) -> Vec<SetCookie> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| SetCookie::parse(v.to_str().expect("Set-Cookie is ASCII")))
        .collect()
}

/// What a learner got back.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    /// The serving backend's name.
    body: String,
    set_cookies: Vec<SetCookie>,
}

impl Reply {
    /// The balancer's affinity cookie, if the response set it.
    fn affinity(&self) -> Option<&SetCookie> {
        self.set_cookies.iter().find(|c| c.name == AFFINITY)
    }
}

/// A learner's browser: a keep-alive client and a cookie jar.
struct Learner {
    http: Client<HttpConnector, Full<Bytes>>,
    jar: BTreeMap<String, String>,
}

impl Learner {
    fn new() -> Self {
        Self {
            http: client(),
            jar: BTreeMap::new(),
        }
    }

    /// A learner whose jar already holds `name=value` (a copied or forged cookie).
    fn with_cookie(name: &str, value: &str) -> Self {
        let mut l = Self::new();
        l.jar.insert(name.to_string(), value.to_string());
        l
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    /// The `Cookie` header this learner sends, if its jar is not empty.
    fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Keeps what `cookies` set (and drops what they expire).
    fn store(&mut self, cookies: &[SetCookie]) {
        for c in cookies {
            if c.max_age().is_some_and(|age| age <= 0) {
                self.jar.remove(&c.name);
            } else {
                self.jar.insert(c.name.clone(), c.value.clone());
            }
        }
    }

    async fn get(&mut self, url: &str) -> Reply {
        let mut req = Request::get(url);
        if let Some(cookies) = self.cookie_header() {
            req = req.header(header::COOKIE, cookies);
        }
        let (status, headers, body) = send(&self.http, req.body(Full::default()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let set_cookies = set_cookies(&headers);
        self.store(&set_cookies);
        Reply {
            status,
            body,
            set_cookies,
        }
    }

    /// GETs `url`, which must succeed; returns the reply.
    async fn get_ok(&mut self, url: &str) -> Reply {
        let r = self.get(url).await;
        assert_eq!(r.status, StatusCode::OK, "GET {url}: {r:?}");
        r
    }
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A backend that names itself in every answer:
/// - `/login/index.php` starts a Moodle session: `Set-Cookie: MoodleSession=<random>`;
/// - a WebSocket handshake is accepted (`x-backend: <name>` on the `101`) and echoed;
/// - anything else: `200 <name>`.
struct Node {
    name: String,
    backend: Backend,
}

impl Node {
    async fn start(name: &str) -> Self {
        let n = name.to_string();
        let backend = Backend::start(move |req: Request<Incoming>| {
            let name = n.clone();
            async move {
                if req.headers().contains_key("sec-websocket-key") {
                    return websocket(name, req);
                }
                match req.uri().path() {
                    "/login/index.php" => {
                        let session: String = (0..26).map(|_| fastrand::alphanumeric()).collect();
                        let mut resp = text(200, name);
                        resp.headers_mut().insert(
                            header::SET_COOKIE,
                            HeaderValue::from_str(&format!(
                                "MoodleSession={session}; path=/; HttpOnly"
                            ))
                            .unwrap(),
                        );
                        resp
                    }
                    _ => text(200, name),
                }
            }
        })
        .await;
        Self {
            name: name.to_string(),
            backend,
        }
    }

    fn address(&self) -> String {
        self.backend.address()
    }

    fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
}

/// Accepts a WebSocket handshake and echoes text and binary messages,
/// naming the backend in `x-backend`.
fn websocket(name: String, req: Request<Incoming>) -> http::Response<Full<Bytes>> {
    let mut resp = common::websocket_echo(req);
    resp.headers_mut()
        .insert("x-backend", HeaderValue::from_str(&name).unwrap());
    resp
}

/// `count` backends named `a`, `b`, ...
async fn nodes(count: usize) -> Vec<Node> {
    let mut list = Vec::with_capacity(count);
    for i in 0..count {
        let name = char::from(b'a' + i as u8).to_string();
        list.push(Node::start(&name).await);
    }
    list
}

/// Config of pool `web` with `nodes` and extra pool YAML.
fn pool(nodes: &[Node], extra: &str) -> String {
    let backends: Vec<&Backend> = nodes.iter().map(|n| &n.backend).collect();
    config(&backends, extra)
}

fn node<'a>(nodes: &'a [Node], name: &str) -> &'a Node {
    nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no backend named {name:?}"))
}

/// Rewrites the config and reloads it.
fn reload(tb: &TestBalancer, yaml: &str) {
    tb.rewrite(yaml);
    tb.balancer.reload().unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until nothing listens on `addr` any more (a killed backend is gone).
async fn wait_refused(addr: SocketAddr) {
    let gone = eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(gone.is_some(), "the killed backend {addr} still accepts");
}

/// Asserts that an affinity cookie value reveals no endpoint: an opaque
/// 32-hex-digit endpoint id, then `.` and a 16-hex-digit session tag (the
/// session's key for placement), containing neither address nor name of any
/// backend.
fn assert_opaque(value: &str, nodes: &[Node]) {
    let (id, tag) = value
        .split_once('.')
        .unwrap_or_else(|| panic!("cookie value {value:?} has no session tag"));
    assert_eq!(id.len(), 32, "cookie value {value:?}");
    assert_eq!(tag.len(), 16, "cookie value {value:?}");
    assert!(
        id.bytes().chain(tag.bytes()).all(|b| b.is_ascii_hexdigit()),
        "cookie value {value:?}"
    );
    assert!(!value.contains("127.0.0.1"), "cookie value {value:?}");
    for n in nodes {
        assert!(
            !value.contains(&n.address()),
            "cookie {value:?} names {}",
            n.address()
        );
        assert_ne!(value, n.name, "cookie names backend {}", n.name);
    }
}

// ---------------------------------------------------------------------------
// The balancer's own affinity cookie
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_learner_stays_on_its_endpoint_while_endpoints_are_added() {
    let nodes = nodes(5).await;
    let tb = TestBalancer::start(&pool(&nodes[..2], STICKY)).await;
    let url = tb.url("/course/view.php?id=7");

    let mut learner = Learner::new();
    let first = learner.get_ok(&url).await;
    let home = first.body.clone();
    let cookie = first
        .affinity()
        .unwrap_or_else(|| panic!("no affinity cookie on the first response: {first:?}"))
        .clone();
    // The cookie's attributes: HttpOnly, the configured lifetime, the whole site.
    assert_eq!(cookie.attribute("httponly"), Some(None), "{}", cookie.raw);
    assert_eq!(cookie.max_age(), Some(7200), "{}", cookie.raw);
    assert_eq!(cookie.attribute("path"), Some(Some("/")), "{}", cookie.raw);
    assert_eq!(
        cookie.attribute("secure"),
        None,
        "plain HTTP: {}",
        cookie.raw
    );
    assert_opaque(&cookie.value, &nodes);
    assert_eq!(learner.cookie(AFFINITY), Some(cookie.value.as_str()));

    // 32 more requests while three endpoints are added, one reload each.
    let mut requests = 1;
    for added in 0..=3 {
        if added > 0 {
            reload(&tb, &pool(&nodes[..2 + added], STICKY));
        }
        for _ in 0..8 {
            let r = learner.get_ok(&url).await;
            requests += 1;
            assert_eq!(
                r.body, home,
                "request {requests} (after adding {added} endpoints) left its endpoint"
            );
            assert!(
                r.affinity().is_none(),
                "the cookie was set again though it names the serving endpoint: {r:?}"
            );
        }
    }
    assert_eq!(requests, 33);
    assert_eq!(node(&nodes, &home).backend.hits(), 33);

    // The added endpoints are live and take learners without a cookie; every
    // endpoint has one stable cookie value, different from the others'.
    let mut ids: HashMap<String, BTreeSet<String>> = HashMap::new();
    for _ in 0..30 {
        let r = Learner::new().get_ok(&url).await;
        let c = r
            .affinity()
            .unwrap_or_else(|| panic!("a new learner got no cookie: {r:?}"));
        assert_opaque(&c.value, &nodes);
        ids.entry(r.body.clone())
            .or_default()
            .insert(endpoint_id(&c.value).to_string());
    }
    assert!(
        ["c", "d", "e"].iter().any(|n| ids.contains_key(*n)),
        "no new learner reached an added endpoint: {ids:?}"
    );
    let values: BTreeSet<&String> = ids.values().flatten().collect();
    assert!(
        ids.values().all(|v| v.len() == 1) && values.len() == ids.len(),
        "cookie values per endpoint: {ids:?}"
    );
    if let Some(v) = ids.get(&home) {
        assert_eq!(
            v.first().map(String::as_str),
            Some(endpoint_id(&cookie.value)),
            "{ids:?}"
        );
    }
}

/// The endpoint id of an affinity cookie value (before the session tag).
fn endpoint_id(value: &str) -> &str {
    value.split_once('.').map_or(value, |(id, _)| id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_affinity_cookie_is_ignored_and_replaced() {
    let nodes = nodes(3).await;
    let tb = TestBalancer::start(&pool(&nodes, STICKY)).await;
    let url = tb.url("/my/");

    let mut learner = Learner::new();
    let home = learner.get_ok(&url).await.body;
    let genuine = learner.cookie(AFFINITY).expect("pinned").to_string();
    let id = endpoint_id(&genuine).to_string();

    // Forged ids: one hex digit changed, upper case, truncated, extended,
    // the pinned endpoint's address and name, empty; each with and without
    // the genuine session tag.
    let tag = genuine.split_once('.').map(|(_, t)| t.to_string()).unwrap();
    let mut flipped = id.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let home_node = node(&nodes, &home);
    let ids = [
        flipped,
        id.to_ascii_uppercase(),
        id[..31].to_string(),
        format!("{id}0"),
        home_node.address(),
        home.clone(),
        String::new(),
    ];
    let forged: Vec<String> = ids
        .iter()
        .flat_map(|i| [i.clone(), format!("{i}.{tag}")])
        .collect();
    for value in &forged {
        assert_ne!(endpoint_id(value), id);
        // Not honoured: the forger is placed as a new session and given a
        // genuine cookie naming the endpoint that served it.
        let mut forger = Learner::with_cookie(AFFINITY, value);
        let r = forger.get_ok(&url).await;
        let set = r
            .affinity()
            .unwrap_or_else(|| panic!("no new cookie for forged {value:?}: {r:?}"));
        assert_ne!(&set.value, value);
        assert_opaque(&set.value, &nodes);
        let served = r.body.clone();
        // The new cookie pins the forger to the endpoint that served it.
        for _ in 0..3 {
            let again = forger.get_ok(&url).await;
            assert_eq!(again.body, served, "forged {value:?}, then {again:?}");
            assert!(again.affinity().is_none(), "{again:?}");
        }
    }
    // The genuine cookie still works.
    for _ in 0..3 {
        assert_eq!(learner.get_ok(&url).await.body, home);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_learner_moves_when_its_endpoint_fails_health_checks() {
    let nodes = nodes(3).await;
    let extra =
        format!("{STICKY}    healthCheck:\n      interval: 200ms\n      fall: 1\n      rise: 1\n");
    let tb = TestBalancer::start(&pool(&nodes, &extra)).await;
    let url = tb.url("/course/view.php?id=3");

    let mut learner = Learner::new();
    let home = learner.get_ok(&url).await.body;
    let old = learner.cookie(AFFINITY).expect("pinned").to_string();
    for _ in 0..3 {
        assert_eq!(learner.get_ok(&url).await.body, home);
    }

    let dead = node(&nodes, &home);
    dead.backend.kill();
    wait_refused(dead.addr()).await;
    let down = eventually(Duration::from_secs(5), || async {
        endpoint_state(&tb, "web", &dead.address()).await == "unhealthy"
    })
    .await;
    assert!(
        down.is_some(),
        "{home} is {} after being killed",
        endpoint_state(&tb, "web", &dead.address()).await
    );

    moves_away(&tb, &url, learner, dead, &old, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_learner_moves_when_its_endpoint_is_ejected() {
    let nodes = nodes(3).await;
    // No active checks: only passive outlier detection notices the death.
    let extra = format!(
        "{STICKY}    outlierDetection:\n      consecutive5xx: 1\n      baseEjectionTime: 30s\n"
    );
    let tb = TestBalancer::start(&pool(&nodes, &extra)).await;
    let url = tb.url("/course/view.php?id=4");

    let mut learner = Learner::new();
    let home = learner.get_ok(&url).await.body;
    let old = learner.cookie(AFFINITY).expect("pinned").to_string();
    for _ in 0..3 {
        assert_eq!(learner.get_ok(&url).await.body, home);
    }

    let dead = node(&nodes, &home);
    dead.backend.kill();
    wait_refused(dead.addr()).await;
    // The next request still goes to the pinned endpoint first, fails there
    // (ejecting it) and is retried elsewhere: the learner sees no error.
    moves_away(&tb, &url, learner, dead, &old, true).await;
    assert_eq!(endpoint_state(&tb, "web", &dead.address()).await, "ejected");
}

/// Failed attempts on `endpoint` per `/metrics`: connect errors and other
/// upstream errors (a request sent to a dead endpoint counts in one of them).
async fn failed_attempts(tb: &TestBalancer, endpoint: &str) -> f64 {
    let (status, body) = get(&client(), &tb.admin_url("/metrics")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let label = format!("endpoint=\"{endpoint}\"");
    body.lines()
        .filter(|l| {
            (l.starts_with("usher_balancer_upstream_connect_errors_total{")
                || l.starts_with("usher_balancer_upstream_errors_total{"))
                && l.contains(&label)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The learner pinned to the dead endpoint `home` (cookie `old`) is served
/// elsewhere, re-pinned by a new cookie, and the old cookie is not honoured:
/// no request is even tried on the dead endpoint any more (retries would
/// hide it from the learners; the failure counters would not).
/// `first_tries_dead`: whether the first request may still try it (no
/// active checks: the first request is how the balancer finds out).
async fn moves_away(
    tb: &TestBalancer,
    url: &str,
    mut learner: Learner,
    dead: &Node,
    old: &str,
    first_tries_dead: bool,
) {
    let home = dead.name.as_str();
    let before = failed_attempts(tb, &dead.address()).await;
    let r = learner.get_ok(url).await;
    let failed = failed_attempts(tb, &dead.address()).await;
    if first_tries_dead {
        assert!(
            failed > before,
            "the first request found no failure on {home}: {before} -> {failed}"
        );
    } else {
        assert_eq!(failed, before, "a request was sent to the unhealthy {home}");
    }
    assert_ne!(r.body, home, "served by the dead endpoint?");
    let new = r
        .affinity()
        .unwrap_or_else(|| panic!("no new cookie after moving: {r:?}"))
        .value
        .clone();
    assert_ne!(new, old);
    assert_eq!(learner.cookie(AFFINITY), Some(new.as_str()));
    let moved_to = r.body;
    for _ in 0..10 {
        let r = learner.get_ok(url).await;
        assert_eq!(r.body, moved_to, "the re-pinned learner left {moved_to}");
        assert!(r.affinity().is_none(), "{r:?}");
    }
    // A tab still holding the old cookie: served by a live endpoint, and told
    // the new pin every time, for as long as the old endpoint is down.
    for _ in 0..5 {
        let r = Learner::with_cookie(AFFINITY, old).get_ok(url).await;
        assert_ne!(r.body, home);
        let set = r
            .affinity()
            .unwrap_or_else(|| panic!("the old cookie was accepted: {r:?}"));
        assert_ne!(set.value, old);
        if r.body == moved_to {
            assert_eq!(set.value, new);
        }
    }
    assert_eq!(
        failed_attempts(tb, &dead.address()).await,
        failed,
        "requests were still sent to the dead {home}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_endpoint_keeps_its_sticky_learners_until_the_drain_timeout() {
    let nodes = nodes(3).await;
    let extra = format!("{STICKY}    drainTimeout: 5s\n");
    let tb = TestBalancer::start(&pool(&nodes, &extra)).await;
    let url = tb.url("/mod/forum/view.php?id=9");

    // Six learners; the endpoint with most of them is removed.
    let mut learners = Vec::new();
    for _ in 0..6 {
        let mut l = Learner::new();
        let home = l.get_ok(&url).await.body;
        learners.push((l, home));
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, home) in &learners {
        *per_node.entry(home.as_str()).or_default() += 1;
    }
    let removed = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name.to_string())
        .unwrap();
    let removed_node = node(&nodes, &removed);
    let mut sticky: Vec<Learner> = Vec::new();
    for (l, home) in learners {
        if home == removed {
            sticky.push(l);
        }
    }
    let old_cookies: Vec<String> = sticky
        .iter()
        .map(|l| l.cookie(AFFINITY).unwrap().to_string())
        .collect();
    let hits_before = removed_node.backend.hits();
    assert_eq!(hits_before, sticky.len());

    let kept: Vec<&Backend> = nodes
        .iter()
        .filter(|n| n.name != removed)
        .map(|n| &n.backend)
        .collect();
    let before_reload = Instant::now();
    reload(&tb, &config(&kept, &extra));
    let after_reload = Instant::now();
    assert_eq!(
        endpoint_state(&tb, "web", &removed_node.address()).await,
        "draining"
    );

    // For 3 s: sticky learners stay, new learners never get there.
    let mut sticky_requests = 0;
    let mut stayed = 0;
    let mut fresh_requests = 0;
    for _ in 0..100 {
        if before_reload.elapsed() >= Duration::from_secs(3) {
            break;
        }
        for l in &mut sticky {
            let r = l.get_ok(&url).await;
            // Draining began after `before_reload`, and the balancer chose
            // the endpoint before the reply came: within the 5 s hold
            // whenever this is below 5 s (always, unless the box stalls).
            if before_reload.elapsed() < Duration::from_secs(5) {
                assert_eq!(
                    r.body, removed,
                    "a sticky learner left the draining endpoint"
                );
                assert!(r.affinity().is_none(), "{r:?}");
            }
            sticky_requests += 1;
            stayed += usize::from(r.body == removed);
        }
        for _ in 0..3 {
            let r = Learner::new().get_ok(&url).await;
            assert_ne!(
                r.body, removed,
                "a new learner reached the draining endpoint"
            );
            let set = r.affinity().expect("a new learner is pinned");
            assert!(!old_cookies.contains(&set.value), "{r:?}");
            fresh_requests += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sticky_requests >= 5 * sticky.len() && fresh_requests >= 15,
        "too few requests while draining: {sticky_requests} sticky, {fresh_requests} new"
    );
    assert_eq!(
        removed_node.backend.hits(),
        hits_before + stayed,
        "only the sticky learners reached the draining endpoint"
    );
    assert_eq!(
        endpoint_state(&tb, "web", &removed_node.address()).await,
        "draining"
    );

    // Once the drain timeout has passed, they are re-pinned elsewhere.
    tokio::time::sleep_until(
        (after_reload + Duration::from_secs(5) + Duration::from_millis(50)).into(),
    )
    .await;
    for (l, old) in sticky.iter_mut().zip(&old_cookies) {
        let r = l.get_ok(&url).await;
        assert_ne!(r.body, removed, "still pinned after the drain timeout");
        let set = r
            .affinity()
            .unwrap_or_else(|| panic!("not re-pinned after the drain timeout: {r:?}"));
        assert_ne!(&set.value, old);
        let moved_to = r.body;
        for _ in 0..3 {
            assert_eq!(l.get_ok(&url).await.body, moved_to);
        }
    }
    assert_eq!(
        removed_node.backend.hits(),
        hits_before + stayed,
        "the drained endpoint was used after its drain timeout"
    );
    // Drained (nothing in flight, hold over): forgotten at the next sweep.
    let gone = eventually(Duration::from_secs(5), || async {
        endpoint_state(&tb, "web", &removed_node.address()).await == "absent"
    })
    .await;
    assert!(gone.is_some(), "the drained endpoint is still listed");
}

// ---------------------------------------------------------------------------
// Affinity from the application's cookie
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moodle_session_affinity_keeps_learners_on_the_endpoint_that_logged_them_in() {
    let nodes = nodes(5).await;
    let extra = "    stickySessions:\n      applicationCookie: MoodleSession\n";
    let tb = TestBalancer::start(&pool(&nodes[..3], extra)).await;
    let login = tb.url("/login/index.php");
    let page = tb.url("/course/view.php?id=2");

    let mut learners = Vec::new();
    for _ in 0..6 {
        let mut l = Learner::new();
        let r = l.get_ok(&login).await;
        // The application's cookie, and the balancer's signed cookie naming
        // the pod that issued it (any replica can follow it).
        let names: Vec<&str> = r.set_cookies.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["MoodleSession", "usher_affinity"], "{r:?}");
        assert!(l.cookie("MoodleSession").is_some());
        learners.push((l, r.body));
    }

    browse(&mut learners, &page, "before reloads").await;
    reload(&tb, &pool(&nodes[..4], extra));
    browse(&mut learners, &page, "after adding d").await;
    reload(&tb, &pool(&nodes[..5], extra));
    browse(&mut learners, &page, "after adding e").await;

    // The added endpoints are live: requests without a session reach them.
    let mut reached = BTreeSet::new();
    for _ in 0..30 {
        let r = Learner::new().get_ok(&page).await;
        assert!(r.set_cookies.is_empty(), "{r:?}");
        reached.insert(r.body);
    }
    assert!(
        reached.contains("d") || reached.contains("e"),
        "no session-less request reached an added endpoint: {reached:?}"
    );
}

/// Five pages for each learner, each of which must reach the learner's
/// endpoint with no cookie set by the balancer.
async fn browse(learners: &mut [(Learner, String)], page: &str, stage: &str) {
    for (l, home) in learners.iter_mut() {
        for _ in 0..5 {
            let r = l.get_ok(page).await;
            assert_eq!(&r.body, home, "{stage}: a session left its endpoint");
            assert!(
                r.set_cookies.is_empty(),
                "{stage}: the balancer set a cookie: {r:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket upgrades
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket through the balancer, sending `cookie` if given.
async fn open_ws(url: &str, cookie: Option<&str>) -> (Ws, ws_http::Response<Option<Vec<u8>>>) {
    let mut req = url.into_client_request().unwrap();
    if let Some(c) = cookie {
        req.headers_mut()
            .insert(header::COOKIE, format!("{AFFINITY}={c}").parse().unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket handshake through the balancer failed")
}

fn served_by(resp: &ws_http::Response<Option<Vec<u8>>>) -> String {
    resp.headers()
        .get("x-backend")
        .expect("x-backend on the 101")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_affinity_cookie_pins_websocket_upgrades() {
    let nodes = nodes(3).await;
    let tb = TestBalancer::start(&pool(&nodes, STICKY)).await;
    let url = tb.url("/course/5/chat").replacen("http://", "ws://", 1);

    // First upgrade, no cookie: the 101 pins the learner.
    let (first, resp) = open_ws(&url, None).await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let home = served_by(&resp);
    let cookies = set_cookies(resp.headers());
    let cookie = cookies
        .iter()
        .find(|c| c.name == AFFINITY)
        .unwrap_or_else(|| panic!("no affinity cookie on the 101: {:?}", resp.headers()));
    assert_eq!(cookie.attribute("httponly"), Some(None), "{}", cookie.raw);
    assert_eq!(cookie.max_age(), Some(7200), "{}", cookie.raw);
    assert_opaque(&cookie.value, &nodes);
    let id = cookie.value.clone();

    // Upgrades with the cookie land on the pinned endpoint, although it is
    // the busiest (each open socket is in flight there; the others are idle).
    let mut open = vec![first];
    for i in 0..3 {
        let (ws, resp) = open_ws(&url, Some(&id)).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(served_by(&resp), home, "pinned upgrade {i}");
        assert!(
            set_cookies(resp.headers()).is_empty(),
            "cookie set again on a pinned upgrade: {:?}",
            resp.headers()
        );
        open.push(ws);
    }
    let ws = open.last_mut().unwrap();
    ws.send(Message::text("quiz started")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo timed out")
        .expect("socket ended")
        .unwrap();
    assert_eq!(echoed, Message::text("quiz started"));

    // Without the cookie, least-connections sends an upgrade elsewhere, and
    // pins it there.
    let (other, resp) = open_ws(&url, None).await;
    assert_ne!(served_by(&resp), home);
    let other_cookie = set_cookies(resp.headers())
        .into_iter()
        .find(|c| c.name == AFFINITY)
        .expect("the unpinned upgrade is pinned");
    assert_ne!(other_cookie.value, id);
    assert_eq!(
        node(&nodes, &home).backend.hits(),
        4,
        "every pinned upgrade reached {home}"
    );

    for mut ws in open.into_iter().chain([other]) {
        let _ = ws.close(None).await;
    }
}
