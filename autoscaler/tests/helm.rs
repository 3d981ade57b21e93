//! The Helm chart (`charts/usher`) through real Helm 4.1.4: `helm lint
//! --strict`, values.schema.json as Helm applies it, and the sticky-session
//! secret that every balancer replica shares (issue #16):
//!
//! - with the default values the chart renders one Secret
//!   `<release>-usher-balancer-sticky` (random, `helm.sh/resource-policy:
//!   keep`), mounted read-only at /etc/usher/sticky by the balancer's pod
//!   template, so every replica reads the same secret;
//! - every pool with stickySessions that sets neither `secret` nor
//!   `secretFile` reads `/etc/usher/sticky/<key>`; a pool's own setting stays;
//! - `existingSecret` mounts the operator's Secret and renders none;
//! - the replicas are spread over nodes by default.
//!
//! Helm comes from `USHER_HELM`, else `~/.cache/usher/helm-4.1.4/helm`;
//! `tests/helm/install.sh` installs it there (tests/run.sh runs it and sets
//! `USHER_HELM`). Without it these tests fail: they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

#[path = "support/chart.rs"]
mod support;

use support::{chart, find, parse_manifests, repo, run, text};

/// The release name: the chart's fullname is then `exam-usher`.
const RELEASE: &str = "exam";
/// `usher.balancer.fullname` for [`RELEASE`].
const BALANCER: &str = "exam-usher-balancer";
/// The Secret the chart generates: `<balancer fullname>-sticky`.
const STICKY_SECRET: &str = "exam-usher-balancer-sticky";
/// Where the balancer pods mount it, and the file of its default key.
const STICKY_DIR: &str = "/etc/usher/sticky";
const STICKY_FILE: &str = "/etc/usher/sticky/secret";

/// The Helm binary, or a panic telling how to install it.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let install = "run `bash tests/helm/install.sh` (it installs Helm 4.1.4 into \
                       ~/.cache/usher/helm-4.1.4; tests/run.sh does it and sets USHER_HELM)";
        let path = match std::env::var_os("USHER_HELM") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let home = std::env::var_os("HOME")
                    .unwrap_or_else(|| panic!("neither USHER_HELM nor HOME is set; {install}"));
                PathBuf::from(home).join(".cache/usher/helm-4.1.4/helm")
            }
        };
        assert!(
            path.is_file(),
            "Helm not found at {}: {install}",
            path.display()
        );
        path
    })
}

/// Helm's own directories (cache, config, data), private to this test
/// process so that nothing of the user's Helm setup leaks in.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn helm_cmd() -> Command {
    let home = helm_home();
    let mut cmd = Command::new(helm());
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env_remove("HELM_NAMESPACE");
    cmd
}

/// `helm template` of the chart as release [`RELEASE`] in namespace `lms`
/// with `args` (values options), or the failed command's output.
fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = run(helm_cmd()
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", "lms"])
        .args(args));
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_manifests(&String::from_utf8(out.stdout).unwrap()))
}

fn template_ok(args: &[&str]) -> Vec<Value> {
    template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

/// A values file in a temporary directory (kept alive by the returned guard).
fn values_file(values: &Value) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.yaml");
    // JSON is YAML.
    std::fs::write(&path, serde_json::to_string_pretty(values).unwrap()).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn balancer_deployment(docs: &[Value]) -> &Value {
    find(docs, "Deployment", BALANCER)
}

fn balancer_container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "balancer")
        .unwrap_or_else(|| panic!("no balancer container in {deployment}"))
}

/// The balancer config of the rendered ConfigMap, parsed.
fn balancer_config(docs: &[Value]) -> Value {
    let text = find(docs, "ConfigMap", BALANCER)["data"]["balancer.yaml"]
        .as_str()
        .expect("the ConfigMap has balancer.yaml");
    serde_saphyr::from_str(text)
        .unwrap_or_else(|e| panic!("balancer.yaml is not YAML: {e}\n{text}"))
}

