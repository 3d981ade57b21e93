//! The Helm chart (`charts/usher`), the Grafana dashboard and the alerts,
//! checked without Helm (there is none here):
//!
//! - every template parses as a Go template and every `.Values` reference
//!   exists (`tests/chart/tplcheck.go`, Go's own `text/template/parse`);
//! - `values.schema.json` accepts values.yaml and examples/moodle-values.yaml
//!   and rejects unknown and mistyped values; its ScalingPolicy spec is the
//!   CRD's, made strict;
//! - the chart renders (`tests/chart/render.go`: Go's text/template with
//!   sprig v3 and Helm's functions re-implemented, see support/chart.rs)
//!   with the default values, examples/moodle-values.yaml and options, into
//!   the objects promised: probes, preStop, security context, anti-affinity,
//!   leader election env, Roles equal to the rules files; the rendered
//!   balancer config and policies pass the balancer's and the autoscaler's
//!   own validation; inconsistent values fail the render with a reason;
//! - the CRD file is what `usher-autoscaler crd` prints; the RBAC rules come
//!   only from `files/`;
//! - the alerts pass `promtool check rules` and `promtool test rules`, the
//!   dashboard's queries are valid PromQL, and both use only metric names the
//!   binaries export.
//!
//! `USHER_BLESS=1 cargo test -p usher-autoscaler --test chart` rewrites the
//! generated files (the CRD and the schema's policy spec) instead of failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

#[path = "support/chart.rs"]
mod support;

use support::{chart, find, read, render, repo, run, text, yaml};

fn bless() -> bool {
    std::env::var_os("USHER_BLESS").is_some()
}

/// Helm's merge of user values over the defaults: maps merge key by key,
/// anything else replaces, and null deletes the key.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(slot) = b.get_mut(k)
                    && slot.is_object()
                    && v.is_object()
                {
                    merge(slot, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn defaults() -> Value {
    yaml(&chart().join("values.yaml"))
}

fn moodle_values() -> Value {
    let mut v = defaults();
    merge(&mut v, &yaml(&repo().join("examples/moodle-values.yaml")));
    v
}

// ---------------------------------------------------------------- templates

/// The template checker, built once per test process.
fn tplcheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("usher-tplcheck");
        let out = run(Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(repo().join("tests/chart/tplcheck.go"))
            // One file, standard library only: GOPATH mode, no module download.
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0"));
        assert!(
            out.status.success(),
            "building tests/chart/tplcheck.go failed:\n{}",
            text(&out)
        );
        bin
    })
}

/// Runs the checker on `chart_dir` with `values`.
fn check_templates(chart_dir: &Path, values: &Value) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("values.json");
    std::fs::write(&json, serde_json::to_string(values).unwrap()).unwrap();
    run(Command::new(tplcheck())
        .arg("-chart")
        .arg(chart_dir)
        .arg("-values")
        .arg(&json))
}

#[test]
fn every_template_parses_and_every_values_reference_exists() {
    let out = check_templates(&chart(), &defaults());
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

/// A copy of the chart's templates (and the chart's files) to break.
fn chart_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    copy(&chart().join("templates"), &dir.path().join("templates"));
    copy(
        &chart().join("templates/tests"),
        &dir.path().join("templates/tests"),
    );
    dir
}

