//! The data-path findings of the exam-day robustness review, each over real
//! sockets: requests that never reached a pod are sent elsewhere whatever
//! their method, error answers close keep-alive connections cleanly, sticky
//! requests wait for their pod's slot (established sessions first), an
//! ejection runs its course, connections cannot pile up forever, and
//! malformed request targets are refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestBalancer, client, config, eventually, get, metric, send, text};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(tb: &TestBalancer) -> SocketAddr {
    tb.balancer.listener_addr("public").unwrap()
}

/// The common test config for `pod`, with the public listener's `limits`.
fn with_limits(pod: &Backend, limits: &str) -> String {
    config(&[pod], "").replace(
        "    bind: \"127.0.0.1:0\"\nadmin",
        &format!("    bind: \"127.0.0.1:0\"\n    limits: {{{limits}}}\nadmin"),
    )
}

/// A port nothing listens on: connecting is refused.
async fn dead_address() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

/// Answers with the length of the request body.
async fn echo_length(name: &'static str) -> Backend {
    Backend::start(move |req| async move {
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        text(200, format!("{name} got {n}"))
    })
    .await
}

/// Sends raw bytes, reads until the balancer closes or `limit` passes.
async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn post(url: &str, body: &'static str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A POST (a quiz submission) whose connection was refused never reached a
/// pod: it goes to another endpoint with its body, instead of a 502.
#[tokio::test]
async fn a_refused_post_is_sent_to_another_pod_with_its_body() {
    let live = echo_length("live").await;
    let dead = dead_address().await;
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static: [\"{dead}\", \"{}\"]\n    outlierDetection: {{enabled: false}}\n",
        live.address()
    );
    let tb = TestBalancer::start(&yaml).await;
    let http = client();
    for _ in 0..30 {
        let (status, _, body) = send(
            &http,
            post(&tb.url("/quiz/attempt.php"), "answer=42&sesskey=abc", None),
        )
        .await
        .unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "live got 21"));
    }
    let redispatched = metric(
        &tb,
        "usher_balancer_pool_retries_total",
        &["reason=\"not_sent\""],
    )
    .await
    .unwrap();
    assert!(
        redispatched >= 1.0,
        "the dead pod was never picked: {redispatched}"
    );
}

/// Requests that never reached a pod need no retry budget: with the budget at
/// zero, every one of 64 concurrent GETs still finds the live pod.
#[tokio::test]
async fn a_spent_budget_does_not_starve_requests_that_never_reached_a_pod() {
    let live = Backend::named("live").await;
    let dead = [
        dead_address().await,
        dead_address().await,
        dead_address().await,
    ];
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static: [\"{}\", \"{}\", \"{}\", \"{}\"]\n    outlierDetection: {{enabled: false}}\n    retries: {{attempts: 3, budgetPercent: 0, minConcurrency: 0}}\n",
        dead[0],
        dead[1],
        dead[2],
        live.address()
    );
    let tb = TestBalancer::start(&yaml).await;
    let http = client();
    let url = tb.url("/");
    let answers = futures_util::future::join_all((0..64).map(|_| get(&http, &url))).await;
    let bad: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((s, b)) if s.as_u16() == 200 && b == "live"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of 64 failed: {:?}",
        bad.len(),
        bad.first()
    );
    let exhausted = metric(
        &tb,
        "usher_balancer_retry_budget_exhausted_total",
        &["pool=\"web\""],
    )
    .await;
    assert_eq!(exhausted.unwrap_or(0.0), 0.0);
}

