//! Test support: real backends and a real balancer on 127.0.0.1, and a client.
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use usher_balancer::{Balancer, Options};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<Full<Bytes>>> + Send + Sync>;

/// A text response.
pub fn text(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// A real HTTP backend on 127.0.0.1 with a programmable handler.
pub struct Backend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Answers `200 <name>` to everything (and `/healthz`).
    pub async fn named(name: &str) -> Self {
        let name = name.to_string();
        Self::start(move |_req| {
            let name = name.clone();
            async move { text(200, name) }
        })
        .await
    }

    /// Answers `200 <name>` after `delay`.
    pub async fn slow(name: &str, delay: Duration) -> Self {
        let name = name.to_string();
        Self::start(move |_req| {
            let name = name.clone();
            async move {
                tokio::time::sleep(delay).await;
                text(200, name)
            }
        })
        .await
    }

    /// Binds a fresh port and serves `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(
            listener,
            Arc::new(move |req| Box::pin(handler(req)) as BoxFuture<_>),
        )
    }

    /// Serves `handler` on an already bound listener (to restart on a known port).
    pub fn serve(listener: TcpListener, handler: Handler) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (h, t) = (hits.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let hits = h.clone();
                t.lock().unwrap().spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() != "/healthz" {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            hits,
            tasks,
            accept,
        }
    }

    /// Requests served, `/healthz` excluded.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `host:port` for configs.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the backend: closes the listening socket and every open connection.
    pub fn kill(&self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A balancer started in-process from YAML text, with its config directory.
pub struct TestBalancer {
    pub balancer: Arc<Balancer>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestBalancer {
    /// Writes `yaml` to a temporary `balancer.yaml` and starts it (file watching off).
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(
            yaml,
            Options {
                watch_interval: None,
                ..Default::default()
            },
        )
        .await
    }

    /// Same, with explicit options.
    pub async fn start_with(yaml: &str, options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("balancer.yaml");
        std::fs::write(&path, yaml).unwrap();
        let balancer = Balancer::start(&path, options).await.unwrap();
        Self {
            balancer,
            dir,
            path,
        }
    }

    /// Base URL of the listener named `public`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.balancer.listener_addr("public").unwrap(),
            path
        )
    }

    /// Base URL of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.balancer.admin_addr().unwrap(), path)
    }

    /// Replaces the config file (and reloads, when `reload`).
    pub fn rewrite(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).unwrap();
    }
}

/// A plain HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and returns status, headers and body text.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, String), String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// GETs `url`.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<(StatusCode, String), String> {
    let req = Request::get(url).body(Full::default()).unwrap();
    send(client, req).await.map(|(s, _, b)| (s, b))
}

/// The balancer's `/status` document.
pub async fn status(tb: &TestBalancer) -> serde_json::Value {
    let (_, body) = get(&client(), &tb.admin_url("/status")).await.unwrap();
    serde_json::from_str(&body).unwrap()
}

/// State of `endpoint` in `pool` per `/status`.
pub async fn endpoint_state(tb: &TestBalancer, pool: &str, endpoint: &str) -> String {
    endpoint_json(tb, pool, endpoint)
        .await
        .map(|e| e["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".to_string())
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns the time it took.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Config text for one plain listener, an admin listener, and one pool `web`
/// with the given endpoints and extra pool YAML (indented 4 spaces).
pub fn config(endpoints: &[&Backend], pool_extra: &str) -> String {
    let list: String = endpoints
        .iter()
        .map(|b| format!("        - \"{}\"\n", b.address()))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n{list}{pool_extra}"
    )
}

/// The value of the sample of `family` whose labels include every one of
/// `labels` (`key="value"` text), from the admin listener's `/metrics`.
pub async fn metric<L: AsRef<str>>(tb: &TestBalancer, family: &str, labels: &[L]) -> Option<f64> {
    let (status, body) = get(&client(), &tb.admin_url("/metrics")).await.unwrap();
    assert_eq!(status, 200, "/metrics answered {status}");
    let prefix = format!("{family}{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .find(|l| labels.iter().all(|want| l.contains(want.as_ref())))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

/// A backend answering `200 <name>`, whose `/healthz` answers 503 while `sick` is set.
pub async fn switchable(name: &str, sick: Arc<std::sync::atomic::AtomicBool>) -> Backend {
    let name = name.to_string();
    Backend::start(move |req| {
        let name = name.clone();
        let sick = sick.clone();
        async move {
            if req.uri().path() == "/healthz" && sick.load(Ordering::SeqCst) {
                text(503, "sick")
            } else {
                text(200, name)
            }
        }
    })
    .await
}

/// The `/status` entry of `address` in `pool`, if listed.
pub async fn endpoint_json(
    tb: &TestBalancer,
    pool: &str,
    address: &str,
) -> Option<serde_json::Value> {
    let s = status(tb).await;
    s["pools"].as_array()?.iter().find(|p| p["name"] == pool)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)
        .cloned()
}

/// A backend whose requests wait until the test adds a permit, then answer `200 <name>`.
pub async fn gated(name: &str) -> (Backend, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let name = name.to_string();
    let backend = Backend::start(move |_req| {
        let (gate, name) = (g.clone(), name.clone());
        async move {
            gate.acquire().await.unwrap().forget();
            text(200, name)
        }
    })
    .await;
    (backend, gate)
}

/// Accepts a WebSocket handshake and echoes every text and binary message;
/// anything that is not a handshake gets `400`.
pub fn websocket_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let wants_websocket = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(400, "not a websocket handshake");
    };
    if !wants_websocket {
        return text(400, "not a websocket handshake");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // A close frame is answered by tungstenite itself; the loop then
        // ends and dropping the stream closes the TCP connection.
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = text(101, "");
    let h = resp.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    resp
}