#[test]
fn the_template_checker_fails_on_a_bad_template_or_an_unknown_values_key() {
    let expect_failure = |edit: &dyn Fn(&Path), values: &Value, message: &str| {
        let dir = chart_copy();
        edit(dir.path());
        let out = check_templates(dir.path(), values);
        let all = text(&out);
        assert!(!out.status.success(), "the checker passed:\n{all}");
        assert!(all.contains(message), "expected `{message}` in:\n{all}");
    };
    let append = |file: &'static str, extra: &'static str| {
        move |dir: &Path| {
            let path = dir.join("templates").join(file);
            let mut t = read(&path);
            t.push_str(extra);
            std::fs::write(&path, t).unwrap();
        }
    };
    let values = defaults();
    // A syntax error.
    expect_failure(
        &append("balancer-pdb.yaml", "{{ if .Values.balancer.enabled }}\n"),
        &values,
        "unexpected EOF",
    );
    // An unknown function.
    expect_failure(
        &append("balancer-pdb.yaml", "{{ toYamll .Values.balancer }}\n"),
        &values,
        r#"function "toYamll" not defined"#,
    );
    // A values key that does not exist, directly, through `with` and
    // through a variable.
    expect_failure(
        &append("balancer-pdb.yaml", "{{ .Values.balancer.replica }}\n"),
        &values,
        ".Values.balancer.replica is not in values.yaml",
    );
    expect_failure(
        &append(
            "balancer-pdb.yaml",
            "{{ with .Values.autoscaler }}{{ .dryRunn }}{{ end }}\n",
        ),
        &values,
        ".Values.autoscaler.dryRunn is not in values.yaml",
    );
    expect_failure(
        &append(
            "balancer-pdb.yaml",
            "{{ $b := .Values.balancer }}{{ $b.image.tags }}\n",
        ),
        &values,
        ".Values.balancer.image.tags is not in values.yaml",
    );
    // An include of a template nobody defines.
    expect_failure(
        &append("balancer-pdb.yaml", "{{ include \"usher.nope\" . }}\n"),
        &values,
        r#"include "usher.nope": no such template is defined"#,
    );
    // A values key no template uses.
    let mut unused = values.clone();
    unused["balancer"]["replicaCount"] = json!(3);
    expect_failure(
        &|_: &Path| {},
        &unused,
        ".Values.balancer.replicaCount is not used by any template",
    );
}

