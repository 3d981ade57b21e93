//! The `usher-balancer` command line: `check`, errors, `--help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn usher(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usher-balancer"))
        .args(args)
        .current_dir(cwd)
        .env_remove("USHER_LOG_FORMAT")
        .output()
        .unwrap()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `yaml` as `balancer.yaml` in a fresh directory.
fn config_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

const VALID: &str = "listeners:\n  - name: public\n    bind: \"127.0.0.1:8080\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static: [\"127.0.0.1:9001\"]\n";

#[test]
fn check_accepts_the_example_file_and_summarises_it() {
    // As documented at the top of the file: run from the repository root.
    let out = usher(&["check", "-c", "examples/balancer.yaml"], &workspace());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert_eq!(lines[0], "examples/balancer.yaml: OK");
    let section = |name: &str| {
        let start = lines
            .iter()
            .position(|l| *l == name)
            .unwrap_or_else(|| panic!("no `{name}` section:\n{text}"));
        lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(section("listeners:"), ["public 127.0.0.1:8080 plain HTTP"]);
    assert_eq!(section("admin:"), ["admin 127.0.0.1:9901 no token"]);
    assert_eq!(
        section("routes:"),
        [
            "*.example.edu/webservice/ -> moodle (rate limit 50/s burst 100)",
            "*/login/ -> moodle (cache 1s)",
            "*/ -> moodle"
        ]
    );
    assert_eq!(
        section("pools:"),
        [
            "maintenance 1 endpoint(s), leastConnections, no active checks",
            "moodle 3 endpoint(s), leastConnections, checks GET /healthz every 2s",
            "sticky cookie usher_affinity for 8h; slow start 30s; 64 in flight per endpoint, \
             queue 2000 for 10s; backup pool maintenance"
        ]
    );
}

#[test]
fn check_accepts_an_absolute_path_from_anywhere() {
    let example = workspace().join("examples/balancer.yaml");
    let out = usher(
        &["check", "--config", example.to_str().unwrap()],
        &std::env::temp_dir(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("{}: OK\n", example.display())),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_summarises_tls_and_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["lms.example.edu".to_string()]).unwrap();
    std::fs::write(dir.path().join("lms.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("lms.key"), ck.signing_key.serialize_pem()).unwrap();
    let yaml = "listeners:\n  - name: public-tls\n    bind: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - {certFile: lms.pem, keyFile: lms.key}\nadmin:\n  bind: \"127.0.0.1:9901\"\n  token: s3cret-s3cret\nroutes:\n  - pool: web\npools:\n  web:\n    balance: powerOfTwoChoices\n    endpoints:\n      static: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n";
    let path = dir.path().join("balancer.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = usher(&["check", "-c", "balancer.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("TLS, 1 certificate(s): lms.example.edu"),
        "{text}"
    );
    assert!(text.contains("token required"), "{text}");
    assert!(!text.contains("s3cret"), "the token is printed:\n{text}");
    assert!(
        text.contains("2 endpoint(s), powerOfTwoChoices, no active checks"),
        "{text}"
    );
}

#[test]
fn check_rejects_an_unknown_field_naming_file_and_path() {
    let (_dir, path) = config_file(&format!("{VALID}    healthCheck:\n      intervall: 2s\n"));
    let out = usher(&["check", "-c", path.to_str().unwrap()], Path::new("/"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "", "no summary for an invalid file");
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: {}: field `pools.web.healthCheck.intervall`: ",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("unknown field `intervall`"), "{err}");
}

#[test]
fn check_rejects_an_invalid_value_naming_file_and_path() {
    let (_dir, path) = config_file(&VALID.replace(
        "  - pool: web\n",
        "  - pool: web\n  - pathPrefix: /moodle/\n    pool: moodle\n",
    ));
    let out = usher(&["check", "-c", path.to_str().unwrap()], Path::new("/"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "error: {}: field `routes[1].pool`: no pool named `moodle`; defined pools: web",
            path.display()
        )
    );
}

#[test]
fn check_rejects_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.yaml");
    let out = usher(&["check", "-c", path.to_str().unwrap()], Path::new("/"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: {}: cannot read the file", path.display())),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn check_without_a_file_is_a_usage_error() {
    let out = usher(&["check"], Path::new("/"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--config <FILE>"), "{}", stderr(&out));
}

#[test]
fn run_with_an_invalid_config_exits_1_naming_the_field() {
    let (_dir, path) = config_file(&VALID.replace("127.0.0.1:9001", "127.0.0.1"));
    let out = usher(
        &["run", "-c", path.to_str().unwrap(), "--log-format", "text"],
        Path::new("/"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: field `pools.web.endpoints.static[0]`",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("is not `host:port`"), "{err}");
}

#[test]
fn help_describes_run_and_check() {
    let out = usher(&["--help"], Path::new("/"));
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("run") && text.contains("check"), "{text}");

    let out = usher(&["run", "--help"], Path::new("/"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for option in [
        "--config <FILE>",
        "--log-format",
        "--watch-interval",
        "SIGHUP",
        "SIGTERM",
        "[default: 1s]",
    ] {
        assert!(
            text.contains(option),
            "`run --help` lacks {option}:\n{text}"
        );
    }

    let out = usher(&["check", "--help"], Path::new("/"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("--config <FILE>"), "{text}");
    assert!(text.contains("exit 0 (valid) or 1 (invalid)"), "{text}");
    assert!(!text.contains("--watch-interval"), "{text}");

    let out = usher(&["help", "check"], Path::new("/"));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--config <FILE>"));
}

#[test]
fn version_is_printed() {
    let out = usher(&["--version"], Path::new("/"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("usher-balancer {}", env!("CARGO_PKG_VERSION"))
    );
}
