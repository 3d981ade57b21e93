//! Where sticky sessions are born, over real sockets: by live sessions,
//! waiting for pods that are starting (bounded by `maxWait`), and moving off
//! an overloaded pod only when sessions live in a shared store.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, TestBalancer, client, config, metric, send};
use http::{Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A learner: the balancer's cookie, sent back as a browser would.
#[derive(Debug, Default, Clone)]
struct Learner {
    cookie: Option<String>,
}

impl Learner {
    /// GETs `url`; returns the serving backend's name and how long it took.
    async fn read(&mut self, client: &HttpClient, url: &str) -> (String, Duration) {
        let mut req = Request::get(url);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c.as_str());
        }
        let started = Instant::now();
        let (status, headers, body) = send(client, req.body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        if let Some(set) = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("usher_affinity="))
        {
            self.cookie = Some(set.split(';').next().unwrap().to_string());
        }
        (body, started.elapsed())
    }
}

fn file_config(file: &std::path::Path, pool_extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      file: {{path: \"{}\", interval: 100ms}}\n{pool_extra}",
        file.display()
    )
}

#[tokio::test]
async fn new_sessions_go_to_the_pod_with_the_fewest() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let tb = TestBalancer::start(&config(&[&a, &b], "    stickySessions: {}\n")).await;
    let c = client();
    let mut learners = vec![Learner::default(); 20];
    let mut born: BTreeMap<String, usize> = BTreeMap::new();
    for l in &mut learners {
        let (pod, _) = l.read(&c, &tb.url("/")).await;
        *born.entry(pod).or_default() += 1;
    }
    // Idle pods tie on in-flight requests; sessions do not.
    assert_eq!(born, BTreeMap::from([("a".into(), 10), ("b".into(), 10)]));
    for (name, backend) in [("a", &a), ("b", &b)] {
        let labels = [format!("endpoint=\"{}\"", backend.address())];
        assert_eq!(
            metric(&tb, "usher_balancer_endpoint_sessions", &labels).await,
            Some(10.0),
            "sessions on {name}"
        );
    }
    let status = common::endpoint_json(&tb, "web", &a.address())
        .await
        .unwrap();
    assert_eq!(status["sessions"], 10, "{status}");
    // Returning learners stay where they are and count once.
    for l in &mut learners {
        l.read(&c, &tb.url("/")).await;
    }
    let labels = [format!("endpoint=\"{}\"", a.address())];
    assert_eq!(
        metric(&tb, "usher_balancer_endpoint_sessions", &labels).await,
        Some(10.0)
    );
}

#[tokio::test]
async fn a_new_session_waits_for_a_starting_pod_and_is_born_there() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let starting = format!(
        "- \"{}\"\n- {{address: \"{}\", starting: true}}\n",
        a.address(),
        b.address()
    );
    std::fs::write(&file, &starting).unwrap();
    let tb = TestBalancer::start(&file_config(
        &file,
        "    stickySessions: {sessionPlacement: {maxWait: 10s}}\n",
    ))
    .await;
    let c = client();
    assert_eq!(
        metric(
            &tb,
            "usher_balancer_pool_starting_endpoints",
            &["pool=\"web\""]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        common::status(&tb).await["pools"][0]["startingEndpoints"],
        1
    );
    // One session over a ready and a starting pod: a's share is a half, so
    // the first session waits for b, which turns ready 400 ms later.
    let mut first = Learner::default();
    let url = tb.url("/");
    let waiting = tokio::spawn(async move {
        let c = client();
        let got = first.read(&c, &url).await;
        (first, got)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "the new session did not wait");
    std::fs::write(
        &file,
        format!("- \"{}\"\n- \"{}\"\n", a.address(), b.address()),
    )
    .unwrap();
    let (mut first, (pod, took)) = waiting.await.unwrap();
    assert_eq!(pod, "b", "born on the pod that was starting");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        metric(
            &tb,
            "usher_balancer_session_births_held_total",
            &["pool=\"web\""]
        )
        .await,
        Some(1.0)
    );
    // Nothing starts now: the next session goes to a (fewer sessions) at once.
    let (pod, took) = Learner::default().read(&c, &tb.url("/")).await;
    assert_eq!(pod, "a");
    assert!(took < Duration::from_millis(300), "{took:?}");
    // Established sessions never wait: with a pod starting again, the first
    // learner is served by b at once.
    std::fs::write(&file, starting.replace(&b.address(), "127.0.0.1:9")).unwrap();
    let file_b = format!(
        "- \"{}\"\n- \"{}\"\n- {{address: \"127.0.0.1:9\", starting: true}}\n",
        a.address(),
        b.address()
    );
    std::fs::write(&file, file_b).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (pod, took) = first.read(&c, &tb.url("/")).await;
    assert_eq!(pod, "b");
    assert!(took < Duration::from_millis(300), "{took:?}");
}