#[test]
fn the_rbac_roles_include_the_rules_files_and_no_template_writes_rules() {
    for (template, file) in [
        ("autoscaler-rbac.yaml", "files/autoscaler-rules.yaml"),
        ("balancer-rbac.yaml", "files/balancer-rules.yaml"),
    ] {
        let t = read(&chart().join("templates").join(template));
        let role = t
            .split("---")
            .find(|doc| doc.contains("\nkind: Role\n"))
            .unwrap_or_else(|| panic!("{template} has no Role"));
        let include = format!("rules:\n  {{{{- .Files.Get \"{file}\" | nindent 2 }}}}\n");
        assert!(
            role.contains(&include),
            "{template}: the Role's rules are not `{include}`:\n{role}"
        );
        assert!(chart().join(file).is_file(), "{file} missing");
    }
    // No template writes a rule of its own.
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let t = read(&path);
            for word in ["apiGroups:", "verbs:", "resources: ["] {
                assert!(
                    !t.contains(word),
                    "{}: inline RBAC rule (`{word}`)",
                    path.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------- rendering

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn has_arg(c: &Value, arg: &str) -> bool {
    c["args"].as_array().unwrap().iter().any(|a| a == arg)
}

fn env_field(c: &Value, name: &str) -> Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn the_default_values_render_the_balancer_and_the_autoscaler() {
    let (docs, notes) = render(&[], &json!({})).unwrap_or_else(|e| panic!("{e}"));
    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let expected: BTreeSet<String> = [
        "Deployment/usher-balancer",
        "Service/usher-balancer",
        "Service/usher-balancer-admin",
        "ConfigMap/usher-balancer",
        "Secret/usher-balancer-sticky",
        "PodDisruptionBudget/usher-balancer",
        "ServiceAccount/usher-balancer",
        "Role/usher-balancer",
        "RoleBinding/usher-balancer",
        "Deployment/usher-autoscaler",
        "Service/usher-autoscaler",
        "ServiceAccount/usher-autoscaler",
        "Role/usher-autoscaler",
        "RoleBinding/usher-autoscaler",
        "ConfigMap/usher-dashboard",
        "Pod/usher-balancer-test-readyz",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds, expected);

    // The balancer.
    let d = find(&docs, "Deployment", "usher-balancer");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "usher");
    assert_eq!(labels["app.kubernetes.io/component"], "balancer");
    assert!(
        pod["metadata"]["annotations"]
            .get("checksum/config")
            .is_none(),
        "the config is reloaded live: no checksum by default"
    );
    let c = container(d, "balancer");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    // Before Kubernetes 1.30 the sleep action is left out (the API server
    // would refuse the Deployment); an exec handler stays.
    for (version, extra, kept) in [
        ("v1.29.4", json!({}), false),
        ("v1.31.0", json!({}), true),
        (
            "v1.25.0",
            json!({"balancer": {"preStop": {"sleep": null, "exec": {"command": ["sleep", "5"]}}}}),
            true,
        ),
    ] {
        let (docs, _) = support::render_in("lms", version, &[], &extra).unwrap();
        let c = container(find(&docs, "Deployment", "usher-balancer"), "balancer");
        assert_eq!(c.get("lifecycle").is_some(), kept, "{version} {extra}: {c}");
    }
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 60);
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("admin".to_string(), 9901)]
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "balancer"
    );
    let config = find(&docs, "ConfigMap", "usher-balancer")["data"]["balancer.yaml"]
        .as_str()
        .unwrap();
    let parsed = balancer_config(config);
    assert!(!usher_balancer::summary::render(&parsed).is_empty());
    let config: Value = serde_saphyr::from_str(config).unwrap();
    assert_eq!(
        config["pools"]["lms"]["endpoints"]["kubernetes"]["namespace"], "lms",
        "the release namespace is filled in"
    );
    let svc = find(&docs, "Service", "usher-balancer");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["selector"], pod_selector(d));
    let admin = find(&docs, "Service", "usher-balancer-admin");
    assert_eq!(admin["spec"]["type"], "ClusterIP");
    assert_eq!(admin["spec"]["ports"][0]["port"], 9901);
    let pdb = find(&docs, "PodDisruptionBudget", "usher-balancer");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], pod_selector(d));
    let test = find(&docs, "Pod", "usher-balancer-test-readyz");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let cmd = test["spec"]["containers"][0]["command"].as_array().unwrap();
    assert_eq!(
        cmd.last().unwrap(),
        "http://usher-balancer-admin:9901/readyz"
    );

    // The autoscaler.
    let d = find(&docs, "Deployment", "usher-autoscaler");
    assert_eq!(d["spec"]["replicas"], 2);
    let c = container(d, "autoscaler");
    assert_eq!(env_field(c, "POD_NAME"), "metadata.name");
    assert_eq!(env_field(c, "USHER_NAMESPACE"), "metadata.namespace");
    assert_eq!(c["args"][0], "run");
    for arg in [
        "--metrics-bind=0.0.0.0:9902",
        "--lease-name=usher-autoscaler",
        "--lease-duration=15s",
    ] {
        assert!(has_arg(c, arg), "{arg} missing: {}", c["args"]);
    }
    assert!(!has_arg(c, "--dry-run") && !has_arg(c, "--no-leader-election"));
    assert_eq!(c["ports"][0]["containerPort"], 9902);
    assert_eq!(
        d["spec"]["template"]["spec"]["serviceAccountName"],
        "usher-autoscaler"
    );
    // The Roles' rules are the files', exactly.
    for (role, file) in [
        ("usher-autoscaler", "files/autoscaler-rules.yaml"),
        ("usher-balancer", "files/balancer-rules.yaml"),
    ] {
        assert_eq!(
            find(&docs, "Role", role)["rules"],
            yaml(&chart().join(file)),
            "{role}"
        );
        let binding = find(&docs, "RoleBinding", role);
        assert_eq!(binding["subjects"][0]["name"], role);
        assert_eq!(binding["subjects"][0]["namespace"], "lms");
    }
    // The dashboard, byte for byte.
    let dash = find(&docs, "ConfigMap", "usher-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_text = dash["data"]["usher-dashboard.json"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(json_text).unwrap(),
        serde_json::from_str::<Value>(&read(&chart().join("files/usher-dashboard.json"))).unwrap()
    );
    assert!(notes.contains("helm test usher -n lms"), "{notes}");
}

/// The rendered balancer config as the balancer validates it, or a panic
/// with the reason. The pods read the chart's sticky-session secret from the
/// Secret mounted at /etc/usher/sticky; here a file with a secret as long as
/// the generated one stands in for it.
fn balancer_config(text: &str) -> usher_balancer::config::Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s".repeat(48)).unwrap();
    let local = text.replace(
        "/etc/usher/sticky/",
        &format!("{}/", dir.path().to_str().unwrap()),
    );
    usher_balancer::config::from_str(&local, Path::new("/etc/usher/config/balancer.yaml"))
        .unwrap_or_else(|e| panic!("the rendered config is invalid: {e}\n{text}"))
}

fn pod_selector(deployment: &Value) -> Value {
    deployment["spec"]["selector"]["matchLabels"].clone()
}

