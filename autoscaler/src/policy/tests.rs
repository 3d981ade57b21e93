//! Policy validation: the example files, and one test per rejection.

use std::path::Path;
use std::time::Duration;

use super::{RateKind, Select, Target, from_str, load, load_dir};

const HEAD: &str =
    "apiVersion: usher.dev/v1alpha1\nkind: ScalingPolicy\nmetadata: {name: moodle}\n";

fn doc(spec: &str) -> String {
    format!(
        "{HEAD}spec:\n  scaleTargetRef: {{kind: Deployment, name: moodle}}\n  pool: moodle\n{spec}"
    )
}

const BASE: &str = "  minReplicas: 2\n  maxReplicas: 10\n  target: {inFlightPerPod: 8}\n";

#[track_caller]
fn rejects(text: &str, field: &str, part: &str) {
    let e = from_str(text)
        .err()
        .unwrap_or_else(|| panic!("accepted:\n{text}"));
    assert_eq!(e.field, field, "{e}");
    assert!(e.problem.contains(part), "{e}");
}

#[test]
fn example_policies_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let all = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 3);
    let exam = load(&dir.join("exam-day.yaml")).unwrap();
    assert_eq!((exam.min_replicas, exam.max_replicas), (4, 80));
    assert_eq!(exam.target, Target::InFlightPerPod(8.0));
    assert_eq!(exam.schedules[0].time_zone, chrono_tz::Europe::Berlin);
    assert_eq!(exam.schedules[0].duration, Duration::from_secs(3 * 3600));
    assert_eq!(exam.behavior.scale_down.policies[0].kind, RateKind::Percent);
    assert_eq!(
        exam.behavior.scale_up.select,
        Select::Max,
        "defaults fill what is not written"
    );
    let enrol = load(&dir.join("enrolment-week.yaml")).unwrap();
    assert_eq!(enrol.target, Target::RequestsPerSecondPerPod(25.0));
    assert_eq!(enrol.behavior.scale_up.policies.len(), 2);
}

#[test]
fn defaults() {
    let p = from_str(&doc(BASE)).unwrap();
    assert_eq!(p.surge.stable_window, Duration::from_secs(60));
    assert_eq!(p.surge.panic_window, Duration::from_secs(6));
    assert_eq!(p.surge.panic_threshold, 2.0);
    assert_eq!(p.tolerance, 0.1);
    assert_eq!(p.target_ref.api_version, "apps/v1");
    assert_eq!(
        p.behavior.scale_down.stabilization,
        Duration::from_secs(300)
    );
    // The panic window defaults to 10% of a configured stable window.
    let p = from_str(&doc(&format!("{BASE}  surge: {{stableWindow: 120s}}\n"))).unwrap();
    assert_eq!(p.surge.panic_window, Duration::from_secs(12));
}