/// A 502/503 to a request whose body was not read says `Connection: close`,
/// so a keep-alive client opens a new connection instead of writing its next
/// request into a closed one.
#[tokio::test]
async fn an_error_answer_to_a_request_with_a_body_says_connection_close() {
    let dead = dead_address().await;
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static: [\"{dead}\"]\n"
    );
    let tb = TestBalancer::start(&yaml).await;
    let request = b"POST /mod/quiz/processattempt.php HTTP/1.1\r\nHost: lms\r\nContent-Length: 5\r\n\r\nhello";
    let answer = raw(addr(&tb), request, Duration::from_secs(5)).await;
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 502"), "{answer}");
    assert!(head.contains("connection: close"), "{answer}");
    // A bodiless GET keeps its connection.
    let answer = raw(
        addr(&tb),
        b"GET / HTTP/1.1\r\nHost: lms\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// A pod that answers before reading the request body (a redirect after a
/// refused upload, say): the answer says `Connection: close`, since hyper
/// will not reuse a connection with unread bytes. A keep-alive client then
/// reconnects instead of failing its next request with a broken pipe.
#[tokio::test]
async fn an_answer_before_the_body_was_read_says_connection_close() {
    let hasty = Backend::start(|_req| async { text(200, "not reading that") }).await;
    let tb = TestBalancer::start(&config(&[&hasty], "")).await;
    // 10 of the 100 bytes announced: the pod answers on the headers, and
    // the rest of the body is never read.
    let mut s = TcpStream::connect(addr(&tb)).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: lms\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        out.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let head = answer.split("\r\n\r\n").next().unwrap();
    assert!(head.contains("connection: close"), "{head}");
    // A body read to its end keeps the connection.
    let echo = echo_length("echo").await;
    let tb = TestBalancer::start(&config(&[&echo], "")).await;
    let answer = raw(
        addr(&tb),
        b"POST / HTTP/1.1\r\nHost: lms\r\nContent-Length: 5\r\n\r\nhello",
        Duration::from_millis(800),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// Keep-alive clients that write a POST's headers and body in two writes
/// (as Python's http.client does), to a pod that answers without reading the
/// body: the balancer used to close some of those connections after the
/// answer without saying so, and the client's next request failed (2–4
/// broken pipes in 3,500 POSTs). Every answer must either keep the
/// connection usable or say `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_posts_to_a_pod_that_ignores_bodies_never_fail() {
    let hasty = Backend::start(|_req| async { text(200, "saved") }).await;
    let tb = TestBalancer::start(&config(&[&hasty], "")).await;
    let at = addr(&tb);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut failures = 0;
                let mut conn: Option<TcpStream> = None;
                for _ in 0..750 {
                    let s = match conn.as_mut() {
                        Some(s) => s,
                        None => conn.insert(TcpStream::connect(at).await.unwrap()),
                    };
                    let head = b"POST /mod/quiz/processattempt.php HTTP/1.1\r\nHost: lms\r\nContent-Length: 21\r\n\r\n";
                    let sent = async {
                        s.write_all(head).await?;
                        s.write_all(b"answer=42&sesskey=abc").await?;
                        let mut out = Vec::new();
                        let mut buf = [0u8; 1024];
                        // The answer: headers, then a 5-byte body.
                        loop {
                            let n = s.read(&mut buf).await?;
                            if n == 0 {
                                return Err(std::io::Error::other("closed without an answer"));
                            }
                            out.extend_from_slice(&buf[..n]);
                            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n")
                                && out.len() >= end + 4 + 5
                            {
                                return Ok(String::from_utf8_lossy(&out[..end]).to_ascii_lowercase());
                            }
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(5), sent).await {
                        Ok(Ok(head)) if head.starts_with("http/1.1 200") => {
                            if head.contains("connection: close") {
                                conn = None;
                            }
                        }
                        _ => {
                            failures += 1;
                            conn = None;
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap();
    }
    assert_eq!(
        failed, 0,
        "POSTs failed on a connection closed without notice"
    );
}

/// With `maxInFlightPerEndpoint: 1`, six concurrent requests of one sticky
/// session run one at a time on their pod, through the queue.
#[tokio::test]
async fn sticky_requests_wait_for_their_pods_slot() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let pod = Backend::start(move |_req| {
        let (r, m) = (r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            text(200, "pod")
        }
    })
    .await;
    let yaml = config(
        &[&pod],
        "    stickySessions: {applicationCookie: MoodleSession}\n    maxInFlightPerEndpoint: 1\n    queue: {maxLength: 10, timeout: 5s}\n",
    );
    let tb = TestBalancer::start(&yaml).await;
    let http = client();
    let url = tb.url("/course/view.php");
    let answers = futures_util::future::join_all((0..6).map(|_| {
        let req = Request::get(&url)
            .header("cookie", "MoodleSession=learner1")
            .body(Full::default())
            .unwrap();
        send(&http, req)
    }))
    .await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok((s, _, _)) if s.as_u16() == 200)),
        "{answers:?}"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "sticky requests bypassed the limit"
    );
    let queued = metric(
        &tb,
        "usher_balancer_pool_queued_total",
        &["class=\"established\""],
    )
    .await;
    assert!(
        queued.unwrap_or(0.0) >= 5.0,
        "queued established: {queued:?}"
    );
}

/// A full queue: an established session's request takes the place of the
/// newest login, which gets 503 with Retry-After at once; established
/// requests are served before older logins.
#[tokio::test]
async fn established_sessions_are_admitted_ahead_of_new_ones() {
    let (pod, gate) = common::gated("pod").await;
    let yaml = config(
        &[&pod],
        "    stickySessions: {cookie: usher_affinity}\n    maxInFlightPerEndpoint: 1\n    queue: {maxLength: 2, timeout: 10s}\n",
    );
    let tb = TestBalancer::start(&yaml).await;
    let http = client();
    let url = tb.url("/");
    // A learner logs in: the answer pins them with a cookie.
    gate.add_permits(1);
    let (_, headers, _) = send(&http, Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // The pod is busy with one request; two logins fill the queue.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |name: &'static str, cookie: Option<String>| {
        let (http, url, order) = (http.clone(), url.clone(), order.clone());
        tokio::spawn(async move {
            let mut req = Request::get(&url);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let (status, headers, _) = send(&http, req.body(Full::default()).unwrap())
                .await
                .unwrap();
            order.lock().unwrap().push(name);
            (status.as_u16(), headers.get("retry-after").cloned())
        })
    };
    let busy = spawn("busy", None);
    let queued_at = |n: f64| {
        let tb = &tb;
        async move {
            eventually(Duration::from_secs(5), || async {
                metric(tb, "usher_balancer_pool_queue_depth", &["pool=\"web\""]).await == Some(n)
            })
            .await
            .is_some()
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async { pod.hits() == 2 })
            .await
            .is_some()
    );
    let login1 = spawn("login1", None);
    assert!(queued_at(1.0).await);
    let login2 = spawn("login2", None);
    assert!(queued_at(2.0).await);
    let attempt = spawn("attempt", Some(cookie));
    // The newest login is turned away at once.
    let (status, retry_after) = login2.await.unwrap();
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    // Three releases: the busy one, then the attempt before login1.
    gate.add_permits(3);
    assert_eq!(busy.await.unwrap().0, 200);
    assert_eq!(attempt.await.unwrap().0, 200);
    assert_eq!(login1.await.unwrap().0, 200);
    let order = order.lock().unwrap().clone();
    assert_eq!(order, ["login2", "busy", "attempt", "login1"]);
    assert_eq!(
        metric(
            &tb,
            "usher_balancer_pool_queue_rejected_total",
            &["reason=\"displaced\""]
        )
        .await,
        Some(1.0)
    );
}

/// A pod that fails real traffic but passes `/healthz` stays ejected for its
/// ejection time: the active check does not bring it back (Envoy's
/// behaviour; `activeCheckEndsEjection: true` asks for the other).
#[tokio::test]
async fn a_passing_health_check_does_not_end_an_ejection() {
    let bad = Backend::start(|req| async move {
        if req.uri().path() == "/healthz" {
            text(200, "ok")
        } else {
            text(500, "broken")
        }
    })
    .await;
    let good = Backend::named("good").await;
    let pool = "    healthCheck: {interval: 100ms, timeout: 100ms, rise: 1, fall: 2}\n    outlierDetection: {consecutive5xx: 2, baseEjectionTime: 30s, maxEjectionPercent: 50}\n    retries: {attempts: 0}\n";
    let tb = TestBalancer::start(&config(&[&bad, &good], pool)).await;
    let http = client();
    let mut errors = 0;
    for _ in 0..60 {
        let (status, _) = get(&http, &tb.url("/")).await.unwrap();
        if status != 200 {
            errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        errors <= 3,
        "{errors} of 60 requests got the broken pod's 500"
    );
}

/// An idle HTTP/2 connection is closed after `idleTimeout`.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let pod = Backend::named("pod").await;
    let yaml = with_limits(&pod, "idleTimeout: 1s");
    let tb = TestBalancer::start(&yaml).await;
    let tcp = TcpStream::connect(addr(&tb)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(tb.url("/"))
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        closed.is_ok(),
        "the idle HTTP/2 connection is still open after 5 s"
    );
}

/// A connection to the admin port that never sends a request is closed.
#[tokio::test]
async fn a_silent_admin_connection_is_closed() {
    let pod = Backend::named("pod").await;
    let tb = TestBalancer::start(&config(&[&pod], "")).await;
    let mut s = TcpStream::connect(tb.balancer.admin_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {read:?}"
    );
}

/// Past a listener's `maxConnections`, a new connection waits in the
/// backlog and is served once another closes; the process's soft open-file
/// limit was raised to the hard one.
#[tokio::test]
async fn connections_past_the_limit_wait_for_a_place() {
    let pod = Backend::named("pod").await;
    let yaml = with_limits(&pod, "maxConnections: 2");
    let tb = TestBalancer::start(&yaml).await;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert_eq!(soft, hard, "the soft open-file limit was not raised");
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr(&tb)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: lms\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        holders.push(s);
    }
    let mut third = TcpStream::connect(addr(&tb)).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: lms\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served past the limit"
    );
    drop(holders.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a place freed")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Headers that never finish get `408 Request Timeout`, as from HAProxy.
#[tokio::test]
async fn a_slow_request_gets_408() {
    let pod = Backend::named("pod").await;
    let yaml = with_limits(&pod, "headerReadTimeout: 500ms");
    let tb = TestBalancer::start(&yaml).await;
    let answer = raw(
        addr(&tb),
        b"GET / HTTP/1.1\r\nHost: lm",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

/// Ambiguous or credential-carrying targets get 400 and reach no pod.
#[tokio::test]
async fn malformed_request_targets_are_refused() {
    let pod = Backend::named("pod").await;
    let tb = TestBalancer::start(&config(&[&pod], "")).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.example.edu\r\nHost: b.example.edu\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: u:p@lms.example.edu\r\n\r\n",
        b"GET http://u:p@lms.example.edu/ HTTP/1.1\r\nHost: lms.example.edu\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let answer = raw(addr(&tb), request, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(pod.hits(), 0);
    let answer = raw(addr(&tb), b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer:?}"
    );
}

/// `Authorization: bearer …` works: the scheme is case-insensitive.
#[tokio::test]
async fn the_admin_bearer_scheme_is_case_insensitive() {
    let pod = Backend::named("pod").await;
    let yaml = config(&[&pod], "").replace(
        "admin:\n  bind: \"127.0.0.1:0\"\n",
        "admin:\n  bind: \"127.0.0.1:0\"\n  token: s3cret-token\n",
    );
    let tb = TestBalancer::start(&yaml).await;
    let http = client();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let req = Request::get(tb.admin_url("/status"))
            .header("authorization", format!("{scheme} s3cret-token"))
            .body(Full::default())
            .unwrap();
        let (status, _, _) = send(&http, req).await.unwrap();
        assert_eq!(status, 200, "{scheme}");
    }
}
