//! A class starts: scale-out that logged-in learners actually get.
//!
//! Real processes on 127.0.0.1: a real balancer (in-process, from the
//! library), the real `usher-autoscaler local` binary, and `lms-sim` pods
//! with pod-local sessions (PHP file sessions: a learner sent to another pod
//! is logged out), 2 workers each and a fixed 100 ms page, so a pod serves
//! 20 pages/s. Learners keep their cookies and read a page every 0.5 s:
//! 8 of them, then 42 more at once.
//!
//! The same day runs twice, with sticky sessions and without, and the test
//! asserts the goal of issue 17 as ratios of the same run:
//! - surge p95 with stickiness ≤ 1.3 × the figure without;
//! - 0 learners logged out with stickiness;
//! - each pod started by the scale-out holds at least its fair share of
//!   the live sessions within 10 s of turning ready.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use usher_balancer::{Balancer, Options};

mod support;
use support::{Local, build_lms_sim, token};

/// Learners before the class starts, and those who arrive with it.
const EARLY: usize = 8;
const SURGE: usize = 42;
/// Time between a page and the learner's next request.
const THINK: Duration = Duration::from_millis(500);
/// The quiet part of the day, then the surge's measured part.
const QUIET_FOR: Duration = Duration::from_secs(6);
const SURGE_FOR: Duration = Duration::from_secs(20);
/// A pod started by the scale-out must hold its share within this long.
const SHARE_WITHIN: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// lms-sim's `/healthz` fails this long after start.
const COLD_START: &str = "1500ms";

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One page a learner read.
#[derive(Debug, Clone)]
struct Page {
    /// Since the surge began (negative before it).
    at: f64,
    latency: Duration,
    status: u16,
    /// The pod that served it (lms-sim names itself in the body).
    pod: String,
    /// lms-sim's `x-session`: `new`, `resumed` or `lost`.
    session: String,
}

/// A learner's cookie jar.
#[derive(Debug, Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn update(&mut self, headers: &http::HeaderMap) {
        for v in headers.get_all(http::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let Some((k, rest)) = v.split_once('=') else {
                continue;
            };
            let value = rest.split(';').next().unwrap_or_default().to_string();
            if v.contains("Max-Age=0") {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_string(), value);
            }
        }
    }
}

async fn learner(
    client: HttpClient,
    url: String,
    surge_at: Instant,
    stop: Arc<AtomicBool>,
    pages: Arc<Mutex<Vec<Vec<Page>>>>,
    me: usize,
) {
    let mut jar = Jar::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut req = http::Request::get(url.as_str());
        if !jar.0.is_empty() {
            req = req.header(http::header::COOKIE, jar.header());
        }
        let req = req.body(Empty::new()).unwrap();
        let started = Instant::now();
        let at = if started >= surge_at {
            started.duration_since(surge_at).as_secs_f64()
        } else {
            -surge_at.duration_since(started).as_secs_f64()
        };
        let page = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                jar.update(resp.headers());
                let session = resp
                    .headers()
                    .get("x-session")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let pod = String::from_utf8_lossy(&body)
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                Page {
                    at,
                    latency: started.elapsed(),
                    status,
                    pod,
                    session,
                }
            }
            other => Page {
                at,
                latency: started.elapsed(),
                status: 0,
                pod: format!("{other:?}"),
                session: String::new(),
            },
        };
        pages.lock().unwrap()[me].push(page);
        tokio::time::sleep(THINK).await;
    }
}

