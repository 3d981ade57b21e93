//! Sticky sessions across balancer replicas: two balancers with one config
//! behind a TCP round-robin (standing in for the cloud load balancer or the
//! Service), learners with cookie jars, and every learner's next request on
//! the other replica. In both sticky modes no learner changes pod, across a
//! reload, a scale-out of the pods and the restart of a replica.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestBalancer, text};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "shared-sticky-secret-0123456789";

/// A pod that starts a `MoodleSession` on first visit and answers its name.
async fn pod(name: &'static str) -> Backend {
    let next = Arc::new(AtomicUsize::new(0));
    Backend::start(move |req| {
        let next = next.clone();
        async move {
            let has = req
                .headers()
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("MoodleSession="));
            let mut resp = text(200, name);
            if !has {
                let id = format!("{name}-{}", next.fetch_add(1, Ordering::SeqCst));
                resp.headers_mut().append(
                    "set-cookie",
                    format!("MoodleSession={id}; Path=/; HttpOnly")
                        .parse()
                        .unwrap(),
                );
            }
            resp
        }
    })
    .await
}

/// A TCP round-robin in front of the replicas: each new connection goes to
/// the next one.
struct Splitter {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Splitter {
    async fn start(targets: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(targets));
        let t = targets.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let target = {
                    let list = t.lock().unwrap();
                    next += 1;
                    list[next % list.len()]
                };
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            addr,
            targets,
            task,
        }
    }
}

impl Drop for Splitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A learner's browser: a cookie jar, and a new connection per request so
/// consecutive requests alternate between replicas.
#[derive(Default)]
struct Learner {
    jar: HashMap<String, String>,
    pod: Option<String>,
}

impl Learner {
    async fn visit(&mut self, url: &str) -> String {
        let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let mut req = Request::get(url);
        if !self.jar.is_empty() {
            let cookie: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookie.join("; "));
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            http.request(req.body(Full::default()).unwrap()),
        )
        .await
        .expect("timed out")
        .unwrap();
        assert_eq!(resp.status(), 200);
        for v in resp.headers().get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.jar.insert(k.to_string(), v.to_string());
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

fn yaml(pods: &[&Backend], sticky: &str, extra: &str) -> String {
    let list: String = pods
        .iter()
        .map(|p| format!("        - \"{}\"\n", p.address()))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nroutes:\n  - pool: moodle\npools:\n  moodle:\n    endpoints:\n      static:\n{list}    stickySessions: {sticky}\n{extra}"
    )
}

async fn replica(text: &str) -> TestBalancer {
    TestBalancer::start(text).await
}

fn public(tb: &TestBalancer) -> SocketAddr {
    tb.balancer.listener_addr("public").unwrap()
}

/// Every learner visits once more; returns how many landed on another pod.
async fn moved(learners: &mut [Learner], url: &str) -> usize {
    let mut moved = 0;
    for l in learners.iter_mut() {
        let got = l.visit(url).await;
        match &l.pod {
            None => l.pod = Some(got),
            Some(p) if *p != got => moved += 1,
            Some(_) => {}
        }
    }
    moved
}

async fn sessions_hold(sticky: &str) {
    let (a, b, c) = (pod("a").await, pod("b").await, pod("c").await);
    let config = yaml(&[&a, &b, &c], sticky, "");
    let r1 = replica(&config).await;
    let mut r2 = replica(&config).await;
    let splitter = Splitter::start(vec![public(&r1), public(&r2)]).await;
    let url = format!("http://{}/course/view.php?id=7", splitter.addr);
    let mut learners: Vec<Learner> = (0..30).map(|_| Learner::default()).collect();

    // First visits (sessions born), then the next request on the other replica.
    assert_eq!(moved(&mut learners, &url).await, 0);
    let pods: std::collections::HashSet<_> =
        learners.iter().map(|l| l.pod.clone().unwrap()).collect();
    assert!(pods.len() > 1, "all learners on one pod: {pods:?}");
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: second visits"
    );
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: third visits"
    );

    // A reload of both replicas.
    let reloaded = yaml(&[&a, &b, &c], sticky, "    drainTimeout: 45s\n");
    for r in [&r1, &r2] {
        r.rewrite(&reloaded);
        r.balancer.reload().unwrap();
    }
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: after a reload"
    );

    // The pods scale out 3 -> 5.
    let (d, e) = (pod("d").await, pod("e").await);
    let scaled = yaml(&[&a, &b, &c, &d, &e], sticky, "    drainTimeout: 45s\n");
    for r in [&r1, &r2] {
        r.rewrite(&scaled);
        r.balancer.reload().unwrap();
    }
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: after a scale-out"
    );

    // Replica 2 restarts: a new process with the same config.
    r2.balancer.shutdown().await;
    r2 = replica(&scaled).await;
    *splitter.targets.lock().unwrap() = vec![public(&r1), public(&r2)];
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: after a replica restart"
    );
    assert_eq!(
        moved(&mut learners, &url).await,
        0,
        "{sticky}: after a replica restart"
    );

    // New learners after the scale-out reach the new pods too.
    let mut late: Vec<Learner> = (0..20).map(|_| Learner::default()).collect();
    moved(&mut late, &url).await;
    assert_eq!(moved(&mut late, &url).await, 0);
    assert!(
        late.iter()
            .any(|l| matches!(l.pod.as_deref(), Some("d" | "e"))),
        "no new session reached the new pods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookie_sessions_hold_across_replicas() {
    sessions_hold(&format!("{{cookie: usher_affinity, secret: {SECRET}}}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_cookie_sessions_hold_across_replicas() {
    sessions_hold(&format!(
        "{{applicationCookie: MoodleSession, secret: {SECRET}}}"
    ))
    .await;
}

/// A rotated secret: cookies signed with the previous one are still
/// honoured (for one cookie lifetime), and re-signed with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotation_moves_no_learner() {
    let (a, b, c) = (pod("a").await, pod("b").await, pod("c").await);
    let old = format!("{{cookie: usher_affinity, secret: {SECRET}}}");
    let r1 = replica(&yaml(&[&a, &b, &c], &old, "")).await;
    let url = format!("http://{}/", public(&r1));
    let mut learners: Vec<Learner> = (0..20).map(|_| Learner::default()).collect();
    assert_eq!(moved(&mut learners, &url).await, 0);
    let before: Vec<String> = learners
        .iter()
        .map(|l| l.jar["usher_affinity"].clone())
        .collect();
    let new = "{cookie: usher_affinity, secret: rotated-secret-abcdefghijklmnop}";
    r1.rewrite(&yaml(&[&a, &b, &c], new, ""));
    r1.balancer.reload().unwrap();
    assert_eq!(moved(&mut learners, &url).await, 0, "after the rotation");
    let after: Vec<String> = learners
        .iter()
        .map(|l| l.jar["usher_affinity"].clone())
        .collect();
    assert!(
        before.iter().zip(&after).all(|(b, a)| b != a),
        "cookies were not re-signed"
    );
    // A second replica that only knows the new secret honours the re-signed cookies.
    let r2 = replica(&yaml(&[&a, &b, &c], new, "")).await;
    let url2 = format!("http://{}/", public(&r2));
    assert_eq!(
        moved(&mut learners, &url2).await,
        0,
        "on a replica with only the new secret"
    );
}