/// The Secret the pod template mounts at /etc/usher/sticky (read-only, the
/// whole directory), or None when nothing is mounted there.
fn mounted_sticky_secret(deployment: &Value) -> Option<String> {
    let c = balancer_container(deployment);
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let mount = mounts.iter().find(|m| m["mountPath"] == STICKY_DIR)?;
    assert_eq!(mount["readOnly"], true, "{mount}");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees a rotated Secret: {mount}"
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {} in {volumes:?}", mount["name"]));
    Some(
        volume["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("the volume at {STICKY_DIR} is not a Secret: {volume}"))
            .to_string(),
    )
}

/// Standard base64 (what `b64enc` writes), decoded.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("{text:?} is not base64")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Every pool with stickySessions reads `file` unless it set `secret` or
/// `secretFile` itself (`own` lists those, with what they set).
fn assert_sticky_pools(config: &Value, file: &str, own: &[(&str, &str, &str)]) {
    let pools = config["pools"].as_object().expect("pools is a map");
    for (name, pool) in pools {
        let Some(sticky) = pool.get("stickySessions") else {
            continue;
        };
        if let Some((_, key, value)) = own.iter().find(|(p, _, _)| p == name) {
            assert_eq!(sticky[*key], *value, "pool {name} lost its own {key}");
            let other = if *key == "secret" {
                "secretFile"
            } else {
                "secret"
            };
            assert!(
                sticky.get(other).is_none(),
                "pool {name} got {other} beside its own {key}: {sticky}"
            );
        } else {
            assert_eq!(
                sticky["secretFile"], file,
                "pool {name} does not sign with the shared secret: {sticky}"
            );
            assert!(sticky.get("secret").is_none(), "pool {name}: {sticky}");
        }
    }
}

#[test]
fn helm_lint_strict_passes() {
    let moodle = repo().join("examples/moodle-values.yaml");
    let moodle = moodle.to_str().unwrap();
    for args in [
        vec![],
        vec!["--values", moodle],
        vec!["--set", "balancer.stickySecret.existingSecret=my-sticky"],
        vec!["--set", "balancer.stickySecret.create=false"],
    ] {
        let out = run(helm_cmd()
            .args(["lint", "--strict"])
            .arg(chart())
            .args(&args));
        assert!(
            out.status.success(),
            "helm lint --strict {args:?}:\n{}",
            text(&out)
        );
    }
}

#[test]
fn helm_applies_the_strict_schema_to_sticky_secret() {
    for (set, path) in [
        ("balancer.stickySecret.creat=true", "stickySecret"),
        ("balancer.stickySecret.key=", "key"),
        (
            "balancer.stickySecret.existingSecret=My_Secret",
            "existingSecret",
        ),
    ] {
        match template(&["--set", set]) {
            Ok(_) => panic!("--set {set} rendered"),
            Err(e) => assert!(
                e.contains("schema") && e.contains(path),
                "--set {set}: expected a schema error about {path}:\n{e}"
            ),
        }
    }
}

#[test]
fn the_default_values_share_one_generated_secret_between_the_replicas() {
    let docs = template_ok(&[]);
    let secrets = of_kind(&docs, "Secret");
    assert_eq!(
        secrets.len(),
        1,
        "expected one Secret, got {:?}",
        secrets
            .iter()
            .map(|s| &s["metadata"]["name"])
            .collect::<Vec<_>>()
    );
    let secret = secrets[0];
    assert_eq!(secret["metadata"]["name"], STICKY_SECRET);
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "an uninstall would drop the secret and break every cookie: {secret}"
    );
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    let data = secret["data"].as_object().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["secret"],
        "one key, balancer.stickySecret.key"
    );
    let value = base64_decode(data["secret"].as_str().unwrap());
    assert_eq!(value.len(), 48, "{value:?}");
    assert!(value.iter().all(u8::is_ascii_alphanumeric), "{value:?}");
    // Random: `helm template` cannot look the Secret up, so each render
    // makes a new one (an upgrade reuses the stored one through lookup).
    let again = template_ok(&[]);
    assert_ne!(
        find(&again, "Secret", STICKY_SECRET)["data"]["secret"],
        data["secret"],
        "the secret is a constant of the chart"
    );

    // Two replicas, one pod template: every replica mounts that Secret.
    let d = balancer_deployment(&docs);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(mounted_sticky_secret(d).as_deref(), Some(STICKY_SECRET));
    // The default config has no sticky pool; whatever has stickySessions
    // reads the mounted file.
    assert_sticky_pools(&balancer_config(&docs), STICKY_FILE, &[]);

    // examples/moodle-values.yaml: its pool follows MoodleSession and gets
    // the shared secret too.
    let moodle = repo().join("examples/moodle-values.yaml");
    let docs = template_ok(&["--values", moodle.to_str().unwrap()]);
    let config = balancer_config(&docs);
    assert!(config["pools"]["moodle"].get("stickySessions").is_some());
    assert_sticky_pools(&config, STICKY_FILE, &[]);
    assert_eq!(
        config["pools"]["moodle"]["stickySessions"]["secretFile"],
        STICKY_FILE
    );
    assert_eq!(
        mounted_sticky_secret(balancer_deployment(&docs)).as_deref(),
        Some(STICKY_SECRET)
    );
}

/// Pools with and without stickySessions, two of them with their own secret.
fn sticky_pools() -> Value {
    let endpoints = json!({"static": ["10.0.0.1:8080"]});
    json!({"balancer": {"config": {
        "routes": [{"pool": "cookie"}],
        "pools": {
            "lms": null,
            "cookie": {"endpoints": endpoints, "stickySessions": {"cookie": "lms_affinity", "ttl": "4h"}},
            "defaults": {"endpoints": endpoints, "stickySessions": {}},
            "app": {"endpoints": endpoints, "stickySessions": {"applicationCookie": "MoodleSession"}},
            "own-file": {"endpoints": endpoints, "stickySessions": {"secretFile": "/etc/lms/affinity.key"}},
            "own-secret": {"endpoints": endpoints, "stickySessions": {"secret": "0123456789abcdef0123"}},
            "plain": {"endpoints": endpoints},
        },
    }}})
}