#[test]
fn the_moodle_values_render_a_valid_config_policy_monitors_and_alerts() {
    let (docs, _) = render(&[repo().join("examples/moodle-values.yaml")], &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = find(&docs, "ConfigMap", "usher-balancer")["data"]["balancer.yaml"]
        .as_str()
        .unwrap();
    balancer_config(config);
    let config: Value = serde_saphyr::from_str(config).unwrap();
    assert!(
        config["pools"].get("lms").is_none(),
        "the default pool was not removed"
    );
    assert_eq!(
        config["pools"]["moodle"]["stickySessions"]["applicationCookie"],
        "MoodleSession"
    );
    assert_eq!(
        config["pools"]["moodle"]["stickySessions"]["secretFile"], "/etc/usher/sticky/secret",
        "the pool signs with the chart's shared secret"
    );
    // The policy, as the autoscaler reads it, scraping this release's balancers.
    let policy = find(&docs, "ScalingPolicy", "moodle-exam-day");
    assert_eq!(policy["metadata"]["namespace"], "lms");
    let d = find(&docs, "Deployment", "usher-balancer");
    let selector = &policy["spec"]["metricsSource"]["pods"]["selector"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(
            &d["spec"]["template"]["metadata"]["labels"][k], v,
            "the policy's selector does not match the balancer pods"
        );
    }
    assert_eq!(policy["spec"]["metricsSource"]["pods"]["port"], 9901);
    let text = serde_saphyr::to_string(policy).unwrap();
    let parsed =
        usher_autoscaler::policy::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.max_replicas, 80);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        90
    );
    // Monitoring: two ServiceMonitors selecting the admin and metrics
    // Services, and the alerts file as the PrometheusRule.
    let sm = find(&docs, "ServiceMonitor", "usher-balancer");
    let admin = find(&docs, "Service", "usher-balancer-admin");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &admin["metadata"]["labels"][k], v,
            "ServiceMonitor misses the admin Service"
        );
    }
    let public = find(&docs, "Service", "usher-balancer");
    assert!(
        sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .any(|(k, v)| &public["metadata"]["labels"][k] != v),
        "the ServiceMonitor also selects the public Service"
    );
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let sm = find(&docs, "ServiceMonitor", "usher-autoscaler");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let rule = find(&docs, "PrometheusRule", "usher");
    assert_eq!(
        rule["spec"]["groups"],
        yaml(&chart().join("files/alerts.yaml"))["groups"]
    );
}

#[test]
fn options_render_as_documented() {
    // Rolling on config changes adds a checksum of the config.
    let (docs, _) = render(&[], &json!({"balancer": {"rollOnConfigChange": true}})).unwrap();
    let d = find(&docs, "Deployment", "usher-balancer");
    let sum = d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .unwrap();
    assert_eq!(sum.len(), 64);
    // Policy files instead of objects.
    let policy = yaml(&repo().join("examples/policies/steady-weekday.yaml"));
    let values = json!({
        "autoscaler": {"policyMode": "files", "dryRun": true},
        "policies": {"weekday": policy["spec"].clone()},
        "balancer": {"config": {"pools": {"moodle": {"endpoints": {"static": ["10.0.0.1:8080"]}}}}},
    });
    let (docs, _) = render(&[], &values).unwrap_or_else(|e| panic!("{e}"));
    assert!(docs.iter().all(|d| d["kind"] != "ScalingPolicy"));
    let d = find(&docs, "Deployment", "usher-autoscaler");
    let c = container(d, "autoscaler");
    for arg in ["--policies=/etc/usher/policies", "--no-crd", "--dry-run"] {
        assert!(has_arg(c, arg), "{arg} missing: {}", c["args"]);
    }
    let files = find(&docs, "ConfigMap", "usher-autoscaler-policies");
    let text = files["data"]["weekday.yaml"].as_str().unwrap();
    let parsed = usher_autoscaler::policy::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.namespace.as_deref(), Some("lms"));
    // One autoscaler without leader election; hard anti-affinity; TLS Secrets.
    let (docs, _) = render(
        &[],
        &json!({
            "autoscaler": {"replicas": 1, "leaderElection": {"enabled": false}},
            "balancer": {"podAntiAffinity": "hard", "tls": {"secrets": ["lms.example.edu"]}},
            "prometheusRule": {"enabled": true},
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = container(find(&docs, "Deployment", "usher-autoscaler"), "autoscaler");
    assert!(has_arg(c, "--no-leader-election"));
    let d = find(&docs, "Deployment", "usher-balancer");
    assert!(d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .is_array());
    assert_eq!(
        container(d, "balancer")["volumeMounts"][1]["mountPath"],
        "/etc/usher/tls/lms.example.edu"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"],
        "lms.example.edu"
    );
    // Without the autoscaler, no autoscaler alerts.
    let (docs, _) = render(
        &[],
        &json!({"autoscaler": {"enabled": false}, "prometheusRule": {"enabled": true}}),
    )
    .unwrap();
    let groups = &find(&docs, "PrometheusRule", "usher")["spec"]["groups"];
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["name"], "usher-balancer");
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["name"] != "usher-autoscaler")
    );
}