/// What one day showed.
#[derive(Debug)]
struct Day {
    surge_p95: Duration,
    surge_pages: usize,
    failed: usize,
    lost: usize,
    /// Per pod started by the scale-out: (pod, best of its sessions minus
    /// its fair share within SHARE_WITHIN of turning ready, as learners).
    shares: Vec<(String, i64)>,
    pods: usize,
    sessions_by_pod: BTreeMap<String, usize>,
    /// The balancer's placement gauges, sampled in the surge's first seconds.
    placement: Vec<String>,
    /// Seconds from the surge to each pod's listing as ready.
    ready_at: Vec<f64>,
    /// Seconds from the surge to each surge learner's first page, and where.
    births: Vec<(f64, String)>,
    log: String,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Starts the balancer of `config` (file watching off): it, and its
/// `public` and admin addresses.
async fn start_balancer(
    config: &Path,
) -> (
    std::sync::Arc<Balancer>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let balancer = Balancer::start(
        config,
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let public = balancer.listener_addr("public").unwrap();
    let admin = balancer.admin_addr().unwrap();
    (balancer, public, admin)
}

async fn run_day(lms_sim: &Path, sticky: bool) -> Day {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.json");
    write(&endpoints, "[]\n");
    let sticky_yaml = if sticky {
        "    stickySessions: {applicationCookie: MoodleSession, sessionPlacement: {maxWait: 5s}}\n"
    } else {
        ""
    };
    let balancer_yaml = dir.path().join("balancer.yaml");
    write(
        &balancer_yaml,
        &format!(
            "listeners:
  - name: public
    bind: \"127.0.0.1:0\"
admin:
  bind: \"127.0.0.1:0\"
routes:
  - pool: moodle
pools:
  moodle:
    endpoints:
      file: {{path: \"{}\", interval: 100ms}}
    timeouts: {{connect: 1s, response: 30s}}
    maxInFlightPerEndpoint: 2
    queue: {{maxLength: 1000, timeout: 30s}}
{sticky_yaml}",
            endpoints.display()
        ),
    );
    let (balancer, public, admin) = start_balancer(&balancer_yaml).await;
    let policy = dir.path().join("policy.yaml");
    write(
        &policy,
        &format!(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: class-start}}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: moodle
  minReplicas: 2
  maxReplicas: 8
  target: {{inFlightPerPod: 1.5}}
  surge: {{stableWindow: 10s, panicWindow: 1s, panicThreshold: 2.0}}
  behavior:
    # A class start: the whole scale-out at once (the HPA's default
    # scale-up, 4 pods or 100 % per 15 s, would add them in two steps).
    scaleUp:
      policies: [{{type: Pods, value: 6, periodSeconds: 1}}]
    scaleDown:
      stabilizationWindowSeconds: 300
  metricsSource: {{urls: ['http://{admin}/metrics'], interval: 250ms, timeout: 200ms}}
"
        ),
    );
    let token = token(if sticky { "ss1x" } else { "ss0x" });
    let mut scaler = Local {
        dir: dir.path(),
        policy: &policy,
        endpoints: &endpoints,
        drain: "2s",
        initial: 2,
        lms_sim,
        args: &[
            "--workers",
            "2",
            "--backlog",
            "1000",
            "--service-time",
            "100ms",
            "--distribution",
            "fixed",
            // A pod takes a while to start, as php-fpm and its opcache do.
            "--cold-start",
            COLD_START,
            "--pod-local-sessions",
            "--exit-with-parent",
        ],
        token: &token,
    }
    .start();
    scaler.metrics_addr().await;

    // Both initial pods ready and listed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = usher_balancer::discovery::file::read(&endpoints)
            .map(|v| v.iter().filter(|e| !e.starting).count())
            .unwrap_or(0);
        if ready >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "2 pods never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    let url = format!("http://{public}/course/view");
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(Mutex::new(vec![Vec::new(); EARLY + SURGE]));
    let surge_at = Instant::now() + QUIET_FOR;
    let mut tasks = Vec::new();
    for me in 0..EARLY {
        tasks.push(tokio::spawn(learner(
            client.clone(),
            url.clone(),
            surge_at,
            stop.clone(),
            pages.clone(),
            me,
        )));
        tokio::time::sleep(THINK / EARLY as u32).await;
    }

    // Which pods are ready when, from the endpoints file, every 100 ms.
    let mut ready_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut ready_count: Vec<(f64, usize)> = Vec::new();
    let watch = |ready_at: &mut BTreeMap<String, f64>, ready_count: &mut Vec<(f64, usize)>| {
        let now = Instant::now();
        let t = if now >= surge_at {
            now.duration_since(surge_at).as_secs_f64()
        } else {
            -surge_at.duration_since(now).as_secs_f64()
        };
        let listed = usher_balancer::discovery::file::read(&endpoints).unwrap_or_default();
        let ready: Vec<_> = listed.iter().filter(|e| !e.starting).collect();
        for e in &ready {
            ready_at.entry(e.address.clone()).or_insert(t);
        }
        ready_count.push((t, ready.len()));
    };
    while Instant::now() < surge_at {
        watch(&mut ready_at, &mut ready_count);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for me in EARLY..EARLY + SURGE {
        tasks.push(tokio::spawn(learner(
            client.clone(),
            url.clone(),
            surge_at,
            stop.clone(),
            pages.clone(),
            me,
        )));
    }
    let end = surge_at + SURGE_FOR;
    let mut placement: Vec<String> = Vec::new();
    while Instant::now() < end {
        watch(&mut ready_at, &mut ready_count);
        if placement.len() < 30
            && let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get(format!("http://{admin}/metrics").parse().unwrap()),
            )
            .await
            && let Ok(body) = resp.into_body().collect().await
        {
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            let pick = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next())
                    .unwrap_or("-")
                    .to_string()
            };
            let sessions: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("usher_balancer_endpoint_sessions{"))
                .map(|l| l.rsplit(' ').next().unwrap_or("-").to_string())
                .collect();
            placement.push(format!(
                "{:.2}s starting={} held={} queued={} sessions={sessions:?}",
                surge_at.elapsed().as_secs_f64(),
                pick("usher_balancer_pool_starting_endpoints{"),
                pick("usher_balancer_session_births_held_total{"),
                pick("usher_balancer_pool_queue_depth{"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(REQUEST_TIMEOUT * 2, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("learners stop within two request timeouts");
    let log = scaler.timeline();
    drop(scaler);
    balancer.shutdown().await;

    let pages = pages.lock().unwrap().clone();
    let all: Vec<&Page> = pages.iter().flatten().collect();
    let failed = all.iter().filter(|p| p.status != 200).count();
    let lost = all.iter().filter(|p| p.session == "lost").count();
    let mut surge: Vec<Duration> = all
        .iter()
        .filter(|p| p.at >= 0.0 && p.at < SURGE_FOR.as_secs_f64())
        .map(|p| p.latency)
        .collect();
    surge.sort();
    let surge_p95 = surge[(surge.len() * 95 / 100).min(surge.len() - 1)];

    // Where each learner's session lives at time t: the pod of its last
    // page served by then (a `lost` page starts a new session there).
    let session_at = |learner: &[Page], t: f64| -> Option<String> {
        learner
            .iter()
            .rfind(|p| p.status == 200 && p.at + p.latency.as_secs_f64() <= t)
            .map(|p| p.pod.clone())
    };
    // Pods started by the scale-out: those whose first page came after
    // the surge began (the 8 early learners reach both initial pods).
    let mut names_by_first_page: BTreeMap<String, f64> = BTreeMap::new();
    for p in &all {
        if p.status == 200 {
            let first = names_by_first_page.entry(p.pod.clone()).or_insert(p.at);
            *first = first.min(p.at);
        }
    }
    let new_pods: Vec<String> = names_by_first_page
        .iter()
        .filter(|(_, first)| **first >= 0.0)
        .map(|(n, _)| n.clone())
        .collect();
    let mut shares = Vec::new();
    for pod in &new_pods {
        let first = names_by_first_page[pod];
        let mut best = i64::MIN;
        let mut t = first;
        while t <= first + SHARE_WITHIN.as_secs_f64() && t <= SURGE_FOR.as_secs_f64() {
            let on_it = pages
                .iter()
                .filter(|l| session_at(l, t).as_deref() == Some(pod.as_str()))
                .count();
            let live = pages.iter().filter(|l| session_at(l, t).is_some()).count();
            let ready = ready_count
                .iter()
                .rfind(|(at, _)| *at <= t)
                .map_or(1, |(_, n)| *n)
                .max(1);
            best = best.max(on_it as i64 - (live / ready) as i64);
            t += 0.25;
        }
        shares.push((pod.clone(), best));
    }
    let mut sessions_by_pod = BTreeMap::new();
    for l in &pages {
        if let Some(pod) = session_at(l, SURGE_FOR.as_secs_f64() + 60.0) {
            *sessions_by_pod.entry(pod).or_insert(0) += 1;
        }
    }
    let mut births: Vec<(f64, String)> = pages[EARLY..]
        .iter()
        .filter_map(|l| l.first())
        .map(|p| {
            (
                ((p.at + p.latency.as_secs_f64()) * 100.0).round() / 100.0,
                p.pod.rsplit('-').next().unwrap_or_default().to_string(),
            )
        })
        .collect();
    births.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ready_times: Vec<f64> = ready_at
        .values()
        .map(|t| (t * 100.0).round() / 100.0)
        .collect();
    ready_times.sort_by(f64::total_cmp);
    Day {
        placement,
        ready_at: ready_times,
        births,
        surge_p95,
        surge_pages: surge.len(),
        failed,
        lost,
        shares,
        pods: ready_at.len(),
        sessions_by_pod,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_start_scales_out_for_logged_in_learners() {
    let lms_sim = build_lms_sim();
    let off = run_day(&lms_sim, false).await;
    let on = run_day(&lms_sim, true).await;
    let table = format!(
        "| | pods | surge pages | surge p95 | learners logged out | failed |\n\
         |---|---|---|---|---|---|\n\
         | sticky on | {} | {} | {:.0?} | {} | {} |\n\
         | sticky off | {} | {} | {:.0?} | {} | {} |\n\
         sessions per pod at the end, sticky on: {:?}\n\
         scale-out pods, sessions above their fair share (best within {SHARE_WITHIN:?} of ready): {:?}\n\
         pods ready at (s from the surge), sticky on: {:?}\n\
         surge learners' first page done at (s) and pod, sticky on: {:?}\n\
         balancer placement, sticky on:\n{}\n\
         autoscaler, sticky on:\n{}",
        on.pods,
        on.surge_pages,
        on.surge_p95,
        on.lost,
        on.failed,
        off.pods,
        off.surge_pages,
        off.surge_p95,
        off.lost,
        off.failed,
        on.sessions_by_pod,
        on.shares,
        on.ready_at,
        on.births,
        on.placement.join("\n"),
        on.log,
    );
    println!("{table}");
    assert!(on.pods > 2 && off.pods > 2, "no scale-out:\n{table}");
    assert_eq!(on.failed, 0, "failed pages with stickiness:\n{table}");
    assert!(
        off.lost > 0,
        "without stickiness pod-local sessions must be lost (the test's own check):\n{table}"
    );
    assert_eq!(on.lost, 0, "learners logged out with stickiness:\n{table}");
    assert!(
        on.surge_p95.as_secs_f64() <= 1.3 * off.surge_p95.as_secs_f64(),
        "sticky surge p95 above 1.3x the figure without stickiness:\n{table}"
    );
    assert!(
        !on.shares.is_empty() && on.shares.iter().all(|(_, above)| *above >= 0),
        "a pod started by the scale-out held less than its fair share within {SHARE_WITHIN:?}:\n{table}"
    );
}

/// Ready copies in the endpoints file, in start order.
fn ready_listed(endpoints: &Path) -> Vec<String> {
    usher_balancer::discovery::file::read(endpoints)
        .map(|v| {
            v.into_iter()
                .filter(|e| !e.starting)
                .map(|e| e.address)
                .collect()
        })
        .unwrap_or_default()
}

/// Scale-down that never logs a learner out: 4 copies, 4 learners whose
/// sessions live on the two newest, light load; the autoscaler goes to 2
/// and must stop the two copies holding no session (before, it stopped the
/// newest: every learner was logged out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_stops_the_copies_without_sessions() {
    let lms_sim = build_lms_sim();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.json");
    write(&endpoints, "[]\n");
    let balancer_yaml = dir.path().join("balancer.yaml");
    write(
        &balancer_yaml,
        &format!(
            "listeners:
  - name: public
    bind: \"127.0.0.1:0\"
admin:
  bind: \"127.0.0.1:0\"
routes:
  - pool: moodle
pools:
  moodle:
    endpoints:
      file: {{path: \"{}\", interval: 100ms}}
    stickySessions: {{applicationCookie: MoodleSession}}
    drainTimeout: 1s
",
            endpoints.display()
        ),
    );
    let (balancer, public, admin) = start_balancer(&balancer_yaml).await;
    let policy = dir.path().join("policy.yaml");
    write(
        &policy,
        &format!(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: class-ends}}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: moodle
  minReplicas: 2
  maxReplicas: 4
  target: {{inFlightPerPod: 4}}
  surge: {{stableWindow: 3s, panicWindow: 1s, panicThreshold: 2.0}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 3
      policies: [{{type: Percent, value: 100, periodSeconds: 1}}]
  metricsSource: {{urls: ['http://{admin}/metrics'], interval: 250ms, timeout: 200ms}}
"
        ),
    );
    let token = token("sd");
    let mut scaler = Local {
        dir: dir.path(),
        policy: &policy,
        endpoints: &endpoints,
        drain: "1s",
        initial: 4,
        lms_sim: &lms_sim,
        args: &[
            "--workers",
            "4",
            "--service-time",
            "20ms",
            "--pod-local-sessions",
            "--exit-with-parent",
        ],
        token: &token,
    }
    .start();
    scaler.metrics_addr().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = ready_listed(&endpoints);
        if listed.len() == 4 {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "4 copies never became ready: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Session cookies that rendezvous hashing places on the two newest
    // copies (the ones a newest-first scale-down would stop).
    let newest = [listed[2].clone(), listed[3].clone()];
    // Two learners on each.
    let copies = &listed;
    let on = |copy: usize| {
        (0..10_000)
            .map(|i| format!("{i:026x}"))
            .filter(move |c| {
                usher_balancer::sticky::rendezvous(c, copies.iter().map(String::as_str))
                    == Some(copy)
            })
            .take(2)
    };
    let cookies: Vec<String> = on(2).chain(on(3)).collect();
    assert_eq!(cookies.len(), 4);

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{public}/quiz/attempt");
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(Mutex::new(vec![Vec::<Page>::new(); 4]));
    let mut tasks = Vec::new();
    for (me, cookie) in cookies.into_iter().enumerate() {
        let (client, url, stop, pages) = (client.clone(), url.clone(), stop.clone(), pages.clone());
        tasks.push(tokio::spawn(async move {
            let mut jar = Jar::default();
            jar.0.insert("MoodleSession".into(), cookie);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let req = http::Request::get(url.as_str())
                    .header(http::header::COOKIE, jar.header())
                    .body(Empty::new())
                    .unwrap();
                let at = started.elapsed();
                let page = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
                    Ok(Ok(resp)) => {
                        jar.update(resp.headers());
                        let status = resp.status().as_u16();
                        let session = resp
                            .headers()
                            .get("x-session")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .unwrap_or_default()
                            .to_bytes();
                        let pod = String::from_utf8_lossy(&body)
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        Page {
                            at: at.as_secs_f64(),
                            latency: started.elapsed() - at,
                            status,
                            pod,
                            session,
                        }
                    }
                    other => Page {
                        at: at.as_secs_f64(),
                        latency: started.elapsed() - at,
                        status: 0,
                        pod: format!("{other:?}"),
                        session: String::new(),
                    },
                };
                pages.lock().unwrap()[me].push(page);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    // The autoscaler goes to 2 copies and the 2 it stopped are gone.
    let deadline = Instant::now() + Duration::from_secs(40);
    let kept = loop {
        let now_listed = ready_listed(&endpoints);
        if now_listed.len() == 2 && sims_alive(&token) == 2 {
            break now_listed;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-down to 2 within 40 s: {now_listed:?}\n{}",
            scaler.timeline()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let timeline = scaler.timeline();
    drop(scaler);
    balancer.shutdown().await;
    let pages = pages.lock().unwrap().clone();
    let summary: Vec<String> = pages
        .iter()
        .map(|l| {
            l.iter()
                .map(|p| format!("{}:{}", p.pod.rsplit('-').next().unwrap_or("?"), p.session))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let report = format!(
        "newest copies {newest:?}, kept {kept:?}\nlearners' pages (pod:session):\n{}\n{timeline}",
        summary.join("\n")
    );
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    let mut newest_sorted = newest.to_vec();
    newest_sorted.sort();
    assert_eq!(
        kept_sorted, newest_sorted,
        "the copies holding sessions were stopped:\n{report}"
    );
    for l in &pages {
        assert!(l.len() > 5, "{report}");
        // The first page finds no session on the pod (a made-up cookie):
        // it starts one. After that, nobody is logged out.
        assert!(
            l[1..]
                .iter()
                .all(|p| p.status == 200 && p.session == "resumed"),
            "a learner was logged out or failed:\n{report}"
        );
    }
}

/// How many `lms-sim` processes with `token` are alive.
fn sims_alive(token: &str) -> usize {
    support::sims_running(token).len()
}
