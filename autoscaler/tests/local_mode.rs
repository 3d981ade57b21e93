//! End to end, local mode: the real `usher-autoscaler local` binary scales
//! real `lms-sim` processes behind a real balancer (started in-process from
//! the library), all on 127.0.0.1.
//!
//! 1. One copy starts and the balancer serves through it.
//! 2. A bounded surge: more copies must be listed in the endpoints file
//!    within a few seconds, and the balancer must spread the surge over them.
//! 3. The surge stops; a light load keeps running while the surplus copies
//!    leave the file, drain and stop. Not one request of it may fail (the
//!    balancer's retries are off, so only the drain order protects them).
//! 4. SIGTERM stops the autoscaler and every copy it started.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use usher_balancer::{Balancer, Options};

mod support;
use support::{Local, build_lms_sim, gauge, sims_running, token};

/// lms-sim workers per copy, and the policy's in-flight target per copy.
const WORKERS: u32 = 4;
/// lms-sim's mean service time.
const SERVICE_TIME: &str = "50ms";
const MAX_REPLICAS: usize = 5;
/// Concurrent client loops during the surge (6 copies' worth at 4 per copy).
const SURGE_CLIENTS: usize = 24;
const SURGE_FOR: Duration = Duration::from_secs(10);
/// Sequential client loops during the scale-down.
const LIGHT_CLIENTS: usize = 2;
/// Time between two requests of one light client.
const LIGHT_PAUSE: Duration = Duration::from_millis(10);
/// A second copy must be listed within this long of the surge's start.
const SCALE_UP_WITHIN: Duration = Duration::from_secs(4);
/// Back to one copy within this long of the surge's end.
const SCALE_DOWN_WITHIN: Duration = Duration::from_secs(30);
/// Autoscaler `--drain`; the balancer polls the file every 250 ms.
const DRAIN: &str = "2s";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let uri = url.parse().map_err(|e| format!("{e}"))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What the test saw of the replicas, sampled every 100 ms.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Endpoints in the file now.
    listed: Vec<String>,
    /// Every endpoint ever listed.
    ever: BTreeSet<String>,
    /// The autoscaler's gauges.
    desired: Option<f64>,
    current: Option<f64>,
    /// The autoscaler's `usher_autoscaler_*` gauges of the last scrape
    /// (histograms left out), for failure messages.
    gauges: Vec<String>,
    /// Changes of the listed count: (time since the test's start, count).
    changes: Vec<(Duration, usize)>,
    /// One line per autoscaler tick seen: what it read and decided.
    ticks: Vec<String>,
    last_tick: Option<f64>,
}

