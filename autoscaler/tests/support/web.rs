//! HTTP pieces the autoscaler's integration tests share: a backend that
//! answers after a delay, a balancer in front of it started in-process, and
//! a plain GET. Everything listens on 127.0.0.1.
//!
//! Include with `#[path = "support/web.rs"] mod web;`.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use usher_balancer::{Balancer, Options};

/// A backend that answers `page` after `delay`.
pub async fn backend(delay: Duration) -> SocketAddr {
    backend_at("127.0.0.1", delay).await
}

/// A backend on `ip` (any address of 127.0.0.0/8) that answers `page` after `delay`.
pub async fn backend_at(ip: &str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
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

/// A balancer started in-process from a config, with its addresses; the
/// config file lives as long as it does.
pub struct Lb {
    /// The balancer.
    pub balancer: Arc<Balancer>,
    /// Listener `public`.
    pub public: SocketAddr,
    /// The admin listener (`/metrics`).
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts a balancer with listener `public`, an admin listener, and one
/// pool `pool` in front of `backend`; `extra` is appended to the pool
/// (indented four spaces).
pub async fn balancer(pool: &str, backend: SocketAddr, extra: &str) -> Lb {
    balancer_with(pool, &format!("\"{backend}\""), extra).await
}

/// The same, in front of `endpoints` (a YAML flow list's items).
pub async fn balancer_with(pool: &str, endpoints: &str, extra: &str) -> Lb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: {pool}\npools:\n  {pool}:\n    endpoints:\n      static: [{endpoints}]\n{extra}"
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
    Lb {
        public: balancer.listener_addr("public").unwrap(),
        admin: balancer.admin_addr().unwrap(),
        balancer,
        _dir: dir,
    }
}

/// GETs `url`, giving up after `limit`: the status and the body.
pub async fn get(url: &str, limit: Duration) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(limit, client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Holds `n` requests open through `public` (each up to 90 s).
pub fn hold_requests(public: SocketAddr, n: usize) {
    for i in 0..n {
        tokio::spawn(async move {
            let url = format!("http://{public}/course/view.php?id={i}");
            let _ = get(&url, Duration::from_secs(90)).await;
        });
    }
}
