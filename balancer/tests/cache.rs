//! The micro-cache over real sockets, in front of a backend that counts what
//! reaches it: repeats are hits, `no-store` and personal requests always
//! reach the backend, concurrent misses collapse into one backend request,
//! `Vary` keeps variants apart, entries expire, and lookups are counted.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestBalancer, client, get, send, text};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Full;
use tokio::sync::Barrier;

const TTL: Duration = Duration::from_secs(2);

/// Requests that reached the backend, by path.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, usize>>>);

impl Counts {
    /// Counts one more request for `path`; returns its number.
    fn bump(&self, path: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(path.to_string()).or_default();
        *n += 1;
        *n
    }

    fn of(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A backend whose bodies carry the request's number for the path, so a
/// body served from the cache is told apart from a fresh one:
/// - `/nostore`: `Cache-Control: no-store`;
/// - `/slow`: answered after 300 ms;
/// - `/lang`: `Vary: Accept-Language`, the body names the language;
/// - `/whoami`: `personal` when the request has a cookie or `Authorization`;
/// - anything else: a plain cacheable 200.
async fn counting_backend() -> (Backend, Counts) {
    let counts = Counts::default();
    let c = counts.clone();
    let backend = Backend::start(move |req| {
        let counts = c.clone();
        async move {
            let path = req.uri().path().to_string();
            let n = counts.bump(&req.uri().to_string());
            match path.as_str() {
                "/nostore" => {
                    let mut r = text(200, format!("fresh #{n}"));
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
                    r
                }
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    text(200, format!("slow #{n}"))
                }
                "/lang" => {
                    let lang = req
                        .headers()
                        .get(header::ACCEPT_LANGUAGE)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let mut r = text(200, format!("{lang} #{n}"));
                    r.headers_mut()
                        .insert(header::VARY, "Accept-Language".parse().unwrap());
                    r
                }
                "/whoami" => {
                    let personal = req.headers().contains_key(header::COOKIE)
                        || req.headers().contains_key(header::AUTHORIZATION);
                    let who = if personal { "personal" } else { "anonymous" };
                    text(200, format!("{who} #{n}"))
                }
                _ => text(200, format!("page {path} #{n}")),
            }
        }
    })
    .await;
    (backend, counts)
}

/// A balancer whose only route caches for [`TTL`] in front of `backend`.
async fn cached(backend: &Backend) -> TestBalancer {
    TestBalancer::start(&format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\n    cache:\n      ttl: {}s\npools:\n  web:\n    endpoints:\n      static:\n        - \"{}\"\n",
        TTL.as_secs(),
        backend.address()
    ))
    .await
}

