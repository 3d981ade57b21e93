//! Endpoint discovery over real sockets: an endpoints file polled for
//! changes, a DNS name served by a real dnsmasq on a loopback port, and
//! Kubernetes EndpointSlices from a mocked API server. Added endpoints take
//! traffic; removed or terminating ones drain: the requests they hold finish,
//! new requests go elsewhere, and they are forgotten once idle.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Backend, BoxFuture, Handler, TestBalancer, client, endpoint_state, eventually, get, text,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use usher_balancer::Options;

// ---------------------------------------------------------------------------
// Backends

/// A backend answering `200 <name>`: at once, after 100 ms for `/pause`,
/// and for `/slow` once `gate` has a permit (closed for the endpoint a test
/// drains, open otherwise).
struct Host {
    name: String,
    backend: Backend,
    gate: Arc<Semaphore>,
    slow_arrived: Arc<AtomicUsize>,
}

impl Host {
    fn serve(name: &str, listener: TcpListener, closed: bool) -> Self {
        let gate = Arc::new(Semaphore::new(if closed { 0 } else { 1_000 }));
        let slow_arrived = Arc::new(AtomicUsize::new(0));
        let (n, g, arrived) = (name.to_string(), gate.clone(), slow_arrived.clone());
        let handler: Handler = Arc::new(move |req| {
            let (name, gate, arrived) = (n.clone(), g.clone(), arrived.clone());
            Box::pin(async move {
                match req.uri().path() {
                    "/slow" => {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        drop(gate.acquire().await.unwrap());
                    }
                    "/pause" => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ => {}
                }
                text(200, name)
            }) as BoxFuture<_>
        });
        Self {
            name: name.to_string(),
            backend: Backend::serve(listener, handler),
            gate,
            slow_arrived,
        }
    }

    /// A host on a fresh port of 127.0.0.1.
    async fn local(name: &str, closed: bool) -> Self {
        Self::serve(
            name,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            closed,
        )
    }

    fn address(&self) -> String {
        self.backend.address()
    }

    /// Requests served.
    fn hits(&self) -> usize {
        self.backend.hits()
    }

    /// Lets the held `/slow` request finish.
    fn release(&self) {
        self.gate.add_permits(1_000);
    }
}

/// Listeners on one free port on each of `ips` (loopback addresses, which
/// Linux routes to `lo` for the whole of 127.0.0.0/8).
async fn same_port(ips: &[&str]) -> Vec<TcpListener> {
    for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port is free on every one of {ips:?}");
}

// ---------------------------------------------------------------------------
// Balancer and client helpers

/// One plain listener, an admin listener, and pool `web` whose `endpoints`
/// block is `endpoints_yaml` (indented 6 spaces).
fn config(endpoints_yaml: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n{endpoints_yaml}"
    )
}

/// `address → state` of every endpoint of `web` per `/status`.
async fn states(tb: &TestBalancer) -> BTreeMap<String, String> {
    let s = common::status(tb).await;
    s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "web")
        .flat_map(|p| p["endpoints"].as_array().unwrap().clone())
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits (10 s at most) until `/status` lists exactly `want` for `web`.
async fn await_states(tb: &TestBalancer, want: &[(&Host, &str)], what: &str) {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(h, s)| (h.address(), s.to_string()))
        .collect();
    let seen = eventually(Duration::from_secs(10), || async {
        states(tb).await == want
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: /status shows {:?}, expected {want:?}",
        states(tb).await
    );
}

/// Sends `n` GETs of `/pause` at once (every host answers it after 100 ms);
/// every one must be answered 200 by one of `allowed`. Sent together, they
/// pile up on the allowed endpoints: were an excluded endpoint still a
/// candidate, least-connections would pick it as the least loaded.
async fn only_reach(tb: &TestBalancer, n: usize, allowed: &[&Host]) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = tb.url("/pause");
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, body) = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        assert!(
            allowed.iter().any(|h| h.name == body),
            "request {i} went to `{body}`; only {:?} may take new requests",
            allowed.iter().map(|h| &h.name).collect::<Vec<_>>()
        );
    }
}

/// Sends GETs (200 at most) until every one of `hosts` has answered one;
/// every answer must come from `hosts`.
async fn reach_all(tb: &TestBalancer, hosts: &[&Host]) {
    let http = client();
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let (status, body) = get(&http, &tb.url("/")).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            hosts.iter().any(|h| h.name == body),
            "`{body}` answered; expected one of {:?}",
            hosts.iter().map(|h| &h.name).collect::<Vec<_>>()
        );
        seen.insert(body);
        if seen.len() == hosts.len() {
            return;
        }
    }
    panic!(
        "in 200 requests only {seen:?} answered, of {:?}",
        hosts.iter().map(|h| &h.name).collect::<Vec<_>>()
    );
}