const OWN: &[(&str, &str, &str)] = &[
    ("own-file", "secretFile", "/etc/lms/affinity.key"),
    ("own-secret", "secret", "0123456789abcdef0123"),
];

#[test]
fn pools_that_set_their_own_secret_keep_it() {
    let (_dir, file) = values_file(&sticky_pools());
    let docs = template_ok(&["--values", &file]);
    let config = balancer_config(&docs);
    assert_eq!(config["pools"].as_object().unwrap().len(), 6);
    assert_sticky_pools(&config, STICKY_FILE, OWN);
    for pool in ["cookie", "defaults", "app"] {
        assert_eq!(
            config["pools"][pool]["stickySessions"]["secretFile"], STICKY_FILE,
            "{pool}"
        );
    }
    // The pool's other settings are untouched.
    assert_eq!(
        config["pools"]["cookie"]["stickySessions"],
        json!({"cookie": "lms_affinity", "ttl": "4h", "secretFile": STICKY_FILE})
    );
    assert!(config["pools"]["plain"].get("stickySessions").is_none());

    // The same through --set-json, and with another key.
    let docs = template_ok(&[
        "--set-json",
        r#"balancer.config.pools.lms.stickySessions={"secretFile":"/run/lms.key"}"#,
        "--set-json",
        r#"balancer.config.pools.web={"endpoints":{"static":["10.0.0.2:80"]},"stickySessions":{}}"#,
        "--set",
        "balancer.stickySecret.key=affinity",
    ]);
    let config = balancer_config(&docs);
    assert_eq!(
        config["pools"]["lms"]["stickySessions"]["secretFile"],
        "/run/lms.key"
    );
    assert_eq!(
        config["pools"]["web"]["stickySessions"]["secretFile"],
        "/etc/usher/sticky/affinity"
    );
    let secret = find(&docs, "Secret", STICKY_SECRET);
    assert!(secret["data"]["affinity"].is_string(), "{secret}");
}

#[test]
fn an_existing_secret_is_mounted_and_none_is_generated() {
    let (_dir, file) = values_file(&sticky_pools());
    let docs = template_ok(&[
        "--values",
        &file,
        "--set",
        "balancer.stickySecret.existingSecret=my-sticky",
    ]);
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "a Secret was rendered beside existingSecret"
    );
    let d = balancer_deployment(&docs);
    assert_eq!(mounted_sticky_secret(d).as_deref(), Some("my-sticky"));
    assert_sticky_pools(&balancer_config(&docs), STICKY_FILE, OWN);

    // Also with create off: existingSecret alone decides.
    let docs = template_ok(&[
        "--set",
        "balancer.stickySecret.existingSecret=my-sticky",
        "--set",
        "balancer.stickySecret.create=false",
    ]);
    assert!(of_kind(&docs, "Secret").is_empty());
    assert_eq!(
        mounted_sticky_secret(balancer_deployment(&docs)).as_deref(),
        Some("my-sticky")
    );
}

#[test]
fn without_a_shared_secret_nothing_is_mounted_or_filled_in() {
    let (_dir, file) = values_file(&sticky_pools());
    let docs = template_ok(&[
        "--values",
        &file,
        "--set",
        "balancer.stickySecret.create=false",
    ]);
    assert!(of_kind(&docs, "Secret").is_empty());
    assert_eq!(mounted_sticky_secret(balancer_deployment(&docs)), None);
    let config = balancer_config(&docs);
    for pool in ["cookie", "defaults", "app"] {
        assert!(
            config["pools"][pool]["stickySessions"]
                .get("secretFile")
                .is_none(),
            "{pool}"
        );
    }
    // Without the balancer, no Secret either.
    let docs = template_ok(&["--set", "balancer.enabled=false"]);
    assert!(of_kind(&docs, "Secret").is_empty());
}

#[test]
fn the_default_pod_template_spreads_the_replicas_over_nodes() {
    let docs = template_ok(&[]);
    let d = balancer_deployment(&docs);
    let pod = &d["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let selects_the_balancers = |selector: &Value| {
        let m = selector["matchLabels"].as_object();
        m.is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
            && m.unwrap().get("app.kubernetes.io/component") == Some(&json!("balancer"))
    };
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"];
    let mut terms: Vec<&Value> = Vec::new();
    if let Some(preferred) = anti["preferredDuringSchedulingIgnoredDuringExecution"].as_array() {
        terms.extend(preferred.iter().map(|w| &w["podAffinityTerm"]));
    }
    if let Some(required) = anti["requiredDuringSchedulingIgnoredDuringExecution"].as_array() {
        terms.extend(required);
    }
    let by_anti_affinity = terms.iter().any(|t| {
        t["topologyKey"] == "kubernetes.io/hostname" && selects_the_balancers(&t["labelSelector"])
    });
    let by_spread = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c["topologyKey"] == "kubernetes.io/hostname"
                    && selects_the_balancers(&c["labelSelector"])
            })
        });
    assert!(
        by_anti_affinity || by_spread,
        "the balancer replicas may share a node: {}",
        pod["spec"]
    );
}