/// GETs `path` with extra request headers; returns status, `x-usher-cache`
/// (empty when absent), all headers and body.
async fn fetch(
    tb: &TestBalancer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, HeaderMap, String) {
    let mut req = Request::get(tb.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, body) = send(&client(), req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let result = headers
        .get("x-usher-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, result, headers, body)
}

/// `(status, x-usher-cache, body)` of a GET of `path`.
async fn fetch3(tb: &TestBalancer, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let (status, result, _, body) = fetch(tb, path, headers).await;
    (status.as_u16(), result, body)
}

fn r(status: u16, result: &str, body: &str) -> (u16, String, String) {
    (status, result.to_string(), body.to_string())
}

/// `usher_balancer_cache_lookups_total` of pool `web` by result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Lookups {
    hit: u64,
    miss: u64,
    collapsed: u64,
    bypass: u64,
}

async fn lookups(tb: &TestBalancer) -> Lookups {
    let (status, body) = get(&client(), &tb.admin_url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    let value = |result: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with("usher_balancer_cache_lookups_total{"))
            .find(|l| l.contains("pool=\"web\"") && l.contains(&format!("result=\"{result}\"")))
            .unwrap_or_else(|| panic!("no cache_lookups_total sample for {result} in:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Lookups {
        hit: value("hit"),
        miss: value("miss"),
        collapsed: value("collapsed"),
        bypass: value("bypass"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_get_is_a_hit() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    let path = "/login/index.php";

    assert_eq!(
        fetch3(&tb, path, &[]).await,
        r(200, "miss", "page /login/index.php #1")
    );
    let (status, result, headers, body) = fetch(&tb, path, &[]).await;
    assert_eq!(
        (status.as_u16(), result.as_str(), body.as_str()),
        (200, "hit", "page /login/index.php #1")
    );
    assert!(headers.contains_key(header::AGE), "{headers:?}");
    assert_eq!(counts.of(path), 1, "the hit reached the backend");

    // Another query string is another entry.
    assert_eq!(
        fetch3(&tb, "/login/index.php?lang=fr", &[]).await,
        r(200, "miss", "page /login/index.php #1")
    );
    assert_eq!(counts.of("/login/index.php?lang=fr"), 1);
    assert_eq!(counts.of(path), 1);
    assert_eq!(
        lookups(&tb).await,
        Lookups {
            hit: 1,
            miss: 2,
            collapsed: 0,
            bypass: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_responses_are_never_cached() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    for n in 1..=4 {
        let (status, result, _, body) = fetch(&tb, "/nostore", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("fresh #{n}"));
        assert_ne!(result, "hit", "request {n}");
    }
    assert_eq!(counts.of("/nostore"), 4);
    let l = lookups(&tb).await;
    assert_eq!(l.hit + l.collapsed, 0, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookies_and_authorization_bypass_the_cache() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    let path = "/whoami";
    assert_eq!(fetch3(&tb, path, &[]).await, r(200, "miss", "anonymous #1"));
    assert_eq!(fetch3(&tb, path, &[]).await, r(200, "hit", "anonymous #1"));

    // Logged-in learners always reach the backend, and what they get is not stored.
    let personal: [&[(&str, &str)]; 4] = [
        &[("cookie", "MoodleSession=abc123")],
        &[("cookie", "theme=dark; MoodleSession=abc123; lang=fr")],
        &[("authorization", "Bearer token")],
        &[("authorization", "Basic dXNlcjpwYXNz")],
    ];
    for (i, headers) in personal.iter().enumerate() {
        let (status, result, body) = fetch3(&tb, path, headers).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("personal #{}", i + 2), "{headers:?}");
        assert_eq!(result, "bypass", "{headers:?}");
    }
    assert_eq!(counts.of(path), 5);
    // A cookie that is not a session cookie does not make a request personal.
    assert_eq!(
        fetch3(&tb, path, &[("cookie", "theme=dark")]).await,
        r(200, "hit", "anonymous #1")
    );
    assert_eq!(fetch3(&tb, path, &[]).await, r(200, "hit", "anonymous #1"));
    assert_eq!(counts.of(path), 5);
    assert_eq!(
        lookups(&tb).await,
        Lookups {
            hit: 3,
            miss: 1,
            collapsed: 0,
            bypass: 4
        }
    );
}

/// Sends `n` GETs of `path` at once, each on its own connection opened
/// beforehand (POSTs, which bypass the cache); returns `(status, x-usher-cache, body)`s.
async fn burst(tb: &TestBalancer, path: &str, n: usize) -> Vec<(u16, String, String)> {
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (barrier, url, warm) = (barrier.clone(), tb.url(path), tb.url("/warm-up"));
        tasks.push(tokio::spawn(async move {
            let http = client();
            let req = Request::post(warm).body(Full::default()).unwrap();
            assert_eq!(send(&http, req).await.unwrap().0, 200);
            barrier.wait().await;
            let (status, headers, body) =
                send(&http, Request::get(url).body(Full::default()).unwrap())
                    .await
                    .unwrap();
            let result = headers
                .get("x-usher-cache")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status.as_u16(), result, body)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_url_make_one_backend_request() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    let results = burst(&tb, "/slow", 20).await;

    assert_eq!(counts.of("/slow"), 1, "{results:?}");
    assert!(
        results.iter().all(|(s, _, b)| *s == 200 && b == "slow #1"),
        "{results:?}"
    );
    let misses = results.iter().filter(|(_, c, _)| c == "miss").count();
    let hits = results.iter().filter(|(_, c, _)| c == "hit").count();
    assert_eq!((misses, hits), (1, 19), "{results:?}");
    let l = lookups(&tb).await;
    assert_eq!(l.miss, 1, "{l:?}");
    assert_eq!(l.collapsed + l.hit, 19, "{l:?}");
    // Sent together against a 300 ms backend: (nearly) all of them waited
    // for the one request rather than finding it stored.
    assert!(l.collapsed >= 1, "no request waited for the first: {l:?}");
    assert_eq!(l.bypass, 20, "the warm-up POSTs: {l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    let fr = [("accept-language", "fr")];
    let en = [("accept-language", "en")];
    assert_eq!(fetch3(&tb, "/lang", &fr).await, r(200, "miss", "fr #1"));
    assert_eq!(fetch3(&tb, "/lang", &en).await, r(200, "miss", "en #2"));
    assert_eq!(fetch3(&tb, "/lang", &fr).await, r(200, "hit", "fr #1"));
    assert_eq!(fetch3(&tb, "/lang", &en).await, r(200, "hit", "en #2"));
    assert_eq!(fetch3(&tb, "/lang", &[]).await, r(200, "miss", " #3"));
    assert_eq!(fetch3(&tb, "/lang", &[]).await, r(200, "hit", " #3"));
    assert_eq!(fetch3(&tb, "/lang", &en).await, r(200, "hit", "en #2"));
    assert_eq!(counts.of("/lang"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_the_ttl() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    let path = "/course/view.php?id=7";
    assert_eq!(
        fetch3(&tb, path, &[]).await,
        r(200, "miss", "page /course/view.php #1")
    );
    assert_eq!(
        fetch3(&tb, path, &[]).await,
        r(200, "hit", "page /course/view.php #1")
    );
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    assert_eq!(
        fetch3(&tb, path, &[]).await,
        r(200, "miss", "page /course/view.php #2")
    );
    assert_eq!(
        fetch3(&tb, path, &[]).await,
        r(200, "hit", "page /course/view.php #2")
    );
    assert_eq!(counts.of(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_counted_by_result() {
    let (backend, counts) = counting_backend().await;
    let tb = cached(&backend).await;
    assert_eq!(lookups(&tb).await, Lookups::default());

    fetch(&tb, "/a", &[]).await; // miss
    fetch(&tb, "/a", &[]).await; // hit
    fetch(&tb, "/a", &[]).await; // hit
    fetch(&tb, "/a", &[("cookie", "MoodleSession=x")]).await; // bypass
    let (status, _, _) = send(
        &client(),
        Request::post(tb.url("/a")).body(Full::default()).unwrap(),
    )
    .await
    .unwrap(); // bypass: not a GET
    assert_eq!(status, 200);
    assert_eq!(counts.of("/a"), 3);
    assert_eq!(
        lookups(&tb).await,
        Lookups {
            hit: 2,
            miss: 1,
            collapsed: 0,
            bypass: 2
        }
    );

    // 8 at once (after 8 warm-up POSTs): 1 miss, the rest collapsed or hits.
    let results = burst(&tb, "/slow", 8).await;
    assert!(
        results.iter().all(|(s, _, b)| *s == 200 && b == "slow #1"),
        "{results:?}"
    );
    let l = lookups(&tb).await;
    assert_eq!((l.miss, l.bypass), (2, 10), "{l:?}");
    assert_eq!(l.hit - 2 + l.collapsed, 7, "{l:?}");
    assert!(l.collapsed >= 1, "{l:?}");
}