#[test]
fn inconsistent_values_fail_the_render_with_a_reason() {
    let spec = yaml(&repo().join("examples/policies/exam-day.yaml"))["spec"].clone();
    let cases = [
        (
            json!({"policies": {"exam": spec}}),
            r#"policy exam: pool "moodle" is not a pool of balancer.config (pools: lms)"#,
        ),
        (
            json!({"autoscaler": {"leaderElection": {"enabled": false}}}),
            "autoscaler.replicas above 1 needs autoscaler.leaderElection.enabled",
        ),
        (
            json!({"balancer": {"service": {"ports": [{"name": "https", "port": 443, "listener": "https"}]}}}),
            r#"listener "https" is not in balancer.config.listeners (http)"#,
        ),
        (
            json!({"balancer": {"config": {"admin": null}}}),
            "balancer.config.admin.bind is needed",
        ),
        (
            json!({"balancer": {"config": {"listeners": [{"name": "Public", "bind": "0.0.0.0:8080"}]}}}),
            r#""Public" cannot name a container port"#,
        ),
    ];
    for (values, message) in cases {
        match render(&[], &values) {
            Ok(_) => panic!("{values} rendered"),
            Err(e) => assert!(e.contains(message), "expected `{message}` in:\n{e}"),
        }
    }
}

// ------------------------------------------------------------------- schema

fn schema() -> Value {
    let path = chart().join("values.schema.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("values.schema.json is a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, values: &Value) -> Vec<String> {
    v.iter_errors(values)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_schema_accepts_the_charts_values_and_the_moodle_example() {
    let v = validator();
    let e = errors(&v, &defaults());
    assert!(e.is_empty(), "values.yaml: {e:#?}");
    let e = errors(&v, &moodle_values());
    assert!(e.is_empty(), "examples/moodle-values.yaml: {e:#?}");
}

#[test]
fn the_schema_rejects_unknown_and_mistyped_values() {
    let v = validator();
    let cases: &[(&str, Value, &str)] = &[
        ("an unknown top-level key", json!({"replicaCount": 2}), ""),
        (
            "a misspelt key",
            json!({"balancer": {"replica": 3}}),
            "/balancer",
        ),
        (
            "a number as a string",
            json!({"balancer": {"replicas": "2"}}),
            "/balancer/replicas",
        ),
        (
            "an unknown Service type",
            json!({"balancer": {"service": {"type": "Loadbalancer"}}}),
            "/balancer/service/type",
        ),
        (
            "an unknown policy mode",
            json!({"autoscaler": {"policyMode": "crd"}}),
            "/autoscaler/policyMode",
        ),
        (
            "an image tag as a number",
            json!({"autoscaler": {"image": {"tag": 1.5}}}),
            "/autoscaler/image/tag",
        ),
        (
            "a typo in the security context",
            json!({"balancer": {"securityContext": {"readOnlyRootFilesytem": true}}}),
            "/balancer/securityContext",
        ),
        (
            "a probe field of the wrong type",
            json!({"balancer": {"readinessProbe": {"periodSeconds": "2s"}}}),
            "/balancer/readinessProbe",
        ),
        (
            "a listener name too long for a container port",
            json!({"balancer": {"config": {"listeners": [{"name": "public-tls-listener", "bind": "0.0.0.0:8443"}]}}}),
            "/balancer/config/listeners/0/name",
        ),
        (
            "a listener named like the admin port",
            json!({"balancer": {"config": {"listeners": [{"name": "admin", "bind": "0.0.0.0:8443"}]}}}),
            "/balancer/config/listeners/0/name",
        ),
        (
            "a config without admin listener",
            json!({"balancer": {"config": {"admin": null}}}),
            "/balancer/config",
        ),
        (
            "a lease duration that is not a duration",
            json!({"autoscaler": {"leaderElection": {"leaseDuration": 15}}}),
            "/autoscaler/leaderElection/leaseDuration",
        ),
        (
            "an unknown policy field",
            json!({"policies": {"moodle": {"scaleTargetRef": {"kind": "Deployment", "name": "moodle"}, "pool": "lms", "minReplicas": 2, "maxReplicas": 10, "target": {"inFlightPerPod": 8}, "maxReplica": 20}}}),
            "/policies/moodle",
        ),
        (
            "a mistyped policy field",
            json!({"policies": {"moodle": {"scaleTargetRef": {"kind": "Deployment", "name": "moodle"}, "pool": "lms", "minReplicas": "two", "maxReplicas": 10, "target": {"inFlightPerPod": 8}}}}),
            "/policies/moodle/minReplicas",
        ),
        (
            "a policy without its target",
            json!({"policies": {"moodle": {"scaleTargetRef": {"kind": "Deployment", "name": "moodle"}, "pool": "lms", "minReplicas": 2, "maxReplicas": 10}}}),
            "/policies/moodle",
        ),
        (
            "a policy name that is not a Kubernetes name",
            json!({"policies": {"Moodle_Exam": {"scaleTargetRef": {"kind": "Deployment", "name": "moodle"}, "pool": "lms", "minReplicas": 2, "maxReplicas": 10, "target": {"inFlightPerPod": 8}}}}),
            "/policies",
        ),
    ];
    for (what, over, path) in cases {
        let mut values = defaults();
        merge(&mut values, over);
        let e = errors(&v, &values);
        assert!(!e.is_empty(), "{what}: accepted {over}");
        assert!(
            e.iter()
                .any(|e| e.starts_with(&format!("{path}:"))
                    || (path.is_empty() && e.starts_with(": "))),
            "{what}: no error at `{path}`: {e:#?}"
        );
    }
}

/// The CRD's spec schema, made strict for values.schema.json: unknown keys
/// rejected (`additionalProperties: false` on every object with
/// properties), and the Kubernetes-only `nullable` and integer `format`s
/// dropped (Helm drops null values before validating).
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                if k == "nullable" || k == "format" {
                    continue;
                }
                out.insert(k.clone(), strict(v));
            }
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strict).collect()),
        other => other.clone(),
    }
}

