//! The surge queue over real sockets: a burst far above the pool's capacity
//! waits instead of failing and never overloads an endpoint, queued requests
//! are admitted in arrival order, and what cannot wait (queue full, queue
//! timeout, no queue at all) gets a 503 with `Retry-After`, counted by reason.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, TestBalancer, client, config, eventually, get, metric, send, text};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Full;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

const WEB: &str = "pool=\"web\"";

/// `usher_balancer_pool_queue_rejected_total` of pool `web` for `reason`.
async fn rejected(tb: &TestBalancer, reason: &str) -> f64 {
    let reason = format!("reason=\"{reason}\"");
    metric(
        tb,
        "usher_balancer_pool_queue_rejected_total",
        &[WEB, reason.as_str()],
    )
    .await
    .unwrap_or_else(|| panic!("no queue_rejected sample for {reason}"))
}

async fn queue_depth(tb: &TestBalancer) -> f64 {
    metric(tb, "usher_balancer_pool_queue_depth", &[WEB])
        .await
        .expect("no queue depth sample")
}

async fn queue_waits(tb: &TestBalancer) -> f64 {
    metric(tb, "usher_balancer_pool_queue_wait_seconds_count", &[WEB])
        .await
        .expect("no queue wait histogram")
}

/// Asserts a balancer 503 that asks the client to retry after whole seconds.
fn assert_retry_503(status: StatusCode, headers: &HeaderMap, body: &str, why: &str) {
    assert_eq!(status, 503, "body: {body:?}");
    assert!(body.contains(why), "body {body:?} does not say {why:?}");
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("503 without Retry-After: {body:?}"));
    let secs: u64 = retry_after
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not a number of seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
}

