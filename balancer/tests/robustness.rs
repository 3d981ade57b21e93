//! Client behaviour that must not hurt healthy pods or the balancer's
//! accounting: slow and aborted uploads, upgrade requests with a body,
//! absolute-form targets, and clients leaving the surge queue.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestBalancer, config, endpoint_state, eventually, metric, text};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns everything read until the balancer closes or 5 s pass.
async fn raw(addr: std::net::SocketAddr, chunks: &[(&[u8], Duration)]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (bytes, pause) in chunks {
        s.write_all(bytes).await.unwrap();
        tokio::time::sleep(*pause).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Echoes the length of the request body, and the Host it saw.
async fn echo_length() -> Backend {
    Backend::start(|req| async move {
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        match req.into_body().collect().await {
            Ok(b) => text(200, format!("{} bytes for {host}", b.to_bytes().len())),
            Err(_) => text(400, "cut off"),
        }
    })
    .await
}

fn addr(tb: &TestBalancer) -> std::net::SocketAddr {
    tb.balancer.listener_addr("public").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_cut_off_by_the_response_timeout() {
    let b = echo_length().await;
    let tb = TestBalancer::start(&config(&[&b], "    timeouts: {response: 300ms}\n")).await;
    let pause = Duration::from_millis(250);
    let head = b"POST /mod/assign/upload.php HTTP/1.1\r\nHost: lms\r\nContent-Length: 30\r\nConnection: close\r\n\r\n";
    let out = raw(
        addr(&tb),
        &[
            (head, pause),
            (b"0123456789", pause),
            (b"0123456789", pause),
            (b"0123456789", Duration::ZERO),
        ],
    )
    .await;
    // 750 ms of upload against a 300 ms response timeout: the timeout runs from the end of the upload.
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("30 bytes for lms"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_still_applies_after_the_upload() {
    let b = Backend::slow("slow", Duration::from_secs(3)).await;
    let tb = TestBalancer::start(&config(&[&b], "    timeouts: {response: 300ms}\n")).await;
    let head = b"POST /x HTTP/1.1\r\nHost: lms\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    let started = std::time::Instant::now();
    let out = raw(addr(&tb), &[(head, Duration::ZERO)]).await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_does_not_count_against_the_pod() {
    let b = echo_length().await;
    let tb = TestBalancer::start(&config(
        &[&b],
        "    outlierDetection: {consecutive5xx: 1, maxEjectionPercent: 100}\n",
    ))
    .await;
    for _ in 0..3 {
        // Half a body, then the client disappears.
        let mut s = TcpStream::connect(addr(&tb)).await.unwrap();
        s.write_all(b"PUT /upload HTTP/1.1\r\nHost: lms\r\nContent-Length: 1000\r\n\r\nhalf")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint_state(&tb, "web", &b.address()).await, "healthy");
    let errors = metric(
        &tb,
        "usher_balancer_upstream_errors_total",
        &[format!("endpoint=\"{}\"", b.address())],
    )
    .await;
    assert_eq!(
        errors,
        Some(0.0),
        "a client's aborted upload is not the pod's failure"
    );
    let ejections = metric(&tb, "usher_balancer_ejections_total", &["pool=\"web\""]).await;
    assert_eq!(ejections, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_body_is_refused() {
    let b = echo_length().await;
    let tb = TestBalancer::start(&config(&[&b], "")).await;
    let req = b"GET /chat HTTP/1.1\r\nHost: lms\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello";
    let out = raw(addr(&tb), &[(req, Duration::ZERO)]).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("must not have a body"), "{out}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_routed_and_forwarded_with_one_host() {
    let b = echo_length().await;
    let other = Backend::named("other").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nroutes:\n  - host: lms.example.edu\n    pool: web\n  - pool: other\npools:\n  web:\n    endpoints:\n      static: [\"{}\"]\n  other:\n    endpoints:\n      static: [\"{}\"]\n",
        b.address(),
        other.address()
    );
    let tb = TestBalancer::start(&yaml).await;
    let req = b"GET http://lms.example.edu/course/view.php HTTP/1.1\r\nHost: elsewhere.example.org\r\nConnection: close\r\n\r\n";
    let out = raw(addr(&tb), &[(req, Duration::ZERO)]).await;
    assert!(
        out.ends_with("0 bytes for lms.example.edu"),
        "routed by the target and forwarded with its host: {out}"
    );
    assert_eq!(other.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_the_queue_is_no_longer_counted() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let b = Backend::start(move |req| {
        let r = r.clone();
        async move {
            if req.uri().path() == "/hold" {
                r.notified().await;
            }
            text(200, "ok")
        }
    })
    .await;
    let tb = TestBalancer::start(&config(
        &[&b],
        "    maxInFlightPerEndpoint: 1\n    queue: {maxLength: 10, timeout: 30s}\n",
    ))
    .await;
    let hold = tokio::spawn(raw(
        addr(&tb),
        &[(
            b"GET /hold HTTP/1.1\r\nHost: lms\r\nConnection: close\r\n\r\n",
            Duration::ZERO,
        )],
    ));
    let depth = || metric(&tb, "usher_balancer_pool_queue_depth", &["pool=\"web\""]);
    assert!(
        eventually(Duration::from_secs(5), || async { b.hits() == 1 })
            .await
            .is_some()
    );
    // Two clients queue, then hang up.
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr(&tb)).await.unwrap();
        s.write_all(b"GET /page HTTP/1.1\r\nHost: lms\r\n\r\n")
            .await
            .unwrap();
        let queued = eventually(Duration::from_secs(5), || async {
            depth().await.unwrap_or(0.0) >= 1.0
        })
        .await;
        assert!(queued.is_some());
        drop(s);
        let left = eventually(Duration::from_secs(5), || async {
            depth().await == Some(0.0)
        })
        .await;
        assert!(left.is_some(), "the gauge follows a client that hung up");
    }
    release.notify_waiters();
    assert!(hold.await.unwrap().starts_with("HTTP/1.1 200"));
    // The slot is free again: a new request is served at once.
    let out = raw(
        addr(&tb),
        &[(
            b"GET /page HTTP/1.1\r\nHost: lms\r\nConnection: close\r\n\r\n",
            Duration::ZERO,
        )],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