#[test]
fn rejections() {
    rejects(
        &doc("  minReplicas: 5\n  maxReplicas: 3\n  target: {inFlightPerPod: 8}\n"),
        "spec.minReplicas",
        "greater than maxReplicas",
    );
    rejects(
        &doc("  minReplicas: 0\n  maxReplicas: 3\n  target: {inFlightPerPod: 8}\n"),
        "spec.minReplicas",
        "at least 1",
    );
    rejects(
        &doc(&format!(
            "{BASE}  schedules:\n    - {{cron: \"0 9 * * *\", timeZone: Mars/Olympus, duration: 1h, minReplicas: 3}}\n"
        )),
        "spec.schedules[0].timeZone",
        "not an IANA time zone",
    );
    rejects(
        &doc(&format!(
            "{BASE}  schedules:\n    - {{cron: \"0 25 * * *\", duration: 1h, minReplicas: 3}}\n"
        )),
        "spec.schedules[0].cron",
        "not a valid cron",
    );
    rejects(
        &doc(&format!(
            "{BASE}  schedules:\n    - {{cron: \"0 9 * *\", duration: 1h, minReplicas: 3}}\n"
        )),
        "spec.schedules[0].cron",
        "has 4 fields",
    );
    rejects(
        &doc(&format!(
            "{BASE}  schedules:\n    - {{cron: \"0 9 * * *\", duration: 1h, minReplicas: 30}}\n"
        )),
        "spec.schedules[0].minReplicas",
        "above maxReplicas",
    );
    rejects(
        &doc(&format!(
            "{BASE}  schedules:\n    - {{cron: \"0 9 * * *\", duration: soon, minReplicas: 3}}\n"
        )),
        "spec.schedules[0].duration",
        "not a duration",
    );
    rejects(
        &doc(&format!("{BASE}  surgee: {{}}\n")),
        "spec.surgee",
        "unknown field",
    );
    rejects(
        &doc(&format!("{BASE}  surge: {{panicWindow: 90s}}\n")),
        "spec.surge.panicWindow",
        "shorter one",
    );
    rejects(
        &doc(&format!("{BASE}  surge: {{panicThreshold: 1}}\n")),
        "spec.surge.panicThreshold",
        "above 1.0",
    );
    rejects(
        &doc(&format!("{BASE}  tolerance: 1.5\n")),
        "spec.tolerance",
        "out of range",
    );
    rejects(
        &doc("  minReplicas: 2\n  maxReplicas: 10\n  target: {}\n"),
        "spec.target",
        "exactly one",
    );
    rejects(
        &doc(
            "  minReplicas: 2\n  maxReplicas: 10\n  target: {inFlightPerPod: 8, requestsPerSecondPerPod: 3}\n",
        ),
        "spec.target",
        "exactly one",
    );
    rejects(
        &doc("  minReplicas: 2\n  maxReplicas: 10\n  target: {inFlightPerPod: -1}\n"),
        "spec.target.inFlightPerPod",
        "above 0",
    );
    rejects(
        &doc("  minReplicas: 2\n  maxReplicas: 10\n  target: {latency: {p95: fast}}\n"),
        "spec.target.latency.p95",
        "not a duration",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleUp: {{selectPolicy: Most}}\n"
        )),
        "spec.behavior.scaleUp.selectPolicy",
        "not `Max`",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleUp: {{policies: [{{type: Pods, value: 4, periodSeconds: 0}}]}}\n"
        )),
        "spec.behavior.scaleUp.policies[0].periodSeconds",
        "1 to 1800",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleDown: {{policies: [{{type: Replicas, value: 4, periodSeconds: 15}}]}}\n"
        )),
        "spec.behavior.scaleDown.policies[0].type",
        "not `Pods` or `Percent`",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleDown: {{policies: [{{type: Pods, value: 0, periodSeconds: 15}}]}}\n"
        )),
        "spec.behavior.scaleDown.policies[0].value",
        "at least 1",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleDown: {{policies: []}}\n"
        )),
        "spec.behavior.scaleDown.policies",
        "allows no change",
    );
    rejects(
        &doc(&format!(
            "{BASE}  behavior:\n    scaleDown: {{stabilizationWindowSeconds: 7200}}\n"
        )),
        "spec.behavior.scaleDown.stabilizationWindowSeconds",
        "over 3600",
    );
    rejects(
        "apiVersion: usher.dev/v1\nkind: ScalingPolicy\nmetadata: {name: m}\nspec: {}\n",
        "spec",
        "missing field",
    );
    rejects(
        &doc(BASE).replace("usher.dev/v1alpha1", "autoscaling/v2"),
        "apiVersion",
        "use `usher.dev/v1alpha1`",
    );
    rejects(
        &doc(BASE).replace("kind: ScalingPolicy", "kind: HorizontalPodAutoscaler"),
        "kind",
        "not `ScalingPolicy`",
    );
    rejects(
        &doc(BASE).replace("kind: Deployment", "kind: StatefulSet"),
        "spec.scaleTargetRef.kind",
        "use `Deployment`",
    );
    rejects(
        &doc(BASE).replace("name: moodle}\nspec", "name: Moodle_1}\nspec"),
        "metadata.name",
        "not a valid name",
    );
}

#[test]
fn missing_files_name_the_file() {
    let e = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/policy.yaml: cannot read"),
        "{e}"
    );
}