fn crd_spec_schema() -> Value {
    let crd: Value = serde_saphyr::from_str(&usher_autoscaler::crd::crd_yaml()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

#[test]
fn the_schemas_policy_spec_is_the_crds_made_strict() {
    let expected = strict(&crd_spec_schema());
    let mut schema = schema();
    if schema["definitions"]["scalingPolicySpec"] == expected {
        return;
    }
    if bless() {
        schema["definitions"]["scalingPolicySpec"] = expected;
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        std::fs::write(chart().join("values.schema.json"), text).unwrap();
        return;
    }
    panic!(
        "values.schema.json's definitions.scalingPolicySpec is not the CRD's spec schema made strict; \
         run `USHER_BLESS=1 cargo test -p usher-autoscaler --test chart` to update it. Expected:\n{}",
        serde_json::to_string_pretty(&expected).unwrap()
    );
}

#[test]
fn the_example_policies_match_the_schemas_policy_spec() {
    let v = validator();
    let dir = repo().join("examples/policies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc = yaml(&path);
        let mut values = defaults();
        merge(
            &mut values,
            &json!({"policies": {doc["metadata"]["name"].as_str().unwrap(): doc["spec"]}}),
        );
        let e = errors(&v, &values);
        assert!(e.is_empty(), "{}: {e:#?}", path.display());
        n += 1;
    }
    assert!(n >= 3, "found {n} example policies");
}

#[test]
fn every_values_key_has_a_comment() {
    let path = chart().join("values.yaml");
    let text = read(&path);
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let is_key = !t.starts_with('#')
            && t.trim_start_matches("- ")
                .split_once(':')
                .is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
        let commented = line.contains(" # ") || previous.trim_start().starts_with('#');
        assert!(
            !is_key || commented,
            "{}:{}: `{}` has no comment on its line or the line above",
            path.display(),
            i + 1,
            t
        );
        previous = line;
    }
}

#[test]
fn the_chart_version_matches_the_crates() {
    let c = yaml(&chart().join("Chart.yaml"));
    assert_eq!(c["apiVersion"], "v2");
    assert_eq!(c["appVersion"], env!("CARGO_PKG_VERSION"));
}

// ---------------------------------------------- what the chart feeds Usher

fn seconds(text: &Value) -> f64 {
    let s = text.as_str().unwrap_or("0s");
    humantime::parse_duration(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_secs_f64()
}

#[test]
fn the_grace_period_covers_prestop_the_shutdown_delay_and_the_drain() {
    for (what, values) in [
        ("values.yaml", defaults()),
        ("examples/moodle-values.yaml", moodle_values()),
    ] {
        let b = &values["balancer"];
        let pre_stop = b["preStop"]["sleep"]["seconds"].as_f64().unwrap_or(0.0);
        let delay = seconds(&b["config"]["shutdown"]["delay"]);
        let drain = seconds(&b["config"]["shutdown"]["drainTimeout"]);
        let grace = b["terminationGracePeriodSeconds"].as_f64().unwrap();
        assert!(
            grace > pre_stop + delay + drain,
            "{what}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + delay {delay} + drainTimeout {drain}"
        );
    }
}

#[test]
fn the_crd_file_is_what_usher_autoscaler_crd_prints() {
    let path = chart().join("crds/scalingpolicies.usher.dev.yaml");
    let expected = usher_autoscaler::crd::crd_yaml();
    if read(&path) != expected {
        if bless() {
            std::fs::write(&path, expected).unwrap();
            return;
        }
        panic!(
            "{} differs from `usher-autoscaler crd`; regenerate it with\n  \
             usher-autoscaler crd > charts/usher/crds/scalingpolicies.usher.dev.yaml\n\
             or USHER_BLESS=1 cargo test -p usher-autoscaler --test chart",
            path.display()
        );
    }
}

// ----------------------------------------------- dashboard and alerts

/// Every sample name the balancer and the autoscaler export, read from the
/// real thing: a running balancer's `/metrics` (a pool with a queue, a rate
/// limit, a cache and a backup pool) and the autoscaler's registry after a
/// tick of two example policies, a scale each way, a scrape error and an
/// error. Gauges as named, counters with `_total`, histograms with
/// `_bucket`, `_sum` and `_count`.
fn exported_names() -> &'static BTreeSet<String> {
    static NAMES: OnceLock<BTreeSet<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let balancer = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(balancer_metrics());
        let autoscaler = autoscaler_metrics();
        let mut names = BTreeSet::new();
        for line in balancer.lines().chain(autoscaler.lines()) {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        }
        names
    })
}