#[tokio::test]
async fn the_longest_wait_ends_on_a_ready_pod() {
    let a = Backend::named("a").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(
        &file,
        format!(
            "- \"{}\"\n- {{address: \"127.0.0.1:9\", starting: true}}\n",
            a.address()
        ),
    )
    .unwrap();
    let tb = TestBalancer::start(&file_config(
        &file,
        "    stickySessions: {sessionPlacement: {maxWait: 600ms}}\n",
    ))
    .await;
    let c = client();
    assert_eq!(Learner::default().read(&c, &tb.url("/")).await.0, "a");
    let (pod, took) = Learner::default().read(&c, &tb.url("/")).await;
    assert_eq!(pod, "a");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // With `maxWait: 0s` nothing waits.
    tb.rewrite(&file_config(
        &file,
        "    stickySessions: {sessionPlacement: {maxWait: 0s}}\n",
    ));
    tb.balancer.reload().unwrap();
    let (_, took) = Learner::default().read(&c, &tb.url("/")).await;
    assert!(took < Duration::from_millis(300), "{took:?}");
}

/// Sends `n` concurrent first-time requests of `learner` and returns the
/// backends that served them, and the cookies they set.
async fn burst(tb: &TestBalancer, learner: &Learner, n: usize) -> Vec<(String, Option<String>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut l = learner.clone();
            let url = tb.url("/");
            tokio::spawn(async move {
                // Spaced so each sees the ones before it in flight.
                tokio::time::sleep(Duration::from_millis(60 * i as u64)).await;
                let before = l.cookie.clone();
                let (pod, _) = l.read(&client(), &url).await;
                (pod, (l.cookie != before).then(|| l.cookie.unwrap()))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn shared_sessions_leave_an_overloaded_pod_and_local_ones_never_do() {
    for (mobility, moves) in [("local", false), ("shared", true)] {
        let a = Backend::slow("a", Duration::from_millis(800)).await;
        let b = Backend::slow("b", Duration::from_millis(800)).await;
        let extra = if moves {
            format!("    stickySessions: {{mobility: {mobility}, balanceFactor: 1.5}}\n")
        } else {
            format!("    stickySessions: {{mobility: {mobility}}}\n")
        };
        let tb = TestBalancer::start(&config(&[&a, &b], &extra)).await;
        let mut learner = Learner::default();
        let (home, _) = learner.read(&client(), &tb.url("/")).await;
        // Four pages of one session at once: the 4th finds its pod with 3
        // in flight and the other idle (limit ceil(1.5 * 4 / 2) = 3).
        let served = burst(&tb, &learner, 4).await;
        let pods: Vec<&str> = served.iter().map(|(p, _)| p.as_str()).collect();
        let away: Vec<_> = served.iter().filter(|(p, _)| *p != home).collect();
        let moved = metric(
            &tb,
            "usher_balancer_sessions_moved_total",
            &["pool=\"web\""],
        )
        .await
        .unwrap();
        if moves {
            assert_eq!(away.len(), 1, "{mobility}: {pods:?} (home {home})");
            assert!(
                away[0].1.is_some(),
                "the moved session's cookie names its new pod"
            );
            assert_eq!(moved, 1.0);
        } else {
            assert!(away.is_empty(), "{mobility}: {pods:?} (home {home})");
            assert_eq!(moved, 0.0);
        }
    }
}
