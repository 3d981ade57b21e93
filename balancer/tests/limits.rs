//! Client-side limits and header rewriting over real sockets: slowloris,
//! oversized header blocks and bodies, forwarding headers and hop-by-hop
//! stripping.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, TestBalancer, client, send, text};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

const MAX_BODY: usize = 4096;

/// One listener with tight limits, an admin listener and pool `web`.
fn limited_config(backend: &Backend) -> String {
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    limits:\n      headerReadTimeout: 300ms\n      maxHeaderBytes: 16KiB\n      maxBodyBytes: {MAX_BODY}\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n        - \"{}\"\n",
        backend.address()
    )
}

fn public_addr(tb: &TestBalancer) -> SocketAddr {
    tb.balancer.listener_addr("public").unwrap()
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response (Content-Length or until EOF), or `None` when
/// the connection ends (EOF or reset) before a complete status line and headers.
async fn read_response(r: &mut OwnedReadHalf) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "not an HTTP/1.1 status line: {status_line:?}"
    );
    let status: u16 = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[head_end..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    loop {
        if length.is_some_and(|len| body.len() >= len) {
            break;
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Writes `request` (ignoring write errors: the balancer may hang up early)
/// while reading the response, within 10 s.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Option<RawResponse> {
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    // The writer half is handed back so that it is not dropped (which would
    // half-close the socket) before the response has been read.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        w
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), read_response(&mut r))
        .await
        .expect("no response within 10 s");
    drop(writer.await);
    resp
}

/// What a backend saw of each request body.
#[derive(Debug, Clone, PartialEq)]
enum BodySeen {
    /// The body arrived complete, with this many bytes.
    Complete(usize),
    /// The body broke off after this many bytes.
    Broken(usize),
}

