//! The real binary and real signals: SIGTERM drains and exits, SIGHUP
//! reloads; and its logs (the per-listener access log).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, client, eventually, gated, get};
use serde_json::Value;

/// The balancer binary running `run -c <file>`, its JSON log collected from stderr.
/// Killed (SIGKILL, by its own pid) if still running when dropped.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
    config: PathBuf,
    _dir: tempfile::TempDir,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl Proc {
    /// Writes `yaml` and starts the binary with file watching off, so only
    /// signals reload; waits for both `listening` log lines.
    async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("balancer.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_usher-balancer"))
            .args(["run", "-c"])
            .arg(&config)
            .args(["--watch-interval", "0s", "--log-format", "json"])
            .env("USHER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                sink.lock().unwrap().push(value);
            }
        });
        let mut proc = Self {
            child,
            log,
            config,
            _dir: dir,
            listener: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let listening = proc.wait_log("listening").await;
        assert_eq!(listening["listener"], "public");
        proc.listener = listening["address"].as_str().unwrap().parse().unwrap();
        proc.admin = proc.wait_log("admin listening").await["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        proc
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends `signal` (`TERM`, `HUP`) to this process only.
    fn signal(&self, signal: &str) {
        // `libc::kill` would need `unsafe`, which the workspace forbids.
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// The first log line with `message`, if logged yet.
    fn logged(&self, message: &str) -> Option<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["message"] == message)
            .cloned()
    }

    /// Access log lines so far.
    fn access_lines(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["target"] == "usher::access")
            .count()
    }

    /// Waits (up to 10 s) for an access log line.
    async fn wait_access_log(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["target"] == "usher::access")
                .cloned();
            if let Some(v) = found {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no access log line: {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn messages(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits (up to 10 s) for a log line with `message`.
    async fn wait_log(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.logged(message) {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited ({status}) before logging `{message}`: {:?}",
                    self.messages()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `{message}` log line: {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the config file atomically.
    fn rewrite(&self, yaml: &str) {
        let tmp = self.config.with_extension("new");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Listener and admin on free ports, `/slow/` to pool `slow`, the rest to pool `web`.
fn two_pools(slow: &Backend, web: &[&Backend], shutdown: &str) -> String {
    let list: String = web
        .iter()
        .map(|b| format!("        - \"{}\"\n", b.address()))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\n{shutdown}routes:\n  - pathPrefix: /slow/\n    pool: slow\n  - pool: web\npools:\n  slow:\n    endpoints:\n      static: [\"{}\"]\n  web:\n    endpoints:\n      static:\n{list}",
        slow.address()
    )
}

async fn readyz(p: &Proc) -> Option<u16> {
    get(&client(), &p.admin_url("/readyz"))
        .await
        .ok()
        .map(|(s, _)| s.as_u16())
}

fn refused(addr: SocketAddr) -> bool {
    matches!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_unready_stops_accepting_drains_and_exits_0() {
    let (slow, gate) = gated("slow").await;
    let fast = Backend::named("fast").await;
    let drain_timeout = Duration::from_secs(20);
    let delay = Duration::from_millis(1500);
    let mut p = Proc::start(&two_pools(
        &slow,
        &[&fast],
        "shutdown:\n  delay: 1500ms\n  drainTimeout: 20s\n",
    ))
    .await;
    assert_eq!(readyz(&p).await, Some(200));
    assert_eq!(get(&client(), &p.url("/")).await.unwrap().1, "fast");

    // A slow request (a course backup download) is in flight.
    let url = p.url("/slow/backup.mbz");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    let arrived = eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await;
    assert!(
        arrived.is_some(),
        "the slow request never reached its backend"
    );

    p.signal("TERM");
    let sent = Instant::now();

    // First /readyz turns 503 while the listener still serves (shutdown.delay).
    let unready = eventually(Duration::from_secs(5), || async {
        readyz(&p).await == Some(503)
    })
    .await;
    assert!(unready.is_some(), "/readyz never turned 503");
    let during_delay = get(&client(), &p.url("/")).await;
    if sent.elapsed() < delay {
        assert_eq!(
            during_delay.unwrap().1,
            "fast",
            "the listener stopped before shutdown.delay passed"
        );
    }

    // Then the listener closes: new connections are refused while the
    // in-flight request is still running and the process is still up.
    let closed = eventually(Duration::from_secs(10), || async { refused(p.listener) }).await;
    assert!(closed.is_some(), "the listener kept accepting connections");
    assert!(
        sent.elapsed() >= delay,
        "the listener closed {:?} after SIGTERM, before shutdown.delay",
        sent.elapsed()
    );
    assert!(
        p.running(),
        "the process exited before its in-flight request finished"
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended early: {:?}",
        in_flight.await
    );
    assert_eq!(
        readyz(&p).await,
        Some(503),
        "the admin listener serves until the drain ends"
    );

    // The in-flight request completes, then the process exits 0.
    gate.add_permits(1);
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
    let exit = p.wait_exit(drain_timeout).await;
    assert!(
        exit.is_some(),
        "still running {:?} after SIGTERM",
        sent.elapsed()
    );
    assert!(exit.unwrap().success(), "exit status {:?}", exit);
    assert!(sent.elapsed() < delay + drain_timeout);
    assert!(p.logged("drained").is_some(), "{:?}", p.messages());
    assert!(
        p.logged("drain timeout reached; closing the remaining connections")
            .is_none()
    );
    assert_eq!(
        p.logged("stopped accepting connections").unwrap()["listener"],
        "public"
    );
    assert_eq!(slow.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_off_requests_that_outlast_the_drain_timeout() {
    let (slow, gate) = gated("slow").await;
    let fast = Backend::named("fast").await;
    let mut p = Proc::start(&two_pools(
        &slow,
        &[&fast],
        "shutdown:\n  drainTimeout: 1s\n",
    ))
    .await;

    let url = p.url("/slow/never");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    let arrived = eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await;
    assert!(
        arrived.is_some(),
        "the slow request never reached its backend"
    );

    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.is_some(), "the drain timeout did not end the process");
    assert!(exit.unwrap().success(), "exit status {:?}", exit);
    assert!(
        p.logged("drain timeout reached; closing the remaining connections")
            .is_some(),
        "{:?}",
        p.messages()
    );
    assert!(p.logged("drained").is_none());
    // The request that outlasted the drain timeout was cut, not answered.
    let cut = in_flight.await.unwrap();
    assert!(cut.is_err(), "{cut:?}");
    gate.add_permits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_it_on_error() {
    let (slow, _gate) = gated("slow").await;
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let mut p = Proc::start(&two_pools(&slow, &[&a], "")).await;
    let http = client();

    // With file watching off, a rewritten file changes nothing by itself
    // (waiting longer than the default 1 s watch interval).
    p.rewrite(&two_pools(&slow, &[&a, &b], ""));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        assert_eq!(get(&http, &p.url("/")).await.unwrap().1, "a");
    }
    assert_eq!(b.hits(), 0);

    // SIGHUP: the new endpoint gets traffic.
    p.signal("HUP");
    p.wait_log("config reloaded").await;
    let mut seen_b = false;
    for _ in 0..40 {
        let (status, body) = get(&http, &p.url("/")).await.unwrap();
        assert_eq!(status, 200);
        seen_b |= body == "b";
    }
    assert!(
        seen_b && b.hits() > 0,
        "the new endpoint got no traffic after SIGHUP"
    );

    // SIGHUP with a broken file: rejected, logged with the field, the process keeps serving a and b.
    let broken = two_pools(&slow, &[&b], "").replace("routes:\n", "routes:\n  - pool: moodle\n");
    p.rewrite(&broken);
    p.signal("HUP");
    let rejected = p
        .wait_log("config reload rejected; the previous config keeps serving")
        .await;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("routes[0].pool"),
        "{rejected}"
    );
    let before = a.hits();
    for _ in 0..40 {
        assert_eq!(get(&http, &p.url("/")).await.unwrap().0, 200);
    }
    assert!(a.hits() > before, "the old config (with a) stopped serving");
    assert!(p.running());
    let (_, metrics) = get(&http, &p.admin_url("/metrics")).await.unwrap();
    assert!(
        metrics.contains("usher_balancer_config_reloads_total{result=\"success\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("usher_balancer_config_reloads_total{result=\"failure\"} 1\n"),
        "{metrics}"
    );

    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

#[test]
fn a_config_that_cannot_start_exits_1() {
    // The listener's port is taken: the error names the listener and the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("balancer.yaml");
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"{addr}\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static: [\"127.0.0.1:9\"]\n"
    );
    std::fs::write(&config, yaml).unwrap();
    let out = run_binary(&config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind listener `public` to {addr}")),
        "{stderr}"
    );
    drop(taken);
}

fn run_binary(config: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_usher-balancer"))
        .args(["run", "-c"])
        .arg(config)
        .args(["--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the balancer did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_one_json_line_per_request_when_enabled() {
    let (slow, _gate) = gated("slow").await;
    let a = Backend::named("a").await;
    let yaml = two_pools(&slow, &[&a], "").replace(
        "    bind: \"127.0.0.1:0\"\nadmin:",
        "    bind: \"127.0.0.1:0\"\n    accessLog: true\nadmin:",
    );
    assert!(yaml.contains("accessLog: true"), "{yaml}");
    let mut p = Proc::start(&yaml).await;
    let http = client();
    let (status, _) = get(&http, &p.url("/course/view.php?id=7&sesskey=secret"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let line = p.wait_access_log().await;
    assert_eq!(line["target"], "usher::access", "{line}");
    assert_eq!(line["listener"], "public");
    assert_eq!(line["method"], "GET");
    assert_eq!(
        line["path"], "/course/view.php",
        "the query string is not logged"
    );
    assert_eq!(line["status"], 200);
    assert_eq!(line["pool"], "web");
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{line}"
    );
    assert!(!line.to_string().contains("secret"));

    // Off (the default): no access lines.
    p.rewrite(&two_pools(&slow, &[&a], ""));
    p.signal("HUP");
    p.wait_log("config reloaded").await;
    let before = p.access_lines();
    // New connections follow the reloaded listener settings.
    let (status, _) = get(&client(), &p.url("/")).await.unwrap();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.access_lines(), before, "logged with accessLog off");
}
