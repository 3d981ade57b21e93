//! Retries over real sockets: an endpoint dying under load costs no request,
//! requests that may have been processed are never sent twice, and the retry
//! budget keeps retries from multiplying an outage.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Backend, TestBalancer, client, config, endpoint_state, eventually, get, metric as sample, send,
    text,
};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

type Log = Arc<Mutex<Vec<String>>>;

fn lines(log: &Log, line: &str) -> usize {
    log.lock().unwrap().iter().filter(|l| *l == line).count()
}

/// The value of `family`'s sample with every one of `labels`; 0 when absent
/// (a labelled counter appears on first use).
async fn metric(tb: &TestBalancer, family: &str, labels: &[String]) -> f64 {
    sample(tb, family, labels).await.unwrap_or(0.0)
}

/// An endpoint that accepts each connection, reads one request in full,
/// logs `METHOD /path`, and closes the connection without answering: a pod
/// that crashes while handling the request.
struct Dying {
    address: String,
    log: Log,
    accept: JoinHandle<()>,
}

impl Dying {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let log: Log = Arc::default();
        let l = log.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = l.clone();
                tokio::spawn(async move {
                    if let Some(line) = read_request(&mut stream).await {
                        log.lock().unwrap().push(line);
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            address,
            log,
            accept,
        }
    }
}

impl Drop for Dying {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads a request's head and its `Content-Length` or chunked body; returns
/// `METHOD /path`, or `None` if the peer went away first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let request_line = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .next()?
        .to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    loop {
        let body = &buf[head_end..];
        let complete = if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= length
        };
        if complete {
            break;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut parts = request_line.split(' ');
    Some(format!("{} {}", parts.next()?, parts.next()?))
}

/// A backend that logs `METHOD /path`, answers `200 healthy`, and holds
/// requests for `/hold` until `release` is notified.
fn healthy(log: Log, release: Arc<Notify>) -> impl std::future::Future<Output = Backend> {
    Backend::start(move |req| {
        let log = log.clone();
        let release = release.clone();
        async move {
            if req.uri().path() != "/healthz" {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri().path()));
            }
            if req.uri().path() == "/hold" {
                let _ = tokio::time::timeout(Duration::from_secs(20), release.notified()).await;
            }
            text(200, "healthy")
        }
    })
}

fn pool_yaml(addresses: &[&str], extra: &str) -> String {
    let list: String = addresses
        .iter()
        .map(|a| format!("        - \"{a}\"\n"))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n{list}{extra}"
    )
}

/// A pool of a healthy backend and a dying endpoint where the next request
/// deterministically goes to the dying one first: the balancer starts with
/// the healthy backend alone, a request to `/hold` is parked on it, and then
/// the dying endpoint is added by a reload. Least-connections must now pick
/// the dying endpoint (0 in flight against 1); a retry can only go to the
/// healthy backend.
struct Setup {
    tb: TestBalancer,
    dying: Dying,
    healthy: Backend,
    healthy_log: Log,
    release: Arc<Notify>,
    hold: JoinHandle<Result<(http::StatusCode, String), String>>,
}

impl Setup {
    async fn start(extra: &str) -> Self {
        let healthy_log: Log = Arc::default();
        let release = Arc::new(Notify::new());
        let healthy = healthy(healthy_log.clone(), release.clone()).await;
        let dying = Dying::start().await;
        let tb = TestBalancer::start(&pool_yaml(&[&healthy.address()], extra)).await;

        let url = tb.url("/hold");
        let hold = tokio::spawn(async move { get(&client(), &url).await });
        let parked = eventually(Duration::from_secs(10), || async {
            lines(&healthy_log, "GET /hold") == 1
        })
        .await;
        assert!(
            parked.is_some(),
            "the /hold request never reached the healthy backend"
        );

        tb.rewrite(&pool_yaml(&[&dying.address, &healthy.address()], extra));
        tb.balancer.reload().unwrap();
        let s = common::status(&tb).await;
        let in_flight = |address: &str| {
            s["pools"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == address)
                .unwrap()["inFlight"]
                .clone()
        };
        assert_eq!(in_flight(&healthy.address()), 1);
        assert_eq!(in_flight(&dying.address), 0);
        assert_eq!(endpoint_state(&tb, "web", &dying.address).await, "healthy");
        Self {
            tb,
            dying,
            healthy,
            healthy_log,
            release,
            hold,
        }
    }

