//! Hot reload over real sockets: no failed requests while the config changes,
//! live state kept across reloads, invalid files rejected, removed endpoints drained.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, TestBalancer, client, eventually, gated, get};
use serde_json::Value;
use tokio::task::JoinHandle;
use usher_balancer::Options;

/// A config with one plain listener, an admin listener and pool `web` with
/// `(backend, weight)` endpoints, plus extra pool YAML (indented 4 spaces).
fn weighted(endpoints: &[(&Backend, u32)], pool_extra: &str) -> String {
    let addrs: Vec<String> = endpoints.iter().map(|(b, _)| b.address()).collect();
    let pairs: Vec<(&String, u32)> = addrs
        .iter()
        .zip(endpoints)
        .map(|(a, (_, w))| (a, *w))
        .collect();
    format!("{}{pool_extra}", weighted_addrs(&pairs))
}

/// Endpoints of pool `web` per `/status`.
async fn web_endpoints(tb: &TestBalancer) -> Vec<Value> {
    let s = common::status(tb).await;
    s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .map(|p| p["endpoints"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// One endpoint of pool `web` per `/status`, if listed.
async fn web_endpoint(tb: &TestBalancer, b: &Backend) -> Option<Value> {
    web_endpoints(tb)
        .await
        .into_iter()
        .find(|e| e["address"] == b.address().as_str())
}

/// `(address, weight)` of every endpoint of `web` that is not draining.
async fn serving(tb: &TestBalancer) -> BTreeSet<(String, u64)> {
    web_endpoints(tb)
        .await
        .iter()
        .filter(|e| e["state"] != "draining")
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Same as [`weighted`] for raw addresses, without extra pool YAML.
fn weighted_addrs(endpoints: &[(&String, u32)]) -> String {
    let list: String = endpoints
        .iter()
        .map(|(a, w)| format!("        - address: \"{a}\"\n          weight: {w}\n"))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n{list}"
    )
}

/// Replaces `path` atomically (write a sibling, rename over), as Kubernetes
/// volume updates and most editors do; the watcher never sees a half-written file.
fn replace_file(dir: &std::path::Path, path: &std::path::Path, text: &str) {
    let tmp = dir.join(".balancer.yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn expected(endpoints: &[(&Backend, u32)]) -> BTreeSet<(String, u64)> {
    endpoints
        .iter()
        .map(|(b, w)| (b.address(), u64::from(*w)))
        .collect()
}

/// The value of the sample `series` (name with labels) in `/metrics`; `None` when absent.
async fn metric(tb: &TestBalancer, series: &str) -> Option<f64> {
    let (status, body) = get(&client(), &tb.admin_url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}

const RELOAD_OK: &str = "usher_balancer_config_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "usher_balancer_config_reloads_total{result=\"failure\"}";
const LAST_RELOAD_OK: &str = "usher_balancer_config_last_reload_successful";

/// Concurrent clients sending GETs until stopped; every non-200 or error is kept.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let workers = (0..clients)
            .map(|_| {
                let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut failures = Vec::new();
                    // Bounded: at most 20k requests per client.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match get(&c, &url).await {
                            Ok((status, _)) if status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok((status, body)) => failures.push(format!("{status}: {body}")),
                            Err(e) => failures.push(e),
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { stop, ok, workers }
    }

    /// Waits until `n` more requests have succeeded (the load keeps flowing).
    async fn progress(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let flowed = eventually(Duration::from_secs(10), || async {
            self.ok.load(Ordering::SeqCst) >= target
        })
        .await;
        assert!(
            flowed.is_some(),
            "the load stalled at {} successful requests",
            self.ok.load(Ordering::SeqCst)
        );
    }

    /// Stops the clients; returns the successes and every failure.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for w in self.workers {
            failures.extend(w.await.unwrap());
        }
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// The steps both load tests go through: add, reweight, remove, reweight.
struct Steps {
    a: Backend,
    b: Backend,
    c: Backend,
    d: Backend,
}

impl Steps {
    async fn new() -> Self {
        let slow = |n| Backend::slow(n, Duration::from_millis(2));
        Self {
            a: slow("a").await,
            b: slow("b").await,
            c: slow("c").await,
            d: slow("d").await,
        }
    }

    fn initial(&self) -> Vec<(&Backend, u32)> {
        vec![(&self.a, 100), (&self.b, 100)]
    }

    fn changes(&self) -> Vec<Vec<(&Backend, u32)>> {
        vec![
            // Two endpoints added.
            vec![
                (&self.a, 100),
                (&self.b, 100),
                (&self.c, 100),
                (&self.d, 100),
            ],
            // Weights changed.
            vec![
                (&self.a, 50),
                (&self.b, 300),
                (&self.c, 100),
                (&self.d, 200),
            ],
            // `a` removed.
            vec![(&self.b, 300), (&self.c, 100), (&self.d, 200)],
            // Weights changed again.
            vec![(&self.b, 100), (&self.c, 500), (&self.d, 100)],
        ]
    }
}

/// Drives `Steps` under 4 concurrent clients; `apply` makes one rewritten file take effect.
async fn reload_under_load<F, Fut>(options: Options, apply: F)
where
    F: Fn(Arc<TestBalancer>, BTreeSet<(String, u64)>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let steps = Steps::new().await;
    let tb = Arc::new(TestBalancer::start_with(&weighted(&steps.initial(), ""), options).await);
    assert_eq!(serving(&tb).await, expected(&steps.initial()));

    let load = Load::start(tb.url("/course/view.php?id=7"), 4);
    load.progress(50).await;
    let changes = steps.changes();
    let mut a_hits_after_removal = None;
    for change in &changes {
        replace_file(tb.dir.path(), &tb.path, &weighted(change, ""));
        apply(tb.clone(), expected(change)).await;
        assert_eq!(serving(&tb).await, expected(change));
        if !change.iter().any(|(b, _)| b.addr == steps.a.addr) && a_hits_after_removal.is_none() {
            // Requests that picked `a` before the swap finish within its 2 ms.
            tokio::time::sleep(Duration::from_millis(300)).await;
            a_hits_after_removal = Some(steps.a.hits());
        }
        // Keep each config under load for a while (about 2 s in all).
        tokio::time::sleep(Duration::from_millis(400)).await;
        load.progress(50).await;
    }
    let (ok, failures) = load.finish().await;

    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok >= 250, "only {ok} requests were sent");
    // The added endpoints took traffic, the removed one took none after removal.
    assert!(
        steps.c.hits() > 0 && steps.d.hits() > 0,
        "c {} d {}",
        steps.c.hits(),
        steps.d.hits()
    );
    assert_eq!(
        Some(steps.a.hits()),
        a_hits_after_removal,
        "a removed endpoint got new requests"
    );
    let total = steps.a.hits() + steps.b.hits() + steps.c.hits() + steps.d.hits();
    assert_eq!(
        total, ok,
        "every successful request was served by exactly one backend"
    );
    // One successful load at start, one per change; none failed.
    assert_eq!(
        metric(&tb, RELOAD_OK).await,
        Some(1.0 + changes.len() as f64)
    );
    assert_eq!(metric(&tb, RELOAD_FAILED).await.unwrap_or(0.0), 0.0);
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(1.0));
    // The removed endpoint is forgotten once drained.
    let a = steps.a.address();
    let gone = eventually(Duration::from_secs(5), || async {
        web_endpoints(&tb)
            .await
            .iter()
            .all(|e| e["address"] != a.as_str())
    })
    .await;
    assert!(
        gone.is_some(),
        "the removed endpoint is still listed: {:?}",
        web_endpoints(&tb).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_call_under_load_fails_no_request() {
    reload_under_load(
        Options {
            watch_interval: None,
            ..Default::default()
        },
        |tb, _| async move {
            tb.balancer.reload().unwrap_or_else(|e| panic!("{e}"));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watcher_under_load_fails_no_request() {
    reload_under_load(
        Options {
            watch_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        },
        |tb, want| async move {
            let seen = eventually(Duration::from_secs(10), || async {
                serving(&tb).await == want
            })
            .await;
            assert!(
                seen.is_some(),
                "the watcher did not apply the rewritten file: {:?}",
                serving(&tb).await
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_survive_a_reload() {
    let (x, gate) = gated("x").await;
    let y = Backend::named("y").await;
    let tb = TestBalancer::start(&weighted(&[(&x, 100)], "")).await;

    let url = tb.url("/mod/quiz/attempt.php");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let arrived = eventually(Duration::from_secs(5), || async { x.hits() == 1 }).await;
    assert!(arrived.is_some(), "the slow request never reached x");
    assert_eq!(web_endpoint(&tb, &x).await.unwrap()["inFlight"], 1);

    // Reload with a change: y added, x reweighted.
    tb.rewrite(&weighted(
        &[(&x, 200), (&y, 100)],
        "    timeouts:\n      connect: 1s\n",
    ));
    tb.balancer.reload().unwrap();
    let after = web_endpoint(&tb, &x).await.unwrap();
    assert_eq!(after["inFlight"], 1, "{after}");
    assert_eq!(after["weight"], 200, "{after}");
    assert_eq!(after["state"], "healthy", "{after}");
    assert_eq!(web_endpoint(&tb, &y).await.unwrap()["inFlight"], 0);

    // The balancer itself still counts it: least-connections sends new requests to idle y.
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            get(&c, &tb.url("/")).await.unwrap(),
            (http::StatusCode::OK, "y".to_string())
        );
    }
    assert_eq!(x.hits(), 1);

    gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        (http::StatusCode::OK, "x".to_string())
    );
    let zero = eventually(Duration::from_secs(5), || async {
        web_endpoint(&tb, &x).await.unwrap()["inFlight"] == 0
    })
    .await;
    assert!(zero.is_some(), "the in-flight count never went back to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_old_config_serving() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let tb = TestBalancer::start(&weighted(&[(&a, 100), (&b, 100)], "")).await;
    let before = serving(&tb).await;
    assert_eq!(metric(&tb, RELOAD_OK).await, Some(1.0));
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(1.0));

    // A typo in a field name: the whole file is rejected, `c` is not added.
    tb.rewrite(&weighted(
        &[(&a, 100), (&b, 100), (&c, 100)],
        "    healthCheck:\n      intervall: 2s\n",
    ));
    let e = tb.balancer.reload().unwrap_err();
    assert_eq!(e.field, "pools.web.healthCheck.intervall", "{e}");
    assert!(e.problem.contains("unknown field `intervall`"), "{e}");
    assert_eq!(e.file, tb.path);

    let http = client();
    for _ in 0..40 {
        let (status, body) = get(&http, &tb.url("/")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body == "a" || body == "b", "{body}");
    }
    assert_eq!(c.hits(), 0);
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(serving(&tb).await, before);
    assert_eq!(metric(&tb, RELOAD_FAILED).await, Some(1.0));
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(0.0));
    assert_eq!(metric(&tb, RELOAD_OK).await, Some(1.0));

    // A route to a pool that does not exist.
    let dangling = weighted(&[(&c, 100)], "").replace(
        "routes:\n  - pool: web\n",
        "routes:\n  - pool: web\n  - pathPrefix: /moodle/\n    pool: moodle\n",
    );
    tb.rewrite(&dangling);
    let e = tb.balancer.reload().unwrap_err();
    assert_eq!(e.field, "routes[1].pool", "{e}");
    assert!(e.problem.contains("no pool named `moodle`"), "{e}");
    assert_eq!(get(&http, &tb.url("/moodle/")).await.unwrap().0, 200);
    assert_eq!(c.hits(), 0);
    assert_eq!(serving(&tb).await, before);
    assert_eq!(metric(&tb, RELOAD_FAILED).await, Some(2.0));
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(0.0));

    // A valid file afterwards is applied and clears the failure gauge.
    tb.rewrite(&weighted(&[(&c, 100)], ""));
    tb.balancer.reload().unwrap();
    assert_eq!(
        get(&http, &tb.url("/")).await.unwrap(),
        (http::StatusCode::OK, "c".to_string())
    );
    assert_eq!(metric(&tb, RELOAD_OK).await, Some(2.0));
    assert_eq!(metric(&tb, RELOAD_FAILED).await, Some(2.0));
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_rejects_an_invalid_file_once_and_keeps_serving() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tb = TestBalancer::start_with(
        &weighted(&[(&a, 100)], ""),
        Options {
            watch_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .await;

    tb.rewrite(&weighted(&[(&b, 100)], "    retries:\n      attempts: 9\n"));
    let rejected = eventually(Duration::from_secs(10), || async {
        metric(&tb, RELOAD_FAILED).await.is_some()
    })
    .await;
    assert!(
        rejected.is_some(),
        "the watcher never tried the invalid file"
    );
    // Several more polls of the same content are not new failures.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&tb, RELOAD_FAILED).await, Some(1.0));
    assert_eq!(metric(&tb, LAST_RELOAD_OK).await, Some(0.0));
    let http = client();
    for _ in 0..5 {
        assert_eq!(
            get(&http, &tb.url("/")).await.unwrap(),
            (http::StatusCode::OK, "a".to_string())
        );
    }
    assert_eq!(b.hits(), 0);

    // Fixing the file is picked up.
    tb.rewrite(&weighted(&[(&b, 100)], "    retries:\n      attempts: 1\n"));
    let fixed = eventually(Duration::from_secs(10), || async {
        metric(&tb, LAST_RELOAD_OK).await == Some(1.0)
    })
    .await;
    assert!(fixed.is_some(), "the watcher never applied the fixed file");
    assert_eq!(
        get(&http, &tb.url("/")).await.unwrap(),
        (http::StatusCode::OK, "b".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains_then_disappears() {
    let (x, gate) = gated("x").await;
    let y = Backend::named("y").await;
    let tb = TestBalancer::start(&weighted(&[(&x, 100)], "")).await;

    let url = tb.url("/pluginfile.php/big.zip");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let arrived = eventually(Duration::from_secs(5), || async { x.hits() == 1 }).await;
    assert!(arrived.is_some(), "the slow request never reached x");

    tb.rewrite(&weighted(&[(&y, 100)], ""));
    tb.balancer.reload().unwrap();
    let draining = web_endpoint(&tb, &x)
        .await
        .expect("x is still listed while its request is in flight");
    assert_eq!(draining["state"], "draining", "{draining}");
    assert_eq!(draining["inFlight"], 1, "{draining}");

    // New requests never go to it: a draining endpoint is not a candidate.
    let http = client();
    for _ in 0..20 {
        assert_eq!(
            get(&http, &tb.url("/")).await.unwrap(),
            (http::StatusCode::OK, "y".to_string())
        );
    }
    assert_eq!(x.hits(), 1);
    // Past a sweep (every second), it is still listed: its request is not done.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(web_endpoint(&tb, &x).await.unwrap()["state"], "draining");

    gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        (http::StatusCode::OK, "x".to_string())
    );
    let gone = eventually(Duration::from_secs(5), || async {
        web_endpoint(&tb, &x).await.is_none()
    })
    .await;
    assert!(
        gone.is_some(),
        "the drained endpoint is still listed: {:?}",
        web_endpoint(&tb, &x).await
    );
    assert_eq!(x.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_back_while_draining_serves_again() {
    let (x, gate) = gated("x").await;
    let y = Backend::named("y").await;
    let tb = TestBalancer::start(&weighted(&[(&x, 100), (&y, 100)], "")).await;

    // Occupy x (y stays idle, so the next request goes to y only if x is busy).
    let url = tb.url("/");
    let slow = tokio::spawn(async move {
        let c = client();
        // Repeat until one lands on x (ties are broken at random); bounded.
        for _ in 0..50 {
            let r = get(&c, &url).await;
            if matches!(&r, Ok((_, body)) if body == "x") {
                return r;
            }
        }
        Err("never reached x".to_string())
    });
    let arrived = eventually(Duration::from_secs(5), || async { x.hits() == 1 }).await;
    assert!(arrived.is_some(), "no request reached x");

    tb.rewrite(&weighted(&[(&y, 100)], ""));
    tb.balancer.reload().unwrap();
    assert_eq!(web_endpoint(&tb, &x).await.unwrap()["state"], "draining");
    tb.rewrite(&weighted(&[(&x, 100), (&y, 100)], ""));
    tb.balancer.reload().unwrap();
    let revived = web_endpoint(&tb, &x).await.unwrap();
    assert_eq!(revived["state"], "healthy", "{revived}");
    assert_eq!(revived["inFlight"], 1, "{revived}");

    gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        (http::StatusCode::OK, "x".to_string())
    );
    // Past a sweep it is still there and takes requests again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(web_endpoint(&tb, &x).await.unwrap()["state"], "healthy");
    gate.add_permits(100);
    let http = client();
    for _ in 0..40 {
        assert_eq!(get(&http, &tb.url("/")).await.unwrap().0, 200);
    }
    assert!(x.hits() > 1, "x got no request after it was added back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_ends_on_the_last_of_rapid_rewrites() {
    // Files replaced (atomically) faster than they are polled: whatever the
    // watcher loads in between, once writing stops it must serve the last one.
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let tb = Arc::new(
        TestBalancer::start_with(
            &weighted(&[(&a, 1)], ""),
            Options {
                watch_interval: Some(Duration::from_millis(1)),
                ..Default::default()
            },
        )
        .await,
    );
    let (a_addr, b_addr) = (a.address(), b.address());
    for round in 0..10u32 {
        let (dir, path, a_addr, b_addr) = (
            tb.dir.path().to_path_buf(),
            tb.path.clone(),
            a_addr.clone(),
            b_addr.clone(),
        );
        // `b`'s weight marks the round: no content repeats an earlier round's.
        let last = tokio::task::spawn_blocking(move || {
            let mut last = BTreeSet::new();
            for w in 1..=200u32 {
                let text = weighted_addrs(&[(&a_addr, w), (&b_addr, 2 + round)]);
                replace_file(&dir, &path, &text);
                last = [
                    (a_addr.clone(), u64::from(w)),
                    (b_addr.clone(), u64::from(2 + round)),
                ]
                .into();
                std::thread::sleep(Duration::from_micros(u64::from(w % 7) * 50));
            }
            last
        })
        .await
        .unwrap();
        let settled = eventually(Duration::from_secs(10), || async {
            serving(&tb).await == last
        })
        .await;
        assert!(
            settled.is_some(),
            "round {round}: serving {:?}, but the file says {last:?}",
            serving(&tb).await
        );
    }
    assert_eq!(metric(&tb, RELOAD_FAILED).await.unwrap_or(0.0), 0.0);
}