fn watch_replicas(
    endpoints_file: PathBuf,
    metrics_url: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            // Ready copies (starting ones are listed too, marked as such).
            let listed: Option<Vec<String>> =
                usher_balancer::discovery::file::read(&endpoints_file)
                    .ok()
                    .map(|v| {
                        v.into_iter()
                            .filter(|e| !e.starting)
                            .map(|e| e.address)
                            .collect()
                    });
            let metrics = get(&client, &metrics_url).await.ok().map(|(_, t)| t);
            {
                let mut s = shared.lock().unwrap();
                if let Some(listed) = listed {
                    if s.changes.last().map(|c| c.1) != Some(listed.len()) {
                        s.changes.push((t0.elapsed(), listed.len()));
                    }
                    s.ever.extend(listed.iter().cloned());
                    s.listed = listed;
                }
                if let Some(m) = metrics {
                    s.desired = gauge(&m, "usher_autoscaler_desired_replicas");
                    s.current = gauge(&m, "usher_autoscaler_current_replicas");
                    let tick = gauge(&m, "usher_autoscaler_decision_duration_seconds_count");
                    if tick.is_some() && tick != s.last_tick {
                        s.last_tick = tick;
                        let g = |n: &str| {
                            gauge(&m, &format!("usher_autoscaler_{n}"))
                                .map_or("?".to_string(), |v| v.to_string())
                        };
                        let line = format!(
                            "{:>5.1?} in_flight={} desired={} current={} ready={} panic={} limited={}",
                            t0.elapsed(),
                            g("observed_in_flight"),
                            g("desired_replicas"),
                            g("current_replicas"),
                            g("ready_replicas"),
                            g("panic_mode"),
                            g("scaling_limited"),
                        );
                        s.ticks.push(line);
                    }
                    s.gauges = m
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                        .map(str::to_string)
                        .collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// Requests and their outcomes over one phase.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first failures, described.
    failures: Mutex<Vec<String>>,
    /// Responses per copy (lms-sim names itself in the body).
    by_copy: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
    fn copies(&self) -> BTreeMap<String, u64> {
        self.by_copy.lock().unwrap().clone()
    }
}

/// One client: sequential GETs until `stop`, `until` or `max` requests.
#[allow(clippy::too_many_arguments)]
async fn client_loop(
    client: HttpClient,
    url: String,
    stop: Arc<AtomicBool>,
    until: Instant,
    max: u64,
    pause: Duration,
    tally: Arc<Tally>,
    t0: Instant,
) {
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until && sent < max {
        sent += 1;
        match get(&client, &url).await {
            Ok((200, body)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let copy = body
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *tally.by_copy.lock().unwrap().entry(copy).or_default() += 1;
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                let mut f = tally.failures.lock().unwrap();
                if f.len() < 20 {
                    f.push(format!("at {:.2?}: {other:?}", t0.elapsed()));
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start_clients(
    n: usize,
    url: &str,
    stop: &Arc<AtomicBool>,
    until: Instant,
    max: u64,
    pause: Duration,
    tally: &Arc<Tally>,
    t0: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = http_client();
    (0..n)
        .map(|_| {
            tokio::spawn(client_loop(
                client.clone(),
                url.to_string(),
                stop.clone(),
                until,
                max,
                pause,
                tally.clone(),
                t0,
            ))
        })
        .collect()
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    tokio::time::timeout(REQUEST_TIMEOUT * 2, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("client loops end within two request timeouts");
}

fn refuses(endpoint: &str) -> bool {
    let addr: SocketAddr = endpoint.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_scales_up_on_a_surge_and_down_without_failed_requests() {
    let built = Instant::now();
    let lms_sim = build_lms_sim();
    println!(
        "lms-sim: {} (cargo build took {:.1?})",
        lms_sim.display(),
        built.elapsed()
    );
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.json");
    write(&endpoints, "[]\n");

    // The balancer: one pool from the endpoints file, retries off so that
    // a copy stopped too early shows up as a failed request.
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
      file: {{path: \"{}\", interval: 250ms}}
    retries: {{attempts: 0}}
    timeouts: {{connect: 1s, response: 10s}}
",
            endpoints.display()
        ),
    );
    let balancer = Balancer::start(
        &balancer_yaml,
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let public = balancer.listener_addr("public").unwrap();
    let admin = balancer.admin_addr().unwrap();
    let page = format!("http://{public}/course/view");

    let policy = dir.path().join("policy.yaml");
    write(
        &policy,
        &format!(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: e2e}}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: moodle
  minReplicas: 1
  maxReplicas: {MAX_REPLICAS}
  target: {{inFlightPerPod: {WORKERS}}}
  surge: {{stableWindow: 6s, panicWindow: 2s, panicThreshold: 2.0}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 5
      policies: [{{type: Percent, value: 100, periodSeconds: 1}}]
  metricsSource: {{urls: ['http://{admin}/metrics'], interval: 1s, timeout: 800ms}}
"
        ),
    );

    // The autoscaler, its copies named `<token>-<index>` so that every
    // response names its copy and leftovers can be found by the token.
    let token = token("e2e");
    let workers = WORKERS.to_string();
    let mut scaler = Local {
        dir: dir.path(),
        policy: &policy,
        endpoints: &endpoints,
        drain: DRAIN,
        initial: 1,
        lms_sim: &lms_sim,
        args: &["--workers", &workers, "--service-time", SERVICE_TIME],
        token: &token,
    }
    .start();
    let metrics_url = format!("http://{}/metrics", scaler.metrics_addr().await);
    let watch_stop = Arc::new(AtomicBool::new(false));
    let (seen, watcher) = watch_replicas(endpoints.clone(), metrics_url, t0, watch_stop.clone());

    // 1. One copy is ready and serves through the balancer; the autoscaler
    // reads the balancer and wants one.
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = get(&client, &page).await {
            assert!(body.starts_with(&format!("{token}-0 ")), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first copy never served through the balancer; endpoints file: {:?}",
            std::fs::read_to_string(&endpoints)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        "the autoscaler reads the balancer and wants 1 replica",
        Duration::from_secs(10),
        || {
            let s = seen.lock().unwrap();
            s.desired == Some(1.0) && s.current == Some(1.0) && s.listed.len() == 1
        },
    )
    .await;
    let ready_after = t0.elapsed();

    // 2. The surge.
    let surge = Arc::new(Tally::default());
    let surge_stop = Arc::new(AtomicBool::new(false));
    let surge_start = Instant::now();
    let surge_tasks = start_clients(
        SURGE_CLIENTS,
        &page,
        &surge_stop,
        surge_start + SURGE_FOR,
        2_000,
        Duration::ZERO,
        &surge,
        t0,
    );
    let mut first_desired_up = None;
    let mut first_listed_up = None;
    let mut peak = 1;
    while surge_start.elapsed() < SURGE_FOR {
        {
            let s = seen.lock().unwrap();
            if first_desired_up.is_none() && s.desired.is_some_and(|d| d > 1.0) {
                first_desired_up = Some(surge_start.elapsed());
            }
            if first_listed_up.is_none() && s.listed.len() > 1 {
                first_listed_up = Some(surge_start.elapsed());
            }
            peak = peak.max(s.listed.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let at_surge_end = seen.lock().unwrap().clone();

    // 3. The light load starts before the surge stops, so no moment of the
    // scale-down goes unobserved.
    let light = Arc::new(Tally::default());
    let light_stop = Arc::new(AtomicBool::new(false));
    let light_tasks = start_clients(
        LIGHT_CLIENTS,
        &page,
        &light_stop,
        Instant::now() + SCALE_DOWN_WITHIN + Duration::from_secs(15),
        10_000,
        LIGHT_PAUSE,
        &light,
        t0,
    );
    surge_stop.store(true, Ordering::Relaxed);
    join_all(surge_tasks).await;
    let surge_ended = Instant::now();
    let surge_copies = surge.copies();
    println!(
        "surge: {} ok, {} failed, over {} copies: {surge_copies:?}",
        surge.ok(),
        surge.failed(),
        surge_copies.len()
    );
    let first_listed_up = first_listed_up.unwrap_or_else(|| {
        panic!(
            "no second copy was listed during a {SURGE_FOR:?} surge; timeline:\n{}seen at the surge's end: {at_surge_end:#?}",
            scaler.timeline()
        )
    });
    assert!(
        first_listed_up < SCALE_UP_WITHIN,
        "the second copy was listed {first_listed_up:?} after the surge started; timeline:\n{}seen at the surge's end: {at_surge_end:#?}",
        scaler.timeline()
    );
    assert!(
        surge_copies.len() >= 2,
        "the surge was not spread over the copies: {surge_copies:?}"
    );
    assert_eq!(
        surge.failed(),
        0,
        "requests failed during the surge: {:?}",
        surge.failures()
    );

    // Back to one copy in the file, and the autoscaler agrees (its gauge
    // follows a tick later).
    let mut first_drop = None;
    let mut back_to_one = None;
    let deadline = surge_ended + SCALE_DOWN_WITHIN;
    loop {
        {
            let s = seen.lock().unwrap();
            if first_drop.is_none() && s.listed.len() < peak {
                first_drop = Some(surge_ended.elapsed());
            }
            if back_to_one.is_none() && s.listed.len() == 1 {
                back_to_one = Some(surge_ended.elapsed());
            }
            if s.listed.len() == 1 && s.current == Some(1.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not back to 1 replica {SCALE_DOWN_WITHIN:?} after the surge: {s:?}; timeline:\n{}",
                scaler.timeline()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scale_down = back_to_one.expect("one copy listed");
    let first_drop = first_drop.expect("fewer copies listed");
    // The surplus copies stop `DRAIN` after they left the file; the light
    // load runs until every one of them is gone.
    let (kept, ever) = {
        let s = seen.lock().unwrap();
        (s.listed[0].clone(), s.ever.clone())
    };
    let others: Vec<String> = ever.iter().filter(|e| **e != kept).cloned().collect();
    wait_for("the drained copies stop", Duration::from_secs(10), || {
        others.iter().all(|e| refuses(e))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    light_stop.store(true, Ordering::Relaxed);
    join_all(light_tasks).await;
    println!(
        "scale-down: first drop {first_drop:.1?} and back to 1 copy {scale_down:.1?} after the surge; light load: {} ok, {} failed, by copy {:?}",
        light.ok(),
        light.failed(),
        light.copies()
    );
    assert_eq!(
        light.failed(),
        0,
        "requests failed during the scale-down: {:?}; timeline:\n{}",
        light.failures(),
        scaler.timeline()
    );
    assert!(light.ok() >= 100, "too few requests: {}", light.ok());
    assert!(
        first_drop >= Duration::from_secs(3),
        "scaled down {first_drop:?} after the surge, inside the 5 s stabilization window"
    );

    // 4. SIGTERM stops the autoscaler and every copy.
    watch_stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let timeline = scaler.timeline();
    let status = scaler
        .terminate(Duration::from_secs(15))
        .expect("the autoscaler exits within 15 s of SIGTERM");
    assert!(status.success(), "the autoscaler exited with {status}");
    wait_for(
        "every copy stops with the autoscaler",
        Duration::from_secs(5),
        || sims_running(&token).is_empty() && ever.iter().all(|e| refuses(e)),
    )
    .await;
    let (changes, ticks) = {
        let s = seen.lock().unwrap();
        (s.changes.clone(), s.ticks.clone())
    };
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), balancer.shutdown()).await;

    println!("autoscaler timeline:\n{timeline}");
    println!(
        "autoscaler ticks (time since start):\n  {}",
        ticks.join("\n  ")
    );
    println!("endpoints listed (time since start, count): {changes:.1?}");
    println!(
        "local_mode: one copy serving and read by the autoscaler {ready_after:.1?} after start; surge of {SURGE_CLIENTS} clients: desired > 1 after {:.2?}, second copy listed after {first_listed_up:.2?}, peak {peak} copies, {} copies served, {} ok / {} failed; scale-down: first drop {first_drop:.1?}, back to 1 after {scale_down:.1?}; light load {} ok / {} failed; {} copies in all; total {:.1?}",
        first_desired_up.unwrap_or_default(),
        surge_copies.len(),
        surge.ok(),
        surge.failed(),
        light.ok(),
        light.failed(),
        ever.len(),
        t0.elapsed()
    );
}
