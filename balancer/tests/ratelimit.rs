//! Per-client rate limits over real sockets: a burst gets `burst` requests
//! through and 429 with `Retry-After` for the rest; a client cannot escape
//! its bucket by sending `X-Forwarded-For`, which is only believed from
//! `trustedProxies` and read from the right, skipping trusted hops.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestBalancer, client, get, metric, send};
use http::{Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type HttpClient = Client<HttpConnector, Full<bytes::Bytes>>;

const RATE: f64 = 5.0;
const BURST: usize = 5;

async fn rate_limited(tb: &TestBalancer) -> f64 {
    metric(tb, "usher_balancer_rate_limited_total", &["pool=\"web\""])
        .await
        .expect("no rate_limited sample for web")
}

/// One route to pool `web` limited to `RATE` requests per second with a
/// burst of `BURST` per client, and the given `trustedProxies`.
fn limited_config(backend: &Backend, trusted: &[&str]) -> String {
    let trusted: String = trusted.iter().map(|t| format!("  - \"{t}\"\n")).collect();
    let trusted = if trusted.is_empty() {
        String::new()
    } else {
        format!("trustedProxies:\n{trusted}")
    };
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\n{trusted}routes:\n  - pool: web\n    rateLimit:\n      requestsPerSecond: {RATE}\n      burst: {BURST}\npools:\n  web:\n    endpoints:\n      static:\n        - \"{}\"\n",
        backend.address()
    )
}

/// What one client got from a run of requests.
#[derive(Debug, Default)]
struct Run {
    /// Whether each request was let through (200), in order.
    passed: Vec<bool>,
    /// `Retry-After` of each 429, in seconds.
    retry_after: Vec<u64>,
    /// From before the first request to after the last response.
    elapsed: Duration,
}

impl Run {
    fn ok(&self) -> usize {
        self.passed.iter().filter(|p| **p).count()
    }

    fn limited(&self) -> usize {
        self.passed.len() - self.ok()
    }

    /// Asserts the token bucket's promise: the first `BURST` requests pass,
    /// and beyond them only what refilled at `RATE` during the run (at most
    /// one token at the pace of a normal run; more only on a very slow
    /// machine, and then exactly accounted for).
    fn assert_burst(&self, who: &str) {
        let first = &self.passed[..BURST];
        assert!(
            first.iter().all(|p| *p),
            "{who}: the first {BURST} requests were not all let through: {:?}",
            self.passed
        );
        let refilled = (self.elapsed.as_secs_f64() * RATE).floor() as usize;
        assert!(
            self.ok() <= BURST + refilled,
            "{who}: {} of {} let through in {:?}; the bucket allows {BURST} + {refilled}: {:?}",
            self.ok(),
            self.passed.len(),
            self.elapsed,
            self.passed
        );
        assert!(
            self.limited() > 0,
            "{who}: nothing limited: {:?}",
            self.passed
        );
    }
}

/// Sends `n` sequential GETs from one connection, each with the
/// `X-Forwarded-For` that `xff` gives for its index.
async fn run(c: &HttpClient, url: &str, n: usize, xff: impl Fn(usize) -> Option<String>) -> Run {
    let mut r = Run::default();
    let started = Instant::now();
    for i in 0..n {
        let mut req = Request::get(url);
        if let Some(v) = xff(i) {
            req = req.header("x-forwarded-for", v);
        }
        let (status, headers, body) = send(c, req.body(Full::default()).unwrap()).await.unwrap();
        if status == 200 {
            r.passed.push(true);
            continue;
        }
        assert_eq!(status, 429, "request {i}: {body:?}");
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("429 without Retry-After: {body:?}"));
        let secs: u64 =
            retry_after.to_str().unwrap().parse().unwrap_or_else(|_| {
                panic!("Retry-After {retry_after:?} is not a number of seconds")
            });
        assert!(secs >= 1, "Retry-After {secs}");
        r.retry_after.push(secs);
        r.passed.push(false);
    }
    r.elapsed = started.elapsed();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_the_burst_through_and_429_with_retry_after_for_the_rest() {
    let backend = Backend::named("web").await;
    let tb = TestBalancer::start(&limited_config(&backend, &[])).await;
    let c = client();
    let url = tb.url("/login/index.php");
    assert_eq!(rate_limited(&tb).await, 0.0);

    let r = run(&c, &url, 20, |_| None).await;
    r.assert_burst("one client");
    assert_eq!(
        backend.hits(),
        r.ok(),
        "limited requests reached the backend"
    );
    assert_eq!(rate_limited(&tb).await, r.limited() as f64);

    // Retry-After is honest: after waiting that long, a request passes.
    let wait = *r.retry_after.last().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body) = get(&c, &url).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "web"));
    assert_eq!(rate_limited(&tb).await, r.limited() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_does_not_escape_the_limit_without_trusted_proxies() {
    let backend = Backend::named("web").await;
    let tb = TestBalancer::start(&limited_config(&backend, &[])).await;
    let c = client();
    let url = tb.url("/login/index.php");

    // A new made-up client address on every request: the socket address counts.
    let r = run(&c, &url, 20, |i| Some(format!("203.0.113.{}", i + 1))).await;
    r.assert_burst("spoofing client");
    assert_eq!(backend.hits(), r.ok());
    assert_eq!(rate_limited(&tb).await, r.limited() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_each_forwarded_client_has_its_own_bucket() {
    let backend = Backend::named("web").await;
    let tb = TestBalancer::start(&limited_config(&backend, &["127.0.0.1/32", "10.0.0.0/8"])).await;
    let c = client();
    let url = tb.url("/login/index.php");

    // Two learners behind the same proxy, interleaved: each gets its burst.
    let both = run(&c, &url, 40, |i| Some(format!("198.51.100.{}", 1 + i % 2))).await;
    let split = |parity| Run {
        passed: both
            .passed
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, p)| *p)
            .collect(),
        retry_after: Vec::new(),
        elapsed: both.elapsed,
    };
    split(0).assert_burst("198.51.100.1");
    split(1).assert_burst("198.51.100.2");
    let mut limited = both.limited();

    // The chain is read from the right, skipping trusted hops: the client
    // cannot escape by varying what it puts on the left, nor do the trusted
    // proxies' own addresses count.
    let r = run(&c, &url, 20, |i| {
        Some(format!("6.6.6.{i}, 198.51.100.7, 10.0.{i}.1"))
    })
    .await;
    r.assert_burst("198.51.100.7 behind two proxies");
    limited += r.limited();

    // Another client behind the same hops has a full bucket.
    let r = run(&c, &url, BURST, |_| {
        Some("6.6.6.6, 198.51.100.8, 10.0.0.1".to_string())
    })
    .await;
    assert!(r.passed.iter().all(|p| *p), "198.51.100.8: {:?}", r.passed);

    // The proxy's own requests (no X-Forwarded-For) use its address: yet another bucket.
    let r = run(&c, &url, BURST, |_| None).await;
    assert!(r.passed.iter().all(|p| *p), "127.0.0.1: {:?}", r.passed);

    assert_eq!(rate_limited(&tb).await, limited as f64);
    assert_eq!(backend.hits(), 40 + 20 + 2 * BURST - limited);
}