async fn balancer_metrics() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.yaml");
    let config = [
        "listeners:",
        "  - {name: public, bind: \"127.0.0.1:0\"}",
        "admin: {bind: \"127.0.0.1:0\"}",
        "routes:",
        "  - {pool: lms, rateLimit: {requestsPerSecond: 10}, cache: {ttl: 1s}}",
        "pools:",
        "  lms:",
        "    endpoints: {static: [\"127.0.0.1:9\"]}",
        "    maxInFlightPerEndpoint: 4",
        "    queue: {maxLength: 10, timeout: 1s}",
        "    backupPool: spare",
        "  spare:",
        "    endpoints: {static: [\"127.0.0.1:9\"]}",
    ];
    std::fs::write(&path, config.join("\n")).unwrap();
    let b = usher_balancer::Balancer::start(
        &path,
        usher_balancer::Options {
            watch_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut conn = tokio::net::TcpStream::connect(b.admin_addr().unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

fn autoscaler_metrics() -> String {
    use usher_autoscaler::runner::{Replicas, Runner};
    use usher_autoscaler::source::Reading;
    let metrics = usher_autoscaler::telemetry::Metrics::new();
    for file in ["exam-day.yaml", "enrolment-week.yaml"] {
        let policy =
            usher_autoscaler::policy::load(&repo().join("examples/policies").join(file)).unwrap();
        let name = format!("lms/{}", policy.name);
        let replicas = Replicas {
            current: 6,
            ready: 6,
        };
        let reading = Reading {
            in_flight: 40.0,
            queued: 5.0,
            requests_per_second: Some(100.0),
            answered: 1,
            asked: 1,
            ..Default::default()
        };
        let step = Runner::new(policy).tick(Some(reading), replicas, chrono::Utc::now());
        metrics.tick(&name, (1, 10), replicas, &step, 0.01);
        metrics.scrape_errors(&name, 1);
        metrics.scaled(&name, 6, 7);
        metrics.scaled(&name, 7, 6);
    }
    metrics.error("kube");
    metrics.set_leader(true);
    metrics.encode()
}

/// The `usher_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("usher_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    run(Command::new("promtool").args(args).current_dir(dir))
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn the_examples_dashboard_is_the_charts() {
    let chart_copy = read(&chart().join("files/usher-dashboard.json"));
    let example = read(&repo().join("examples/grafana/usher-dashboard.json"));
    assert!(
        chart_copy == example,
        "examples/grafana/usher-dashboard.json differs from charts/usher/files/usher-dashboard.json; copy the chart's file over it"
    );
}

#[test]
fn the_dashboards_queries_are_valid_promql_over_exported_metrics() {
    let path = chart().join("files/usher-dashboard.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let names = exported_names();
    let mut rules = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        for name in metric_names(expr) {
            assert!(
                names.contains(&name),
                "dashboard query uses `{name}`, which nothing exports:\n{expr}\n{names:#?}"
            );
        }
        // Grafana's variables, as Grafana would substitute them.
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$namespace", ".*")
            .replace("$pool", ".*")
            .replace("$policy", ".*");
        rules.push(json!({"record": format!("usher:dashboard_query_{i}"), "expr": e}));
    }
    // Each panel shows what the brief promises.
    let all = exprs.join("\n");
    for needle in [
        "usher_balancer_pool_responses_total",
        "histogram_quantile(0.50",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
        "code_class=\"5xx\"",
        "usher_balancer_pool_in_flight_requests",
        "usher_balancer_pool_queue_depth",
        "usher_balancer_pool_endpoints",
        "usher_autoscaler_desired_replicas",
        "usher_autoscaler_current_replicas",
        "usher_autoscaler_panic_mode",
        "usher_autoscaler_scale_events_total",
    ] {
        assert!(all.contains(needle), "no dashboard query uses {needle}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    let doc = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = promtool(&["check", "rules", "dashboard-rules.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_alerts_pass_promtool_check_and_unit_tests() {
    let out = promtool(
        &["check", "rules", "charts/usher/files/alerts.yaml"],
        &repo(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = promtool(&["test", "rules", "tests/chart/alerts.test.yaml"], &repo());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn promtool_rejects_a_broken_rule_and_a_failing_unit_test() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "groups:\n  - name: bad\n    rules:\n      - alert: Bad\n        expr: sum by (pool (usher_balancer_pool_queue_depth)\n",
    )
    .unwrap();
    let out = promtool(&["check", "rules", "bad.yaml"], dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    // The real alerts, with a test that expects an alert that cannot fire.
    let alerts = chart().join("files/alerts.yaml");
    std::fs::write(
        dir.path().join("test.yaml"),
        format!(
            "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'usher_autoscaler_leader{{namespace=\"lms\"}}'\n        values: '1x10'\n    alert_rule_test:\n      - eval_time: 5m\n        alertname: UsherAutoscalerNoLeader\n        exp_alerts: [{{exp_labels: {{severity: critical, namespace: lms}}}}]\n",
            alerts.display()
        ),
    )
    .unwrap();
    let out = promtool(&["test", "rules", "test.yaml"], dir.path());
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn the_alerts_use_exported_metrics_and_have_a_runbook_section() {
    let alerts = yaml(&chart().join("files/alerts.yaml"));
    let names = exported_names();
    let readme = read(&repo().join("README.md"));
    let mut n = 0;
    for group in alerts["groups"].as_array().unwrap() {
        assert!(
            ["usher-balancer", "usher-autoscaler"].contains(&group["name"].as_str().unwrap()),
            "templates/prometheusrule.yaml selects groups by these names"
        );
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                assert!(
                    names.contains(&name),
                    "{alert} uses `{name}`, which nothing exports"
                );
            }
            let anchor = alert.to_lowercase();
            assert_eq!(
                rule["annotations"]["runbook"].as_str(),
                Some(format!("README.md#{anchor}").as_str()),
                "{alert}"
            );
            assert!(
                readme.contains(&format!("\n#### {alert}\n")),
                "README.md has no runbook section `#### {alert}`"
            );
            assert!(
                rule["labels"]["severity"].is_string(),
                "{alert} has no severity"
            );
            n += 1;
        }
    }
    assert!(n >= 6, "{n} alerts");
}
