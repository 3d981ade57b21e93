//! `lms-sim` over real sockets: cold start, worker limit and backlog, sessions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Sim {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Sim {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lms-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    Sim { child, addr }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, hyper::HeaderMap, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(format!("http://{addr}{path}").parse().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn cold_start_fails_health_until_warm() {
    let sim = start(&["--cold-start", "600ms", "--service-time", "1ms"]);
    assert_eq!(get(sim.addr, "/healthz").await.0, 503);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(sim.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn the_worker_pool_bounds_concurrency_and_the_backlog_rejects() {
    let sim = start(&[
        "--workers",
        "2",
        "--backlog",
        "3",
        "--service-time",
        "300ms",
        "--distribution",
        "fixed",
    ]);
    let requests: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(sim.addr, "/course/view")))
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap().0);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let rejected = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + rejected, 8);
    assert!(
        rejected >= 3,
        "2 serving + 3 waiting: at least 3 of 8 turned away: {statuses:?}"
    );
    let stats: serde_json::Value = serde_json::from_str(&get(sim.addr, "/stats").await.2).unwrap();
    assert_eq!(stats["maxBusy"], 2, "{stats}");
    assert_eq!(stats["served"], ok as u64);
    assert_eq!(stats["rejected"], rejected as u64);
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_pages_answer() {
    let sim = start(&["--service-time", "1ms", "--name", "pod-a"]);
    let (status, headers, body) = get(sim.addr, "/login").await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("MoodleSession=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert_eq!(body, "pod-a /login\n");
    for page in ["/", "/course/view", "/quiz/attempt"] {
        assert_eq!(get(sim.addr, page).await.0, 200, "{page}");
    }
    assert_eq!(get(sim.addr, "/admin").await.0, 404);
    let (_, other, _) = get(sim.addr, "/login").await;
    assert_ne!(
        other["set-cookie"], headers["set-cookie"],
        "each login gets its own session"
    );
    let (status, headers, _) = get(sim.addr, "/logout").await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("MoodleSession=") && cookie.contains("Max-Age=0"),
        "logout expires the session cookie: {cookie}"
    );
}

async fn get_with_cookie(addr: SocketAddr, path: &str, cookie: &str) -> hyper::HeaderMap {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("cookie", cookie)
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    resp.headers().clone()
}

#[tokio::test]
async fn pod_local_sessions_log_out_a_learner_sent_to_another_pod() {
    let a = start(&["--service-time", "1ms", "--pod-local-sessions"]);
    let b = start(&["--service-time", "1ms", "--pod-local-sessions"]);
    // The first page starts a session, as PHP's session_start does.
    let (_, headers, _) = get(a.addr, "/course/view").await;
    assert_eq!(headers["x-session"], "new");
    let set = headers["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("MoodleSession="), "{set}");
    // Its own pod resumes it, without a new cookie.
    let again = get_with_cookie(a.addr, "/quiz/attempt", &cookie).await;
    assert_eq!(again["x-session"], "resumed");
    assert!(!again.contains_key("set-cookie"));
    // Another pod has no such session: the learner is logged out.
    let moved = get_with_cookie(b.addr, "/quiz/attempt", &cookie).await;
    assert_eq!(moved["x-session"], "lost");
    assert_ne!(
        moved["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        cookie
    );
    let stats: serde_json::Value = serde_json::from_str(&get(b.addr, "/stats").await.2).unwrap();
    assert_eq!(stats["lost"], 1, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&get(a.addr, "/stats").await.2).unwrap();
    assert_eq!(stats["lost"], 0, "{stats}");
    // Logging out ends it on its pod.
    let out = get_with_cookie(a.addr, "/logout", &cookie).await;
    assert!(out["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(
        get_with_cookie(a.addr, "/", &cookie).await["x-session"],
        "lost"
    );
}