/// Sends `/slow` requests until one reaches `victim` and is held there (the
/// other endpoints answer `/slow` at once); returns that request.
async fn hold_request_on(
    tb: &TestBalancer,
    victim: &Host,
) -> JoinHandle<Result<(StatusCode, String), String>> {
    let before = victim.slow_arrived.load(Ordering::SeqCst);
    let (url, name) = (tb.url("/slow"), victim.name.clone());
    let task = tokio::spawn(async move {
        let http = client();
        for _ in 0..200 {
            let r = get(&http, &url).await;
            if !matches!(&r, Ok((StatusCode::OK, body)) if *body != name) {
                return r;
            }
        }
        Err(format!("no /slow request reached {name}"))
    });
    let arrived = eventually(Duration::from_secs(10), || async {
        victim.slow_arrived.load(Ordering::SeqCst) > before
    })
    .await;
    assert!(arrived.is_some(), "no request was held on {}", victim.name);
    task
}

/// The drain of `victim` after its removal was published: listed as
/// draining with its held request, no new request, the held request
/// completes, then it is forgotten.
async fn assert_drains(
    tb: &TestBalancer,
    victim: &Host,
    held: JoinHandle<Result<(StatusCode, String), String>>,
    others: &[&Host],
) {
    let draining = eventually(Duration::from_secs(10), || async {
        endpoint_state(tb, "web", &victim.address()).await == "draining"
    })
    .await;
    assert!(
        draining.is_some(),
        "{} never drained: {:?}",
        victim.name,
        states(tb).await
    );
    let entry = common::endpoint_json(tb, "web", &victim.address())
        .await
        .unwrap();
    assert_eq!(entry["inFlight"], 1, "{entry}");
    let hits = victim.hits();
    only_reach(tb, 20, others).await;
    assert_eq!(
        victim.hits(),
        hits,
        "{} took new requests while draining",
        victim.name
    );
    assert_eq!(
        endpoint_state(tb, "web", &victim.address()).await,
        "draining",
        "{} stops being listed only once its request is done",
        victim.name
    );
    victim.release();
    assert_eq!(
        held.await.unwrap().unwrap(),
        (StatusCode::OK, victim.name.clone()),
        "the request in flight on a removed endpoint completes"
    );
    let gone = eventually(Duration::from_secs(10), || async {
        common::endpoint_json(tb, "web", &victim.address())
            .await
            .is_none()
    })
    .await;
    assert!(
        gone.is_some(),
        "{} is still listed after its drain: {:?}",
        victim.name,
        states(tb).await
    );
    assert_eq!(victim.hits(), hits);
}

// ---------------------------------------------------------------------------
// endpoints.file

/// Replaces `path` atomically: a sibling is written, then renamed over it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A pool fed only by `endpoints.file` at `path`, polled every 100 ms.
fn file_config(path: &Path) -> String {
    config(&format!(
        "      file:\n        path: \"{}\"\n        interval: 100ms\n",
        path.display()
    ))
}

