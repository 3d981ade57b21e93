//! The autoscaler reads a real balancer's `/metrics` over a real socket.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use usher_autoscaler::scrape::pool_demand;
use usher_balancer::{Balancer, Options};

async fn backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
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

async fn get(url: &str) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_demand_from_a_running_balancer() {
    let b = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: moodle\npools:\n  moodle:\n    endpoints:\n      static: [\"{b}\"]\n    maxInFlightPerEndpoint: 8\n    queue: {{maxLength: 10}}\n"
        ),
    )
    .unwrap();
    let balancer = Balancer::start(
        &path,
        Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let public = balancer.listener_addr("public").unwrap();
    let admin = balancer.admin_addr().unwrap();
    for _ in 0..5 {
        assert_eq!(
            get(&format!("http://{public}/course/view.php")).await,
            (200, "page".to_string())
        );
    }
    let (status, text) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let demand = pool_demand(&text, "moodle").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(demand.responses_total, 5.0, "{text}");
    assert_eq!(demand.in_flight, 0.0);
    assert_eq!(demand.queued, 0.0);
    assert!(pool_demand(&text, "canvas").is_err());
    balancer.shutdown().await;
}