/// A backend that reads every request body to the end and records the result.
async fn body_recording_backend() -> (Backend, Arc<Mutex<Vec<BodySeen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let backend = Backend::start(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            let outcome = loop {
                match body.frame().await {
                    None => break BodySeen::Complete(total),
                    Some(Ok(frame)) => total += frame.data_ref().map_or(0, Bytes::len),
                    Some(Err(_)) => break BodySeen::Broken(total),
                }
            };
            log.lock().unwrap().push(outcome.clone());
            text(200, format!("{outcome:?}"))
        }
    })
    .await;
    (backend, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_after_header_read_timeout() {
    let backend = Backend::named("lms").await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;
    let (mut r, mut w) = TcpStream::connect(public_addr(&tb))
        .await
        .unwrap()
        .into_split();

    let started = Instant::now();
    w.write_all(b"GET /course/view.php?id=7 HTTP/1.1\r\nHost: lms.example.edu\r\n")
        .await
        .unwrap();
    // Trickle one header byte every 50 ms, never finishing the header block.
    let trickle = tokio::spawn(async move {
        let line = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in line {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        w
    });

    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        closed.is_ok(),
        "the balancer kept a trickling connection open for 3 s (headerReadTimeout is 300ms)"
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}, before headerReadTimeout (300ms) could have expired"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow client: {text:?}"
    );
    trickle.abort();
    assert_eq!(
        backend.hits(),
        0,
        "an incomplete request must never reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_header_read_timeout() {
    let backend = Backend::named("lms").await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;

    // Connects and never sends a byte.
    let silent = async {
        let mut s = TcpStream::connect(public_addr(&tb)).await.unwrap();
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
    };
    // Sends the first bytes of the HTTP/2 prior-knowledge preface, then stalls.
    let stalled_preface = async {
        let mut s = TcpStream::connect(public_addr(&tb)).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
    };
    let (silent, stalled) = tokio::join!(silent, stalled_preface);
    match silent {
        Err(_) => panic!(
            "a connection that sends nothing was kept open for 3 s (headerReadTimeout is 300ms)"
        ),
        Ok(Ok(n)) => assert_eq!(n, 0, "expected the connection to be closed"),
        Ok(Err(_)) => {} // reset: closed as well
    }
    match stalled {
        Err(_) => {
            panic!("a stalled HTTP/2 preface was kept open for 3 s (headerReadTimeout is 300ms)")
        }
        Ok(Ok(n)) => assert_eq!(n, 0, "expected the connection to be closed"),
        Ok(Err(_)) => {}
    }

    // A prompt client on the same listener is still served.
    let (status, _, body) = send(
        &client(),
        Request::get(tb.url("/")).body(Full::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "lms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_block_gets_431() {
    let backend = Backend::named("lms").await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;
    let addr = public_addr(&tb);

    // 12 KiB of headers fit under maxHeaderBytes (16KiB)...
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: lms.example.edu\r\nCookie: MoodleSession={}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    let resp = raw_exchange(addr, fits.into_bytes())
        .await
        .expect("no response to a 12 KiB header block");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"lms");
    assert_eq!(backend.hits(), 1);

    // ...100 KiB do not (hyper's own default limit would have let them through).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: lms.example.edu\r\nCookie: MoodleSession={}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let resp = raw_exchange(addr, big.into_bytes())
        .await
        .expect("connection closed without a 431");
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_eq!(
        backend.hits(),
        1,
        "the oversized request must not reach the backend"
    );

    // Many small headers adding up to more than the limit count as well.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: lms.example.edu\r\n");
    for i in 0..90 {
        many.push_str(&format!("X-Filler-{i}: {}\r\n", "b".repeat(300)));
    }
    many.push_str("\r\n");
    let resp = raw_exchange(addr, many.into_bytes())
        .await
        .expect("connection closed without a 431");
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_with_content_length_gets_413() {
    let (backend, seen) = body_recording_backend().await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;
    let addr = public_addr(&tb);

    // Exactly maxBodyBytes is accepted and forwarded whole.
    let mut ok = format!("POST /mod/assign/upload.php HTTP/1.1\r\nHost: lms.example.edu\r\nContent-Length: {MAX_BODY}\r\n\r\n").into_bytes();
    ok.extend(std::iter::repeat_n(b'x', MAX_BODY));
    let resp = raw_exchange(addr, ok).await.expect("no response");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(*seen.lock().unwrap(), vec![BodySeen::Complete(MAX_BODY)]);

    // One byte more is refused up front, without bothering the backend.
    let mut big = format!("POST /mod/assign/upload.php HTTP/1.1\r\nHost: lms.example.edu\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).into_bytes();
    big.extend(std::iter::repeat_n(b'x', MAX_BODY + 1));
    let resp = raw_exchange(addr, big).await.expect("no response");
    assert_eq!(resp.status, 413, "{resp:?}");
    assert!(
        resp.headers.iter().any(|(n, _)| n == "x-request-id"),
        "{resp:?}"
    );

    // A much larger declared body gets the same answer.
    let mut huge = format!("POST /mod/assign/upload.php HTTP/1.1\r\nHost: lms.example.edu\r\nContent-Length: {}\r\n\r\n", 10 * MAX_BODY).into_bytes();
    huge.extend(std::iter::repeat_n(b'y', 10 * MAX_BODY));
    let resp = raw_exchange(addr, huge).await.expect("no response");
    assert_eq!(resp.status, 413, "{resp:?}");

    assert_eq!(
        backend.hits(),
        1,
        "oversized requests must not reach the backend"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

fn chunked(total: usize, chunk: usize) -> Vec<u8> {
    let mut req = b"POST /mod/assign/upload.php HTTP/1.1\r\nHost: lms.example.edu\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        req.extend(format!("{n:x}\r\n").into_bytes());
        req.extend(std::iter::repeat_n(b'z', n));
        req.extend(b"\r\n");
        left -= n;
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_gets_413_and_never_completes_upstream() {
    let (backend, seen) = body_recording_backend().await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;
    let addr = public_addr(&tb);

    // A chunked body within the limit is streamed through whole.
    let resp = raw_exchange(addr, chunked(MAX_BODY, 1024))
        .await
        .expect("no response");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(*seen.lock().unwrap(), vec![BodySeen::Complete(MAX_BODY)]);

    // Twice the limit, in 1 KiB chunks: the length is unknown up front, so the
    // balancer starts forwarding and must cut it off at the limit.
    let resp = raw_exchange(addr, chunked(2 * MAX_BODY, 1024))
        .await
        .expect("no response");
    assert_eq!(resp.status, 413, "{resp:?}");

    // Whatever reached the backend must have broken off, at most at the
    // limit. (Whether the cut-off request reached the backend at all depends
    // on timing; give a late one a moment to show up.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = common::eventually(Duration::from_secs(10), || async {
        seen.lock().unwrap().len() == backend.hits()
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        settled.is_some(),
        "the backend is still waiting for the rest of a cut-off body: {seen:?}"
    );
    assert!(seen.len() <= 2, "the oversized body was retried: {seen:?}");
    for outcome in &seen[1..] {
        match outcome {
            BodySeen::Broken(n) => {
                assert!(*n <= MAX_BODY, "the backend got {n} bytes, over the limit")
            }
            BodySeen::Complete(n) => {
                panic!("the backend saw an oversized chunked body complete ({n} bytes)")
            }
        }
    }
}

/// A backend answering with the request headers it saw, one `name: value` per line.
async fn header_echo_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let mut out = String::new();
        for (name, value) in req.headers() {
            out.push_str(&format!(
                "{name}: {}\n",
                value.to_str().unwrap_or("<binary>")
            ));
        }
        text(200, out)
    })
    .await
}

fn parse_echo(body: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in body.lines() {
        let (n, v) = line.split_once(": ").unwrap_or((line, ""));
        map.entry(n.to_string()).or_default().push(v.to_string());
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_ids_and_hop_by_hop_stripping() {
    let backend = header_echo_backend().await;
    let tb = TestBalancer::start(&limited_config(&backend)).await;
    let c = client();

    let req = Request::get(tb.url("/course/view.php?id=7"))
        .header("host", "LMS.Example.edu")
        .header("x-request-id", "lms-req-42")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example.com")
        .header("connection", "keep-alive, X-Session-Hint")
        .header("x-session-hint", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic dXNlcjpwYXNz")
        .header("x-course", "7")
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(&c, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let seen = parse_echo(&body);
    let one = |name: &str| -> &str {
        match seen.get(name).map(Vec::as_slice) {
            Some([v]) => v.as_str(),
            other => panic!("backend saw {name}: {other:?}; all headers:\n{body}"),
        }
    };
    assert_eq!(one("x-forwarded-for"), "203.0.113.7, 127.0.0.1");
    assert_eq!(
        one("x-forwarded-proto"),
        "http",
        "a client-sent X-Forwarded-Proto must be replaced"
    );
    assert_eq!(
        one("x-forwarded-host"),
        "lms.example.edu",
        "a client-sent X-Forwarded-Host must be replaced"
    );
    assert_eq!(one("host"), "LMS.Example.edu", "Host is passed through");
    assert_eq!(
        one("x-request-id"),
        "lms-req-42",
        "the client's request id is propagated"
    );
    assert_eq!(one("x-course"), "7", "end-to-end headers are kept");
    for hop in [
        "connection",
        "x-session-hint",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(
            !seen.contains_key(hop),
            "hop-by-hop header `{hop}` reached the backend:\n{body}"
        );
    }
    assert_eq!(
        headers.get("x-request-id").unwrap(),
        "lms-req-42",
        "the request id is echoed to the client"
    );

    // Without a client id the balancer makes one up, and both sides see the same.
    let (status, headers, body) =
        send(&c, Request::get(tb.url("/")).body(Full::default()).unwrap())
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
    let generated = headers
        .get("x-request-id")
        .expect("a request id in the response")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(
        generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    let seen = parse_echo(&body);
    assert_eq!(seen.get("x-request-id"), Some(&vec![generated.clone()]));
    assert_eq!(
        seen.get("x-forwarded-for"),
        Some(&vec!["127.0.0.1".to_string()])
    );

    // Every request gets its own id.
    let (_, headers, _) = send(&c, Request::get(tb.url("/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_ne!(
        headers.get("x-request-id").unwrap().to_str().unwrap(),
        generated
    );
}