fn yaml_list(hosts: &[&Host]) -> String {
    hosts
        .iter()
        .map(|h| format!("- \"{}\"\n", h.address()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_endpoints_added_take_traffic_and_removed_ones_drain() {
    let a = Host::local("a", true).await;
    let b = Host::local("b", false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    write_atomically(&file, &yaml_list(&[&a]));
    let tb = TestBalancer::start(&file_config(&file)).await;

    // Read at start: only `a`.
    await_states(&tb, &[(&a, "healthy")], "at start").await;
    only_reach(&tb, 5, &[&a]).await;

    // `b` added (in the object form, as JSON): it takes traffic.
    write_atomically(
        &file,
        &format!(
            "{{\"endpoints\": [\"{}\", {{\"address\": \"{}\"}}]}}\n",
            a.address(),
            b.address()
        ),
    );
    await_states(&tb, &[(&a, "healthy"), (&b, "healthy")], "after adding b").await;
    reach_all(&tb, &[&a, &b]).await;

    // `a` removed while a request is in flight on it.
    let held = hold_request_on(&tb, &a).await;
    write_atomically(&file, &yaml_list(&[&b]));
    assert_drains(&tb, &a, held, &[&b]).await;
    only_reach(&tb, 5, &[&b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_missing_endpoints_file_keeps_the_last_good_list() {
    let a = Host::local("a", false).await;
    let b = Host::local("b", false).await;
    let c = Host::local("c", false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    write_atomically(&file, &yaml_list(&[&a, &b]));
    let tb = TestBalancer::start(&file_config(&file)).await;
    await_states(&tb, &[(&a, "healthy"), (&b, "healthy")], "at start").await;

    // Invalid files: nothing of them is used, not even their valid entries.
    let invalid = [
        format!(
            "- \"{}\"\n- \"{}\"\n- not an address\n",
            a.address(),
            c.address()
        ),
        format!(
            "- \"{}\"\n- \"{}\"\n- \"{}\"\n",
            c.address(),
            c.address(),
            a.address()
        ),
        format!("- {{address: \"{}\", weight: 0}}\n", c.address()),
        format!("- {{address: \"{}\", colour: red}}\n", c.address()),
        "endpoints: just text\n".to_string(),
    ];
    for text in &invalid {
        write_atomically(&file, text);
        // Several polls of it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            states(&tb).await,
            BTreeMap::from([
                (a.address(), "healthy".to_string()),
                (b.address(), "healthy".to_string())
            ]),
            "after writing {text:?}"
        );
        only_reach(&tb, 4, &[&a, &b]).await;
    }
    // A missing file, too.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reach_all(&tb, &[&a, &b]).await;
    assert_eq!(c.hits(), 0);

    // The poller is still at work: a valid file is applied.
    write_atomically(&file, &yaml_list(&[&b, &c]));
    await_states(
        &tb,
        &[(&b, "healthy"), (&c, "healthy")],
        "after a valid file",
    )
    .await;
    reach_all(&tb, &[&b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_entry_in_the_endpoints_file_takes_no_new_requests() {
    let a = Host::local("a", false).await;
    let c = Host::local("c", false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    write_atomically(
        &file,
        &format!(
            "- \"{}\"\n- address: \"{}\"\n  draining: true\n",
            a.address(),
            c.address()
        ),
    );
    let tb = TestBalancer::start(&file_config(&file)).await;
    await_states(&tb, &[(&a, "healthy"), (&c, "draining")], "at start").await;
    only_reach(&tb, 20, &[&a]).await;
    assert_eq!(c.hits(), 0);
    // Past a sweep (every second) it is still listed: the file still names it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint_state(&tb, "web", &c.address()).await, "draining");

    // The flag is what keeps it out: swapped, the other one drains.
    write_atomically(
        &file,
        &format!(
            "- address: \"{}\"\n  draining: true\n- \"{}\"\n",
            a.address(),
            c.address()
        ),
    );
    await_states(&tb, &[(&a, "draining"), (&c, "healthy")], "after the swap").await;
    let a_hits = a.hits();
    only_reach(&tb, 20, &[&c]).await;
    assert_eq!(a.hits(), a_hits);
}

// ---------------------------------------------------------------------------
// endpoints.dns

/// A dnsmasq on a free loopback port answering from a hosts file the test
/// rewrites (dnsmasq reads it again on SIGHUP). Killed on drop.
struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn binary() -> &'static str {
        // Not on a non-root PATH on Debian.
        if Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        }
    }

    /// Starts it with `records` (`(ip, name)`).
    fn start(records: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Started as root, dnsmasq runs as `nobody`, which must read the file.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        let hosts = dir.path().join("hosts");
        let log = dir.path().join("dnsmasq.log");
        write_hosts(&hosts, records);
        for _ in 0..20 {
            let port = free_dns_port();
            let out = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(Self::binary())
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--log-facility=-",
                    "--local-ttl=0",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    &format!("--port={port}"),
                    &format!("--addn-hosts={}", hosts.display()),
                ])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run dnsmasq ({e}); install it: apt-get install dnsmasq-base")
                });
            // Ready once it has read the hosts file; gone if the port was taken.
            for _ in 0..100 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains(&format!("read {}", hosts.display())) {
                    return Self {
                        child: Some(child),
                        port,
                        hosts,
                        log,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Serves `records` from now on.
    fn set(&self, records: &[(&str, &str)]) {
        write_hosts(&self.hosts, records);
        let pid = self.child.as_ref().expect("running").id();
        // The shell's `kill` (no unsafe code here; and no need for procps).
        let status = Command::new("sh")
            .args(["-c", "kill -HUP \"$1\"", "sh", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP {pid} failed");
    }

    /// Stops it: lookups fail from now on.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_hosts(path: &Path, records: &[(&str, &str)]) {
    let text: String = records
        .iter()
        .map(|(ip, name)| format!("{ip} {name}\n"))
        .collect();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A port free for both UDP and TCP on 127.0.0.1 (just now).
fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for dnsmasq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_endpoints_follow_the_records_and_removed_addresses_drain() {
    let mut listeners = same_port(&["127.0.0.2", "127.0.0.3"]).await;
    let port = listeners[0].local_addr().unwrap().port();
    let y = Host::serve("y", listeners.pop().unwrap(), false);
    let x = Host::serve("x", listeners.pop().unwrap(), true);
    assert_eq!(x.address(), format!("127.0.0.2:{port}"));
    assert_eq!(y.address(), format!("127.0.0.3:{port}"));

    let mut dns = Dnsmasq::start(&[("127.0.0.2", "lms.test")]);
    let tb = TestBalancer::start(&config(&format!(
        "      dns:\n        name: lms.test\n        port: {port}\n        interval: 200ms\n        nameservers: [\"127.0.0.1:{}\"]\n",
        dns.port
    )))
    .await;
    let resolved = eventually(Duration::from_secs(10), || async {
        endpoint_state(&tb, "web", &x.address()).await == "healthy"
    })
    .await;
    assert!(
        resolved.is_some(),
        "lms.test never resolved to x: {:?}\ndnsmasq: {}",
        states(&tb).await,
        dns.log()
    );
    await_states(&tb, &[(&x, "healthy")], "one record").await;
    only_reach(&tb, 5, &[&x]).await;

    // The name resolves to both: both take traffic.
    dns.set(&[("127.0.0.2", "lms.test"), ("127.0.0.3", "lms.test")]);
    await_states(&tb, &[(&x, "healthy"), (&y, "healthy")], "two records").await;
    reach_all(&tb, &[&x, &y]).await;

    // x's record removed while a request is in flight on it.
    let held = hold_request_on(&tb, &x).await;
    dns.set(&[("127.0.0.3", "lms.test")]);
    assert_drains(&tb, &x, held, &[&y]).await;

    // Failed lookups keep the last good list.
    dns.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    await_states(&tb, &[(&y, "healthy")], "with the DNS server gone").await;
    only_reach(&tb, 5, &[&y]).await;
}

// ---------------------------------------------------------------------------
// endpoints.kubernetes

/// Response body of the fake API server: whole for lists, streamed for watches.
type ApiBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/lms/endpointslices";
const SELECTOR: &str = "kubernetes.io/service-name=moodle";

/// `(ready, serving, terminating)`.
type Conditions = (bool, bool, bool);
const READY: Conditions = (true, true, false);
const TERMINATING: Conditions = (false, true, true);
const NOT_READY: Conditions = (false, false, false);

/// An EndpointSlice of Service `moodle` with one `http` port.
fn slice(name: &str, port: u16, endpoints: &[(&str, Conditions)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, (ready, serving, terminating))| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "lms",
            "labels": {"kubernetes.io/service-name": "moodle"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

fn whole(body: Vec<u8>) -> ApiBody {
    let body = Bytes::from(body);
    StreamBody::new(futures_util::stream::once(async move { Ok(Frame::data(body)) }).boxed())
}

fn streamed(rx: mpsc::UnboundedReceiver<Bytes>) -> ApiBody {
    StreamBody::new(
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        })
        .boxed(),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The EndpointSlices of namespace `lms` as an API server keeps them: a
/// resource version bumped by every change, a log of watch events to resume
/// from, and the open watches.
#[derive(Default)]
struct ApiState {
    version: u64,
    slices: BTreeMap<String, Value>,
    events: Vec<(u64, Bytes)>,
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
    requests: Vec<String>,
}

impl ApiState {
    fn record(&mut self, kind: &str, object: &Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.events.push((self.version, line.clone()));
        self.watches.retain(|w| w.send(line.clone()).is_ok());
    }

    fn apply(&mut self, mut slice: Value) {
        self.version += 1;
        slice["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = slice["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if self.slices.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(kind, &slice);
        self.slices.insert(name, slice);
    }

    fn delete(&mut self, name: &str) {
        let mut slice = self.slices.remove(name).expect("no such slice");
        self.version += 1;
        slice["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.record("DELETED", &slice);
    }

    fn answer(&mut self, req: &Request<kube::client::Body>) -> Response<ApiBody> {
        self.requests.push(req.uri().to_string());
        let q = query(req.uri());
        if req.method() != Method::GET
            || req.uri().path() != SLICES_PATH
            || q.get("labelSelector").map(String::as_str) != Some(SELECTOR)
        {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("the fake API server does not serve {} {}", req.method(), req.uri()),
                "reason": "NotFound", "code": 404,
            });
            let mut resp = Response::new(whole(serde_json::to_vec(&status).unwrap()));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return resp;
        }
        if q.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel();
            for (_, line) in self.events.iter().filter(|(v, _)| *v > from) {
                tx.send(line.clone()).unwrap();
            }
            self.watches.push(tx);
            return Response::new(streamed(rx));
        }
        let list = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": self.slices.values().collect::<Vec<_>>(),
        });
        Response::new(whole(serde_json::to_vec(&list).unwrap()))
    }
}

/// A Kubernetes API server behind kube's tower-test mock: answers every
/// LIST and WATCH of the slices for as long as the test runs.
struct FakeApiServer {
    state: Arc<Mutex<ApiState>>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    fn start(initial: Vec<Value>) -> (Self, kube::Client) {
        let state = Arc::new(Mutex::new(ApiState::default()));
        for s in initial {
            state.lock().unwrap().apply(s);
        }
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<ApiBody>>();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = st.lock().unwrap().answer(&req);
                send.send_response(resp);
            }
        });
        (Self { state, task }, kube::Client::new(service, "default"))
    }

    fn apply(&self, slice: Value) {
        self.state.lock().unwrap().apply(slice);
    }

    fn delete(&self, name: &str) {
        self.state.lock().unwrap().delete(name);
    }

    /// Query parameters of every request so far.
    fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|u| query(&u.parse().unwrap()))
            .collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_ready_take_traffic_terminating_and_deleted_drain() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let mut listeners = same_port(&ips).await;
    let port = listeners[0].local_addr().unwrap().port();
    let d = Host::serve("d", listeners.pop().unwrap(), false);
    let c = Host::serve("c", listeners.pop().unwrap(), true);
    let b = Host::serve("b", listeners.pop().unwrap(), false);
    let a = Host::serve("a", listeners.pop().unwrap(), false);

    let (api, kube_client) = FakeApiServer::start(vec![
        slice(
            "moodle-abc",
            port,
            &[("127.0.0.2", READY), ("127.0.0.3", READY)],
        ),
        // d is not ready (starting, or failing its readiness probe): left out.
        slice(
            "moodle-def",
            port,
            &[("127.0.0.4", READY), ("127.0.0.5", NOT_READY)],
        ),
    ]);
    let tb = TestBalancer::start_with(
        &config("      kubernetes:\n        service: moodle\n        namespace: lms\n        port: http\n"),
        Options {
            watch_interval: None,
            kube_client: Some(kube_client),
        },
    )
    .await;

    // The initial list: ready endpoints take traffic.
    await_states(
        &tb,
        &[(&a, "healthy"), (&b, "healthy"), (&c, "healthy")],
        "after the initial list",
    )
    .await;
    reach_all(&tb, &[&a, &b, &c]).await;
    assert_eq!(d.hits(), 0);
    let requests = api.requests();
    assert_eq!(
        requests[0].get("watch"),
        None,
        "the first request is a LIST: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.get("watch").map(String::as_str) == Some("true")
                && q.get("resourceVersion").map(String::as_str) == Some("2")
                && q.get("labelSelector").map(String::as_str) == Some(SELECTOR)),
        "no WATCH from the listed resource version: {requests:?}"
    );

    // MODIFIED: a terminates (still serving): it drains, new requests avoid it.
    api.apply(slice(
        "moodle-abc",
        port,
        &[("127.0.0.2", TERMINATING), ("127.0.0.3", READY)],
    ));
    await_states(
        &tb,
        &[(&a, "draining"), (&b, "healthy"), (&c, "healthy")],
        "after a terminated",
    )
    .await;
    let a_hits = a.hits();
    only_reach(&tb, 20, &[&b, &c]).await;
    assert_eq!(a.hits(), a_hits, "a terminating endpoint took new requests");
    // Past a sweep it is still listed: the slice still has it as serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint_state(&tb, "web", &a.address()).await, "draining");

    // DELETED: c's slice goes while a request is in flight on c.
    let held = hold_request_on(&tb, &c).await;
    api.delete("moodle-def");
    assert_drains(&tb, &c, held, &[&b]).await;

    // MODIFIED: a is gone from its slice; ADDED: a new slice brings d, ready.
    api.apply(slice("moodle-abc", port, &[("127.0.0.3", READY)]));
    api.apply(slice("moodle-ghi", port, &[("127.0.0.5", READY)]));
    await_states(
        &tb,
        &[(&b, "healthy"), (&d, "healthy")],
        "after a left and d was added",
    )
    .await;
    reach_all(&tb, &[&b, &d]).await;
    assert_eq!(a.hits(), a_hits);
}
