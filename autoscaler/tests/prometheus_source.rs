//! `metricsSource.prometheus`: a real Prometheus server (Debian's
//! `prometheus`, installed by tests/run.sh) scrapes a real balancer, and the
//! autoscaler's reader gets the pool's demand back through the HTTP API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use usher_autoscaler::policy;
use usher_autoscaler::source::Reader;
use usher_balancer::{Balancer, Options};

async fn slow_backend(hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(hold).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"page",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn get(url: &str, limit: Duration) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(limit, client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_demand_comes_back_through_prometheus() {
    let backend = slow_backend(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("balancer.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: lms\npools:\n  lms:\n    endpoints:\n      static: [\"{backend}\"]\n    timeouts: {{response: 120s}}\n"
        ),
    )
    .unwrap();
    let balancer = Balancer::start(
        &config,
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let public = balancer.listener_addr("public").unwrap();
    let admin = balancer.admin_addr().unwrap();

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
    while get(&format!("{base}/-/ready"), Duration::from_secs(2))
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
    for i in 0..12 {
        tokio::spawn(async move {
            let url = format!("http://{public}/course/view.php?id={i}");
            let _ = get(&url, Duration::from_secs(90)).await;
        });
    }

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

    // Predictive history comes back from query_range as minute points.
    let query = usher_autoscaler::source::demand_query(&policy, Some("namespace=\"lms\"")).unwrap();
    let now = chrono::Utc::now();
    let points = usher_autoscaler::source::query_range_minutes(
        &base,
        &query,
        now - chrono::Duration::minutes(3),
        now,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(!points.is_empty(), "no range points for {query}");
    assert_eq!(points.last().unwrap().1, 12.0, "{points:?}");

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
