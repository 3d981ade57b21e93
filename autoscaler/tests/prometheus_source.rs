//! `metricsSource.prometheus`: a real Prometheus server (Debian's
//! `prometheus`, installed by tests/run.sh) scrapes a real balancer, and the
//! autoscaler's reader gets the pool's demand back through the HTTP API.

#[path = "support/web.rs"]
mod web;

use std::process::Stdio;
use std::time::{Duration, Instant};

use usher_autoscaler::policy;
use usher_autoscaler::source::Reader;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_demand_comes_back_through_prometheus() {
    let backend = web::backend(Duration::from_secs(60)).await;
    let lb = web::balancer("lms", backend, "    timeouts: {response: 120s}\n").await;
    let (public, admin) = (lb.public, lb.admin);
    let dir = tempfile::tempdir().unwrap();

    let port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: usher-balancer\n    static_configs:\n      - targets: ['{admin}']\n        labels: {{namespace: lms}}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is not installed (tests/run.sh installs Debian's `prometheus`)");
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while web::get(&format!("{base}/-/ready"), Duration::from_secs(2))
        .await
        .map(|r| r.0)
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prometheus did not become ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            prometheus.try_wait().unwrap().is_none(),
            "prometheus exited"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 12 requests held open through the balancer.
    web::hold_requests(public, 12);

    let policy = policy::from_str(&format!(
        "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: lms}}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: lms
  minReplicas: 1
  maxReplicas: 6
  target: {{inFlightPerPod: 4}}
  metricsSource:
    prometheus: {{url: '{base}', matchers: 'namespace=\"lms\"'}}
"
    ))
    .unwrap();
    let mut reader = Reader::for_policy(&policy);
    let start = Instant::now();
    let reading = loop {
        let out = reader
            .read(Ok(Vec::new()), Duration::from_secs(2), chrono::Utc::now())
            .await;
        if let Some(r) = out.reading
            && r.in_flight == 12.0
        {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prometheus never reported 12 in flight: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(reading.queued, 0.0);
    assert!(reading.complete());

    // Predictive history comes back from query_range as minute points (the
    // newest point can lag the instant query by a scrape: poll, bounded).
    let query = usher_autoscaler::source::demand_query(&policy, Some("namespace=\"lms\"")).unwrap();
    let start = Instant::now();
    loop {
        let now = chrono::Utc::now();
        let points = usher_autoscaler::source::query_range_minutes(
            &base,
            &query,
            now - chrono::Duration::minutes(3),
            now + chrono::Duration::seconds(1),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        if points.last().is_some_and(|p| p.1 == 12.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "query_range never showed 12 for {query}: {points:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A pool Prometheus has no series for is an error, not zero demand.
    let mut other = policy.clone();
    other.pool = "canvas".into();
    let out = Reader::for_policy(&other)
        .read(Ok(Vec::new()), Duration::from_secs(2), chrono::Utc::now())
        .await;
    assert!(out.reading.is_none());
    assert!(out.errors[0].contains("no series"), "{:?}", out.errors);

    // A matcher that selects nothing is missing data too.
    let mut elsewhere = policy.clone();
    if let policy::SourceKind::Prometheus { matchers, .. } = &mut elsewhere.metrics.kind {
        *matchers = Some("namespace=\"other\"".into());
    }
    let out = Reader::for_policy(&elsewhere)
        .read(Ok(Vec::new()), Duration::from_secs(2), chrono::Utc::now())
        .await;
    assert!(out.reading.is_none(), "{out:?}");
}