/// Requests a backend is handling right now, and the most it ever handled at once.
#[derive(Debug, Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// One request being handled; leaving (even by cancellation) counts it out.
struct Active(Arc<Concurrency>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Concurrency {
    fn enter(self: &Arc<Self>) -> Active {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        Active(self.clone())
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A backend answering `200 <name>` after `delay`, counting its own concurrency.
async fn counting(name: &str, delay: Duration) -> (Backend, Arc<Concurrency>) {
    let seen = Arc::new(Concurrency::default());
    let s = seen.clone();
    let name = name.to_string();
    let backend = Backend::start(move |_req| {
        let (seen, name) = (s.clone(), name.clone());
        async move {
            let _active = seen.enter();
            tokio::time::sleep(delay).await;
            text(200, name)
        }
    })
    .await;
    (backend, seen)
}

/// Holds requests to `/hold…` until opened; records every request it starts.
#[derive(Debug)]
struct Gate {
    open: Semaphore,
    started: AtomicUsize,
    /// Request targets in the order the backend received them.
    order: Mutex<Vec<String>>,
}

impl Gate {
    /// Lets every held request (and any later one) through.
    fn open(&self) {
        self.open.close();
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// Backends sharing one gate: `/hold…` waits for it, anything else answers
/// at once; both answer `200 <name>`.
async fn gated(names: &[&str]) -> (Vec<Backend>, Arc<Gate>) {
    let gate = Arc::new(Gate {
        open: Semaphore::new(0),
        started: AtomicUsize::new(0),
        order: Mutex::new(Vec::new()),
    });
    let mut backends = Vec::new();
    for name in names {
        let g = gate.clone();
        let name = name.to_string();
        backends.push(
            Backend::start(move |req| {
                let (gate, name) = (g.clone(), name.clone());
                async move {
                    gate.started.fetch_add(1, Ordering::SeqCst);
                    let target = req.uri().path_and_query().unwrap().to_string();
                    gate.order.lock().unwrap().push(target);
                    if req.uri().path().starts_with("/hold") {
                        // Closed = open: acquiring fails at once.
                        let _ = gate.open.acquire().await;
                    }
                    text(200, name)
                }
            })
            .await,
        );
    }
    (backends, gate)
}

type Outcome = Result<(StatusCode, HeaderMap, String), String>;

/// Sends a GET to `url` on a new connection in its own task.
fn spawn_get(set: &mut JoinSet<(usize, Outcome)>, i: usize, url: String) {
    set.spawn(async move {
        let req = Request::get(url).body(Full::default()).unwrap();
        (i, send(&client(), req).await)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_times_capacity_queues_and_never_overloads_an_endpoint() {
    let (a, a_seen) = counting("a", Duration::from_millis(100)).await;
    let (b, b_seen) = counting("b", Duration::from_millis(100)).await;
    let extra =
        "    maxInFlightPerEndpoint: 2\n    queue:\n      maxLength: 100\n      timeout: 10s\n";
    let tb = TestBalancer::start(&config(&[&a, &b], extra)).await;
    assert_eq!(queue_waits(&tb).await, 0.0);

    // Capacity is 2 endpoints × 2 = 4; 40 learners click at once.
    let mut set = JoinSet::new();
    for i in 0..40 {
        spawn_get(&mut set, i, tb.url(&format!("/course/view.php?id={i}")));
    }
    let mut served = 0;
    while let Some(joined) = set.join_next().await {
        let (i, outcome) = joined.unwrap();
        let (status, _, body) = outcome.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body:?}");
        assert!(body == "a" || body == "b", "request {i}: {body:?}");
        served += 1;
    }
    assert_eq!(served, 40);
    assert_eq!(a.hits() + b.hits(), 40, "a {} b {}", a.hits(), b.hits());

    let (max_a, max_b) = (a_seen.max(), b_seen.max());
    assert!(
        max_a <= 2 && max_b <= 2,
        "an endpoint saw more than maxInFlightPerEndpoint: a {max_a}, b {max_b}"
    );
    assert_eq!(
        max_a.max(max_b),
        2,
        "no endpoint was ever at its limit: the burst did not exercise the queue"
    );

    // Requests waited in the queue, and none is left waiting.
    let waits = queue_waits(&tb).await;
    assert!(waits > 0.0, "no queue wait observed");
    assert_eq!(queue_depth(&tb).await, 0.0);
    for reason in ["full", "timeout", "at_capacity"] {
        assert_eq!(rejected(&tb, reason).await, 0.0, "rejected for {reason}");
    }
    assert_eq!(
        metric(
            &tb,
            "usher_balancer_pool_responses_total",
            &[WEB, "code_class=\"5xx\""]
        )
        .await
        .expect("no 5xx response sample"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_admitted_in_arrival_order() {
    // One endpoint, one slot: the order the backend sees requests in is the
    // order the queue admitted them in. Arrival order is made certain by
    // sending each request only once the previous one is seen queued.
    let (backends, gate) = gated(&["only"]).await;
    let extra =
        "    maxInFlightPerEndpoint: 1\n    queue:\n      maxLength: 100\n      timeout: 10s\n";
    let tb = TestBalancer::start(&config(&[&backends[0]], extra)).await;

    let mut set = JoinSet::new();
    spawn_get(&mut set, 0, tb.url("/hold"));
    eventually(Duration::from_secs(10), || async { gate.started() == 1 })
        .await
        .expect("the first request never reached the backend");

    const QUEUED: usize = 8;
    for i in 1..=QUEUED {
        spawn_get(&mut set, i, tb.url(&format!("/page?n={i}")));
        eventually(Duration::from_secs(10), || async {
            queue_depth(&tb).await == i as f64
        })
        .await
        .unwrap_or_else(|| panic!("request {i} was never queued"));
    }
    assert_eq!(gate.started(), 1, "a request passed the full endpoint");

    gate.open();
    while let Some(joined) = set.join_next().await {
        let (i, outcome) = joined.unwrap();
        let (status, _, body) = outcome.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body:?}");
    }
    let order = gate.order.lock().unwrap().clone();
    let expected: Vec<String> = std::iter::once("/hold".to_string())
        .chain((1..=QUEUED).map(|i| format!("/page?n={i}")))
        .collect();
    assert_eq!(order, expected, "queued requests were not admitted FIFO");
    assert_eq!(queue_waits(&tb).await, QUEUED as f64);
    assert_eq!(queue_depth(&tb).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_gets_503_with_retry_after() {
    // Capacity 2 × 1, queue 4: of 20 held requests 2 are sent, 4 wait, 14 are refused.
    let (backends, gate) = gated(&["a", "b"]).await;
    let extra =
        "    maxInFlightPerEndpoint: 1\n    queue:\n      maxLength: 4\n      timeout: 10s\n";
    let tb = TestBalancer::start(&config(&[&backends[0], &backends[1]], extra)).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let (tx, url) = (tx.clone(), tb.url(&format!("/hold?n={i}")));
        tasks.spawn(async move {
            let req = Request::get(url).body(Full::default()).unwrap();
            let _ = tx.send((i, send(&client(), req).await));
        });
    }
    drop(tx);

    // Nothing finishes while the gate is closed: the refusals come first.
    for _ in 0..14 {
        let (i, outcome) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("fewer than 14 requests were refused")
            .unwrap();
        let (status, headers, body) = outcome.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_retry_503(status, &headers, &body, "queue is full");
    }
    assert_eq!(rejected(&tb, "full").await, 14.0);
    assert_eq!(queue_depth(&tb).await, 4.0);
    // The two admitted requests may still be connecting when the refusals
    // come back; wait for them, then make sure no third one follows.
    eventually(Duration::from_secs(10), || async { gate.started() >= 2 })
        .await
        .expect("the two admitted requests never reached the backends");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gate.started(),
        2,
        "more requests were sent than the endpoints' limits"
    );
    assert!(
        rx.try_recv().is_err(),
        "an admitted request finished while held"
    );

    gate.open();
    let mut admitted = 0;
    while let Some((i, outcome)) = rx.recv().await {
        let (status, _, body) = outcome.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "admitted request {i}: {body:?}");
        admitted += 1;
    }
    assert_eq!(admitted, 6);
    assert_eq!(backends[0].hits() + backends[1].hits(), 6);
    assert_eq!(rejected(&tb, "full").await, 14.0);
    assert_eq!(rejected(&tb, "timeout").await, 0.0);
    assert_eq!(queue_depth(&tb).await, 0.0);
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let (backends, gate) = gated(&["only"]).await;
    let extra =
        "    maxInFlightPerEndpoint: 1\n    queue:\n      maxLength: 10\n      timeout: 200ms\n";
    let tb = TestBalancer::start(&config(&[&backends[0]], extra)).await;

    // A very slow request holds the only slot.
    let mut held = JoinSet::new();
    spawn_get(&mut held, 0, tb.url("/hold"));
    eventually(Duration::from_secs(10), || async { gate.started() == 1 })
        .await
        .expect("the slow request never reached the backend");

    // Three more wait in the queue, and give up after its timeout.
    let mut waiting = JoinSet::new();
    for i in 1..=3 {
        waiting.spawn({
            let url = tb.url(&format!("/page?n={i}"));
            async move {
                let started = Instant::now();
                let req = Request::get(url).body(Full::default()).unwrap();
                let outcome = send(&client(), req).await;
                (i, outcome, started.elapsed())
            }
        });
    }
    while let Some(joined) = waiting.join_next().await {
        let (i, outcome, waited) = joined.unwrap();
        let (status, headers, body) = outcome.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_retry_503(status, &headers, &body, "queue timeout");
        assert!(
            waited >= Duration::from_millis(200),
            "request {i} refused after {waited:?}, before the queue timeout"
        );
    }
    assert_eq!(rejected(&tb, "timeout").await, 3.0);
    assert_eq!(rejected(&tb, "full").await, 0.0);
    assert_eq!(queue_waits(&tb).await, 3.0);
    assert_eq!(queue_depth(&tb).await, 0.0);
    assert_eq!(gate.started(), 1, "a timed-out request reached the backend");

    // The slow request completes, and the slot it frees is not lost to the
    // requests that gave up: the next one is served.
    gate.open();
    let (_, outcome) = held.join_next().await.unwrap().unwrap();
    assert_eq!(outcome.unwrap().0, 200);
    let (status, body) = get(&client(), &tb.url("/page?n=4")).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "only"));
    assert_eq!(gate.started(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_requests_over_the_limit_get_503_at_once() {
    let (backends, gate) = gated(&["only"]).await;
    let tb = TestBalancer::start(&config(&[&backends[0]], "    maxInFlightPerEndpoint: 1\n")).await;

    let mut held = JoinSet::new();
    spawn_get(&mut held, 0, tb.url("/hold"));
    eventually(Duration::from_secs(10), || async { gate.started() == 1 })
        .await
        .expect("the first request never reached the backend");

    let c = client();
    for i in 1..=3 {
        let req = Request::get(tb.url(&format!("/page?n={i}")))
            .body(Full::default())
            .unwrap();
        let (status, headers, body) = send(&c, req).await.unwrap();
        assert_retry_503(status, &headers, &body, "is at capacity");
    }
    assert_eq!(rejected(&tb, "at_capacity").await, 3.0);
    assert_eq!(rejected(&tb, "full").await, 0.0);
    assert_eq!(rejected(&tb, "timeout").await, 0.0);
    assert_eq!(queue_waits(&tb).await, 0.0, "a pool without a queue queued");
    assert_eq!(gate.started(), 1, "a request went over the limit");

    gate.open();
    let (_, outcome) = held.join_next().await.unwrap().unwrap();
    assert_eq!(outcome.unwrap().0, 200);
    // The limit is on requests in flight, not a ban: with the slot free the next one passes.
    let (status, body) = get(&c, &tb.url("/page?n=4")).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "only"));
    assert_eq!(rejected(&tb, "at_capacity").await, 3.0);
}