#[test]
fn metrics_source_defaults_and_rejections() {
    use super::{DEFAULT_ADMIN_PORT, SourceKind};
    let p = from_str(&doc(BASE)).unwrap();
    match &p.metrics.kind {
        SourceKind::Pods {
            selector,
            port,
            path,
            namespace,
        } => {
            assert_eq!(
                selector
                    .get("app.kubernetes.io/component")
                    .map(String::as_str),
                Some("balancer")
            );
            assert_eq!(
                (*port, path.as_str(), namespace),
                (DEFAULT_ADMIN_PORT, "/metrics", &None)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.metrics.interval, Duration::from_secs(1));
    assert_eq!(p.metrics.stale_after, Duration::from_secs(5));
    assert_eq!(p.metrics.timeout, Duration::from_millis(800));
    let urls = from_str(&doc(&format!(
        "{BASE}  metricsSource: {{urls: ['http://127.0.0.1:9901/metrics'], interval: 2s}}\n"
    )))
    .unwrap();
    assert_eq!(
        urls.metrics.kind,
        SourceKind::Urls(vec!["http://127.0.0.1:9901/metrics".into()])
    );
    assert_eq!(urls.metrics.stale_after, Duration::from_secs(10));
    let ms = |m: &str| doc(&format!("{BASE}  metricsSource: {m}\n"));
    rejects(
        &ms("{urls: [], pods: {}}"),
        "spec.metricsSource",
        "only one of",
    );
    rejects(&ms("{urls: []}"), "spec.metricsSource.urls", "at least one");
    rejects(
        &ms("{urls: ['ftp://x/metrics']}"),
        "spec.metricsSource.urls[0]",
        "http://",
    );
    rejects(
        &ms("{prometheus: {url: 'not a url'}}"),
        "spec.metricsSource.prometheus.url",
        "not",
    );
    rejects(
        &ms("{pods: {selector: {}}}"),
        "spec.metricsSource.pods.selector",
        "every pod",
    );
    rejects(
        &ms("{pods: {path: metrics}}"),
        "spec.metricsSource.pods.path",
        "start with `/`",
    );
    rejects(
        &ms("{pods: {port: 0}}"),
        "spec.metricsSource.pods.port",
        "not a port",
    );
    rejects(
        &ms("{interval: 10ms}"),
        "spec.metricsSource.interval",
        "at least 100ms",
    );
    rejects(
        &ms("{interval: 2s, staleAfter: 1s}"),
        "spec.metricsSource.staleAfter",
        "at least the interval",
    );
    rejects(
        &ms("{staleAfter: soon}"),
        "spec.metricsSource.staleAfter",
        "not a duration",
    );
    rejects(
        &ms("{pods: {colour: red}}"),
        "spec.metricsSource.pods.colour",
        "unknown field",
    );
}

#[test]
fn predictive_defaults_and_rejections() {
    let p = from_str(&doc(&format!("{BASE}  predictive: {{}}\n"))).unwrap();
    let pr = p.predictive.unwrap();
    assert_eq!(pr.lead_time, Duration::from_secs(600));
    assert_eq!((pr.weeks, pr.margin, pr.forecast_only), (2, 0.1, false));
    assert!(from_str(&doc(BASE)).unwrap().predictive.is_none());
    let pd = |m: &str| doc(&format!("{BASE}  predictive: {m}\n"));
    rejects(&pd("{weeks: 0}"), "spec.predictive.weeks", "1 to 8");
    rejects(&pd("{margin: -1}"), "spec.predictive.margin", "0 to 5");
    rejects(
        &pd("{leadTime: 2d}"),
        "spec.predictive.leadTime",
        "at most 24h",
    );
    rejects(
        &pd("{leadTime: later}"),
        "spec.predictive.leadTime",
        "not a duration",
    );
    rejects(
        &pd("{prometheusUrl: 'x'}"),
        "spec.predictive.prometheusUrl",
        "not",
    );
    let latency = doc(
        "  minReplicas: 2\n  maxReplicas: 10\n  target: {latency: {p95: 300ms}}\n  predictive: {}\n",
    );
    rejects(&latency, "spec.predictive", "demand target");
}
