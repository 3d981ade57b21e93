//! Shared by the chart tests (`chart.rs`, `k8s_chart.rs`, `helm.rs`): paths,
//! finding rendered objects, and the chart rendered by
//! `tests/chart/render.go` (Go's text/template with Debian's sprig v3 and
//! yaml.v2, Helm's own functions re-implemented), which `chart.rs` and
//! `k8s_chart.rs` still use; `helm.rs` renders with real Helm.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart() -> PathBuf {
    repo().join("charts/usher")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Output of a finished command, or a panic naming it.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? tests/run.sh installs it)")
    })
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The renderer (`tests/chart/render.go`: text/template, Debian's sprig and
/// yaml.v2, Helm's functions re-implemented), built once per test process.
pub fn renderer() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("usher-render");
        let out = run(Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(repo().join("tests/chart/render.go"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0"));
        assert!(
            out.status.success(),
            "building tests/chart/render.go failed (needs Debian's golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v2-dev; tests/run.sh installs them):\n{}",
            text(&out)
        );
        bin
    })
}

/// What the chart renders in namespace `lms` for release `usher` with the
/// values files and `extra` values on top: the objects, and NOTES.txt.
pub fn render(files: &[PathBuf], extra: &Value) -> Result<(Vec<Value>, String), String> {
    render_in("lms", "v1.30.0", files, extra)
}

/// [`render`] in `namespace`, for a cluster of `kube_version` (`vX.Y.Z`,
/// Helm's `.Capabilities.KubeVersion`).
pub fn render_in(
    namespace: &str,
    kube_version: &str,
    files: &[PathBuf],
    extra: &Value,
) -> Result<(Vec<Value>, String), String> {
    let dir = tempfile::tempdir().unwrap();
    let extra_file = dir.path().join("extra.yaml");
    // JSON is YAML.
    std::fs::write(&extra_file, serde_json::to_string(extra).unwrap()).unwrap();
    let mut cmd = Command::new(renderer());
    cmd.arg("-chart")
        .arg(chart())
        .args(["-release", "usher", "-namespace", namespace])
        .args(["-kube-version", kube_version]);
    for f in files.iter().chain([&extra_file]) {
        cmd.arg("-f").arg(f);
    }
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(text(&out));
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (manifests, notes) = stdout.split_once("# NOTES.txt\n").unwrap_or((&stdout, ""));
    Ok((parse_manifests(manifests), notes.to_string()))
}

/// The YAML documents of a multi-document stream, empty ones left out.
pub fn parse_manifests(stream: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let doc: Value = serde_saphyr::from_str(current)
            .unwrap_or_else(|e| panic!("a rendered document is not YAML: {e}\n{current}"));
        if !doc.is_null() {
            docs.push(doc);
        }
        current.clear();
    };
    for line in stream.lines() {
        if line == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// The rendered object of `kind` named `name`, or a panic listing what there is.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} in {have:?}")
        })
}
