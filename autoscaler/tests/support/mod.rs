//! Helpers shared by the end-to-end tests that run the real
//! `usher-autoscaler local` binary with `lms-sim` copies.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Builds `lms-sim` with the cargo that runs this test and returns its path.
/// `cargo test -p usher-autoscaler` builds only this package's binaries, and
/// `CARGO_BIN_EXE_*` names only those, so the bin of `usher-examples` is
/// built here. `cargo test` releases the build lock before running tests; a
/// lock held by another cargo makes this wait, bounded.
pub fn build_lms_sim() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "-p",
        "usher-examples",
        "--bin",
        "lms-sim",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    // Variables cargo sets for this test only; a nested cargo must not see them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| key.starts_with(p))
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let mut child = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build lms-sim: {e}"));
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "building lms-sim took over 10 minutes (a cargo lock held elsewhere?):\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "`cargo build -p usher-examples --bin lms-sim` failed ({status}):\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let exe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "lms-sim")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no lms-sim executable:\n{stdout}"));
    assert!(exe.is_file(), "{} does not exist", exe.display());
    exe
}

/// Pids of live `lms-sim` processes whose arguments carry `token`.
pub fn sims_running(token: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.ends_with("lms-sim"))
                && args.iter().any(|a| a.contains(token))
        })
        .collect()
}

pub fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The autoscaler process. Dropping it (a failed assertion included) stops
/// it and any copy it left, and prints its log when the test failed.
pub struct Autoscaler {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// The token in its copies' arguments.
    pub token: String,
}

impl Autoscaler {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits up to `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.child.try_wait().unwrap() {
            return Some(s);
        }
        kill("-TERM", self.child.id());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The address of its `/metrics`, from its "serving /metrics" log line.
    pub async fn metrics_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "serving /metrics")
                .and_then(|v| v["addr"].as_str()?.parse().ok());
            if let Some(addr) = found {
                return addr;
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("the autoscaler exited at start ({s})");
            }
            assert!(
                Instant::now() < deadline,
                "the autoscaler never said where it serves /metrics"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its scaling and copy events, one line each.
    pub fn timeline(&self) -> String {
        const EVENTS: [&str; 6] = [
            "scaling",
            "started a copy",
            "a copy is ready",
            "draining a copy",
            "stopped a drained copy",
            "a copy exited; replacing it",
        ];
        let mut out = String::new();
        for v in self
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let msg = v["message"].as_str().unwrap_or_default();
            if !EVENTS.contains(&msg) {
                continue;
            }
            let time = v["timestamp"].as_str().unwrap_or_default();
            let time = time.get(11..23).unwrap_or(time);
            let fields: Vec<String> = ["from", "to", "index", "port", "reason"]
                .iter()
                .filter(|k| !v[**k].is_null())
                .map(|k| format!("{k}={}", v[*k]))
                .collect();
            out.push_str(&format!("  {time} {msg} {}\n", fields.join(" ")));
        }
        out
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in sims_running(&self.token) {
            kill("-KILL", pid);
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- autoscaler log (last 150 lines) ---\n{}\n--- end ---",
                lines[lines.len().saturating_sub(150)..].join("\n")
            );
        }
    }
}

/// The value of the first sample of `name` in Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A token unique to this process and moment: copies are named
/// `<token>-<index>`, so every response names its copy and leftovers can be
/// found by it.
pub fn token(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// What `usher-autoscaler local` is started with.
pub struct Local<'a> {
    /// Where its log goes (`autoscaler.log`).
    pub dir: &'a Path,
    /// The policy file.
    pub policy: &'a Path,
    /// The balancer's endpoints file.
    pub endpoints: &'a Path,
    /// `--drain`.
    pub drain: &'a str,
    /// `--initial`.
    pub initial: u32,
    /// The `lms-sim` binary.
    pub lms_sim: &'a Path,
    /// `lms-sim`'s arguments besides `--port` and `--name`.
    pub args: &'a [&'a str],
    /// Names the copies `<token>-<index>`.
    pub token: &'a str,
}

impl Local<'_> {
    /// Starts it, logging JSON at `info` to `dir/autoscaler.log`, metrics on
    /// a free loopback port.
    pub fn start(&self) -> Autoscaler {
        let log = self.dir.join("autoscaler.log");
        let log_file = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_usher-autoscaler"))
            .arg("local")
            .arg("--policy")
            .arg(self.policy)
            .arg("--endpoints-file")
            .arg(self.endpoints)
            .args(["--metrics-bind", "127.0.0.1:0", "--drain", self.drain])
            .args(["--initial", &self.initial.to_string()])
            .args(["--log-format", "json", "--"])
            .arg(self.lms_sim)
            .args(["--port", "{port}"])
            .args(self.args)
            .arg("--name")
            .arg(format!("{}-{{index}}", self.token))
            .env("USHER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Autoscaler {
            child,
            log,
            token: self.token.to_string(),
        }
    }
}