    /// Lets the parked request finish; it must have succeeded.
    async fn finish(self) {
        self.release.notify_one();
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), self.hold)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "healthy"));
        drop(self.healthy);
    }

    fn endpoint_label(&self) -> [String; 1] {
        [format!("endpoint=\"{}\"", self.dying.address)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_an_endpoint_took_it() {
    let s = Setup::start("").await;
    let retries_before = metric(&s.tb, "usher_balancer_retries_total", &s.endpoint_label()).await;

    let req = Request::post(s.tb.url("/mod/assign/submit.php"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"my essay, final version")))
        .unwrap();
    let (status, _, body) = send(&client(), req).await.unwrap();
    assert_eq!(status, 502, "body: {body}");

    // Exactly one attempt: the dying endpoint took the POST, nobody else saw it.
    assert_eq!(lines(&s.dying.log, "POST /mod/assign/submit.php"), 1);
    assert_eq!(
        lines(&s.healthy_log, "POST /mod/assign/submit.php"),
        0,
        "the POST was sent twice"
    );

    // The same for a POST without a body (nothing to replay, but it is still not idempotent).
    let req = Request::post(s.tb.url("/login/logout.php"))
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&client(), req).await.unwrap();
    assert_eq!(status, 502, "body: {body}");
    assert_eq!(lines(&s.dying.log, "POST /login/logout.php"), 1);
    assert_eq!(
        lines(&s.healthy_log, "POST /login/logout.php"),
        0,
        "the empty POST was sent twice"
    );
    assert_eq!(
        metric(&s.tb, "usher_balancer_retries_total", &s.endpoint_label()).await,
        retries_before
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_on_another_endpoint() {
    let s = Setup::start("").await;
    let retries_before = metric(&s.tb, "usher_balancer_retries_total", &s.endpoint_label()).await;

    let (status, body) = get(&client(), &s.tb.url("/course/view.php")).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "healthy"));

    assert_eq!(
        lines(&s.dying.log, "GET /course/view.php"),
        1,
        "the dying endpoint was not tried first"
    );
    assert_eq!(lines(&s.healthy_log, "GET /course/view.php"), 1);
    assert_eq!(
        metric(&s.tb, "usher_balancer_retries_total", &s.endpoint_label()).await,
        retries_before + 1.0
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_retry_budget_allows_no_retry() {
    let s = Setup::start(
        "    retries:\n      attempts: 2\n      budgetPercent: 0\n      minConcurrency: 0\n",
    )
    .await;
    let pool = ["pool=\"web\"".to_string()];
    let exhausted_before =
        metric(&s.tb, "usher_balancer_retry_budget_exhausted_total", &pool).await;

    let (status, body) = get(&client(), &s.tb.url("/course/view.php")).await.unwrap();
    assert_eq!(status, 502, "body: {body}");

    assert_eq!(lines(&s.dying.log, "GET /course/view.php"), 1);
    assert_eq!(
        lines(&s.healthy_log, "GET /course/view.php"),
        0,
        "the budget let a retry through"
    );
    assert_eq!(
        metric(&s.tb, "usher_balancer_retry_budget_exhausted_total", &pool).await,
        exhausted_before + 1.0
    );
    assert_eq!(
        metric(&s.tb, "usher_balancer_retries_total", &s.endpoint_label()).await,
        0.0
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_fails_no_request() {
    const TOTAL: usize = 600;
    const CLIENTS: usize = 4;
    let a = Backend::named("a").await;
    let doomed = Backend::named("doomed").await;
    let c = Backend::named("c").await;
    // At most CLIENTS requests are in flight, hence at most CLIENTS retries:
    // the budget's floor covers them, so this test is about retries alone
    // (the budget is tested above).
    let extra = format!(
        "    retries:\n      attempts: 2\n      budgetPercent: 20\n      minConcurrency: {CLIENTS}\n"
    );
    let tb = TestBalancer::start(&config(&[&a, &doomed, &c], &extra)).await;
    let url = tb.url("/course/view.php?id=42");

    let started = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures: Log = Arc::default();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, started, done, failures) =
                (url.clone(), started.clone(), done.clone(), failures.clone());
            tokio::spawn(async move {
                let c = client();
                while started.fetch_add(1, Ordering::SeqCst) < TOTAL {
                    match get(&c, &url).await {
                        Ok((status, _)) if status == 200 => {}
                        Ok((status, body)) => {
                            failures.lock().unwrap().push(format!("{status} {body}"))
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Kill one endpoint a quarter of the way through, while requests are in flight.
    let quarter = eventually(Duration::from_secs(30), || async {
        done.load(Ordering::SeqCst) >= TOTAL / 4
    })
    .await;
    assert!(quarter.is_some(), "the load did not get going");
    doomed.kill();
    // `kill` aborts the accept task, which may be between an accept and the
    // spawn of that connection's task; killing again once the task is gone
    // closes anything that slipped through.
    tokio::time::sleep(Duration::from_millis(20)).await;
    doomed.kill();
    let served_before_kill = doomed.hits();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("the load did not finish")
            .unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        failures.len()
    );
    assert_eq!(done.load(Ordering::SeqCst), TOTAL);
    assert!(
        served_before_kill > 0,
        "the doomed endpoint served nothing before the kill"
    );
    assert_eq!(doomed.hits(), served_before_kill);
    // Every request that was not answered by the doomed endpoint was answered by the others.
    assert!(a.hits() + c.hits() >= TOTAL - served_before_kill);
    // The requests it failed were retried, and enough of them in a row ejected it.
    let label = [format!("endpoint=\"{}\"", doomed.address())];
    let retries = metric(&tb, "usher_balancer_retries_total", &label).await;
    assert!(
        retries >= 5.0,
        "only {retries} retries after the doomed endpoint's failures"
    );
    assert_eq!(
        endpoint_state(&tb, "web", &doomed.address()).await,
        "ejected"
    );
}
