//! The controller against a real kube-apiserver 1.20 (RBAC on): the CRD,
//! scaling through `deployments/scale`, status, Events, dry-run, leader
//! election, and pod deletion costs from live sessions before a scale-down.
//! The `usher-autoscaler` binary runs as a ServiceAccount bound to
//! a Role made from `charts/usher/files/autoscaler-rules.yaml`, the rules the
//! Helm chart ships. Demand comes from a real balancer holding requests to a
//! slow backend, found through a Ready balancer Pod's IP.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/web.rs"]
mod web;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;
use usher_autoscaler::crd::ScalingPolicy;

use cluster::cluster;

/// Polls `check` every 200 ms until it returns `Some`, or panics after
/// `limit` with `what` and the autoscalers' logs.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_logged(what, limit, &[], check).await
}

async fn wait_logged<T, F, Fut>(
    what: &str,
    limit: Duration,
    logs: &[&Autoscaler],
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() >= limit {
            let mut out = Vec::new();
            for a in logs {
                out.push(a.log());
                out.push(get_text(&a.metrics).await.unwrap_or_default());
            }
            let logs = out;
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs the CRD once per test binary and waits until it is served.
async fn install_crd(admin: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        match crds
            .create(&PostParams::default(), &ScalingPolicy::crd())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => panic!("the apiserver refused the CRD: {e}"),
        }
        wait_for(
            "the CRD to be Established",
            Duration::from_secs(30),
            || async {
                let crd = crds.get("scalingpolicies.usher.dev").await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    })
    .await;
}

/// The chart's autoscaler rules.
fn chart_rules() -> Vec<PolicyRule> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/usher/files/autoscaler-rules.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of `url` (2 s at most).
async fn get_text(url: &str) -> Option<String> {
    web::get(url, Duration::from_secs(2))
        .await
        .map(|(_, body)| body)
}

/// A sample's value in Prometheus text: the first line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// One test's world: a namespace with the Deployment, balancer Pods, the
/// ServiceAccount with the chart's Role, and a kubeconfig for it.
struct World {
    admin: Client,
    ns: String,
    kubeconfig: PathBuf,
    lb: web::Lb,
    dir: tempfile::TempDir,
}

async fn world(prefix: &str) -> World {
    let c = cluster();
    let admin = c.admin().await;
    install_crd(&admin).await;
    let ns = c.namespace(&admin, prefix).await;

    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("usher-autoscaler".into()),
            ..Default::default()
        },
        rules: Some(chart_rules()),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "usher-autoscaler"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "usher-autoscaler"},
        "subjects": [{"kind": "ServiceAccount", "name": "usher-autoscaler", "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = c
        .service_account_token(&admin, &ns, "usher-autoscaler")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    c.kubeconfig_for_token(&token, &ns, &kubeconfig);

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "lms"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "lms"}},
            "template": {
                "metadata": {"labels": {"app": "lms"}},
                "spec": {"containers": [{"name": "lms", "image": "example.invalid/lms-sim:1"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    // Two balancer pods: a Ready one at the real balancer's address, and one
    // that is not Ready (nothing listens at its IP) and must not be scraped.
    let backend = web::backend(Duration::from_secs(60)).await;
    let lb = web::balancer("lms", backend, "    timeouts: {response: 120s}\n").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for (name, ip, ready) in [
        ("balancer-0", "127.0.0.1", "True"),
        ("balancer-1", "127.0.0.2", "False"),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "usher", "app.kubernetes.io/component": "balancer"}},
            "spec": {"containers": [{"name": "balancer", "image": "example.invalid/usher-balancer:1"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": ready}]
            }})),
        )
        .await
        .unwrap();
    }
    World {
        admin,
        ns,
        kubeconfig,
        lb,
        dir,
    }
}

impl World {
    /// Creates the policy: 10 in flight per pod, 1 to 6 replicas, read from
    /// the Ready balancer pod's admin port.
    async fn policy(&self) {
        let text = format!(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata:
  name: lms
  namespace: {ns}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: lms
  minReplicas: 1
  maxReplicas: 6
  target: {{inFlightPerPod: 10}}
  surge: {{stableWindow: 10s, panicWindow: 2s}}
  metricsSource:
    pods:
      selector: {{app.kubernetes.io/name: usher, app.kubernetes.io/component: balancer}}
      port: {port}
",
            ns = self.ns,
            port = self.lb.admin.port()
        );
        // Valid as a file, too: one schema for both.
        usher_autoscaler::policy::from_str(&text).unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let obj: ScalingPolicy = serde_json::from_value(doc).unwrap();
        Api::<ScalingPolicy>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }

    /// Starts `usher-autoscaler run` as the ServiceAccount.
    fn autoscaler(&self, identity: &str, extra: &[&str]) -> Autoscaler {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = self.dir.path().join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_usher-autoscaler"))
            .args([
                "run",
                "--namespace",
                &self.ns,
                "--identity",
                identity,
                "--log-format",
                "text",
            ])
            .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
            // A short lease unless the test sets its own.
            .args(if extra.contains(&"--lease-duration") {
                &[][..]
            } else {
                &[
                    "--lease-duration",
                    "4s",
                    "--renew-deadline",
                    "2s",
                    "--retry-period",
                    "1s",
                ][..]
            })
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("USHER_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Autoscaler {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
        }
    }

    async fn replicas(&self) -> i32 {
        let d = Api::<Deployment>::namespaced(self.admin.clone(), &self.ns)
            .get("lms")
            .await
            .unwrap();
        d.spec.unwrap().replicas.unwrap()
    }

    /// Waits (40 s at most) for the Deployment to ask for `n` replicas,
    /// showing `logs` on a timeout.
    async fn wait_replicas(&self, n: i32, logs: &[&Autoscaler]) {
        wait_logged(
            &format!("the Deployment to reach {n} replicas"),
            Duration::from_secs(40),
            logs,
            || async { (self.replicas().await == n).then_some(()) },
        )
        .await;
    }

    async fn status(&self) -> Option<serde_json::Value> {
        let p = Api::<ScalingPolicy>::namespaced(self.admin.clone(), &self.ns)
            .get("lms")
            .await
            .ok()?;
        p.status.map(|s| serde_json::to_value(s).unwrap())
    }

    async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.admin.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn lease_holder(&self) -> Option<String> {
        let lease = Api::<Lease>::namespaced(self.admin.clone(), &self.ns)
            .get_opt("usher-autoscaler")
            .await
            .unwrap()?;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    }
}

struct Autoscaler {
    child: Child,
    metrics: String,
    log: PathBuf,
}

impl Autoscaler {
    async fn metric(&self, prefix: &str) -> Option<f64> {
        sample(&get_text(&self.metrics).await?, prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process abruptly (no lease release).
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_installs_and_the_server_accepts_valid_policies_only() {
    let c = cluster();
    let admin = c.admin().await;
    install_crd(&admin).await;
    let ns = c.namespace(&admin, "crd").await;
    let api: Api<ScalingPolicy> = Api::namespaced(admin.clone(), &ns);
    for file in ["exam-day", "steady-weekday", "enrolment-week"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../examples/policies/{file}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        doc["metadata"]["namespace"] = json!(ns);
        let obj: ScalingPolicy = serde_json::from_value(doc).unwrap();
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        // What the server stores validates exactly like the file.
        let back = usher_autoscaler::crd::to_policy(&created).unwrap();
        let mut from_file = usher_autoscaler::policy::load(&path).unwrap();
        from_file.namespace = Some(ns.clone());
        assert_eq!(back, from_file, "{file}");
    }
    // The schema rejects a mistyped field.
    let bad = json!({
        "apiVersion": "usher.dev/v1alpha1", "kind": "ScalingPolicy",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "lms"}, "pool": "lms",
                 "minReplicas": "many", "maxReplicas": 3, "target": {"inFlightPerPod": 5}}
    });
    let raw: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &ApiResource::erase::<ScalingPolicy>(&()),
    );
    let bad: DynamicObject = serde_json::from_value(bad).unwrap();
    match raw.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(s.message.contains("minReplicas"), "{}", s.message);
        }
        other => panic!("a string minReplicas was not rejected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_scales_through_the_scale_subresource_writes_status_and_records_an_event() {
    let w = world("scale").await;
    w.policy().await;
    let a = w.autoscaler("only", &[]);
    // 40 requests held open at 10 per pod need 4 replicas.
    web::hold_requests(w.lb.public, 40);
    let started = Instant::now();
    w.wait_replicas(4, &[&a]).await;
    println!("scaled to 4 in {:?}", started.elapsed());

    let status = wait_for(
        "the status to show 4 replicas",
        Duration::from_secs(15),
        || async {
            let s = w.status().await?;
            (s["currentReplicas"] == 4 && s["desiredReplicas"] == 4).then_some(s)
        },
    )
    .await;
    assert!(status["lastScaleTime"].is_string(), "{status}");
    assert!(
        status["lastScaleReason"].as_str().unwrap().contains("40"),
        "{status}"
    );
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}: {status}"))
    };
    assert_eq!(condition("AbleToScale")["status"], "True", "{status}");
    assert_eq!(condition("ScalingActive")["status"], "True", "{status}");
    assert_eq!(
        condition("ScalingActive")["reason"],
        "ValidMetricFound",
        "{status}"
    );
    assert!(condition("ScalingLimited")["reason"].is_string());

    let events = wait_for("a ScaledUp Event", Duration::from_secs(10), || async {
        let e: Vec<Event> = w
            .events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("ScaledUp"))
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .await;
    let e = &events[0];
    assert_eq!(
        e.regarding.as_ref().unwrap().kind.as_deref(),
        Some("ScalingPolicy")
    );
    assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("lms"));
    assert_eq!(e.reporting_controller.as_deref(), Some("usher-autoscaler"));
    assert!(e.note.as_deref().unwrap().contains("from 1 to 4"), "{e:?}");

    // Only the Ready balancer pod was scraped: no scrape errors.
    assert_eq!(
        a.metric("usher_autoscaler_scrape_errors_total")
            .await
            .unwrap_or(0.0),
        0.0,
        "{}",
        a.log()
    );
    assert_eq!(a.metric("usher_autoscaler_leader ").await, Some(1.0));
    assert_eq!(
        a.metric("usher_autoscaler_desired_replicas{").await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_records_the_decision_and_changes_nothing() {
    let w = world("dry").await;
    w.policy().await;
    let a = w.autoscaler("dry", &["--dry-run"]);
    web::hold_requests(w.lb.public, 40);
    let status = wait_for(
        "the status to record desired 4",
        Duration::from_secs(40),
        || async {
            let s = w.status().await?;
            (s["desiredReplicas"] == 4).then_some(s)
        },
    )
    .await;
    let able = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "AbleToScale")
        .unwrap()
        .clone();
    assert_eq!(able["reason"], "DryRun", "{status}");
    // A few more ticks: still 1 replica, no scale Event, no scale counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.replicas().await, 1);
    assert!(
        w.events()
            .await
            .iter()
            .all(|e| e.reason.as_deref() != Some("ScaledUp"))
    );
    assert_eq!(a.metric("usher_autoscaler_dry_run ").await, Some(1.0));
    assert_eq!(
        a.metric("usher_autoscaler_desired_replicas{").await,
        Some(4.0)
    );
    assert!(a.log().contains("dry-run: would scale"), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let w = world("lease").await;
    w.policy().await;
    let mut a = w.autoscaler("a", &[]);
    let mut b = w.autoscaler("b", &[]);
    let first = wait_for("a lease holder", Duration::from_secs(20), || {
        w.lease_holder()
    })
    .await;
    // Exactly one of them says it leads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (la, lb) = (
        a.metric("usher_autoscaler_leader ").await,
        b.metric("usher_autoscaler_leader ").await,
    );
    assert_eq!(la.unwrap() + lb.unwrap(), 1.0, "a={la:?} b={lb:?}");
    assert_eq!(
        w.lease_holder().await.as_deref(),
        Some(first.as_str()),
        "the lease changed hands while both ran"
    );
    let (leader, follower, follower_name) = if first == "a" {
        (&mut a, &b, "b")
    } else {
        (&mut b, &a, "a")
    };

    // The leader dies without releasing the lease; the follower takes over
    // after the 4 s lease duration and then acts.
    leader.kill().await;
    let killed = Instant::now();
    let holder = wait_for(
        "the follower to take the lease",
        Duration::from_secs(20),
        || async { w.lease_holder().await.filter(|h| h == follower_name) },
    )
    .await;
    println!(
        "{holder} took over {:?} after the leader died",
        killed.elapsed()
    );
    web::hold_requests(w.lb.public, 40);
    w.wait_replicas(4, &[follower]).await;
    assert_eq!(
        follower.metric("usher_autoscaler_leader ").await,
        Some(1.0),
        "{}",
        follower.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_role_allows_what_the_controller_does_and_nothing_broader() {
    let w = world("rbac").await;
    let c = cluster();
    let token = c
        .service_account_token(&w.admin, &w.ns, "usher-autoscaler")
        .await;
    let sa = c.client_for_token(&token).await;
    let deployments: Api<Deployment> = Api::namespaced(sa.clone(), &w.ns);
    // Allowed: read the Deployment, patch its scale.
    deployments.get("lms").await.unwrap();
    deployments
        .patch_scale(
            "lms",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    // Refused: anything else about Deployments, Pods or Secrets.
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what} was not forbidden: {other:?}"),
    };
    forbidden(
        deployments
            .patch(
                "lms",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"paused": true}})),
            )
            .await
            .map(|_| ()),
        "patching a Deployment",
    );
    forbidden(
        deployments
            .delete("lms", &Default::default())
            .await
            .map(|_| ()),
        "deleting a Deployment",
    );
    forbidden(
        Api::<Pod>::namespaced(sa.clone(), &w.ns)
            .delete("balancer-0", &Default::default())
            .await
            .map(|_| ()),
        "deleting a Pod",
    );
    // Allowed: annotating a pod (its deletion cost before a scale-down).
    Api::<Pod>::namespaced(sa.clone(), &w.ns)
        .patch(
            "balancer-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "0"}}})),
        )
        .await
        .unwrap();
    forbidden(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(sa.clone(), &w.ns)
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "listing Secrets",
    );
    forbidden(
        Api::<Deployment>::namespaced(sa.clone(), "default")
            .get("lms")
            .await
            .map(|_| ()),
        "reading another namespace",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_files_scale_without_any_crd_rights() {
    let w = world("files").await;
    // The same Role minus every usher.dev rule: no CRD, no status.
    let rules: Vec<PolicyRule> = chart_rules()
        .into_iter()
        .filter(|r| !r.api_groups.iter().flatten().any(|g| g == "usher.dev"))
        .collect();
    let roles: Api<Role> = Api::namespaced(w.admin.clone(), &w.ns);
    roles
        .patch(
            "usher-autoscaler",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": rules})),
        )
        .await
        .unwrap();
    let dir = w.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("lms.yaml"),
        format!(
            "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {{name: lms-file}}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: lms
  minReplicas: 1
  maxReplicas: 6
  target: {{inFlightPerPod: 10}}
  metricsSource: {{urls: ['http://{}/metrics']}}
",
            w.lb.admin
        ),
    )
    .unwrap();
    let a = w.autoscaler("files", &["--no-crd", "--policies", dir.to_str().unwrap()]);
    web::hold_requests(w.lb.public, 30);
    w.wait_replicas(3, &[&a]).await;
    // The Event regards the Deployment (there is no policy object).
    let e = wait_for("a ScaledUp Event", Duration::from_secs(10), || async {
        w.events()
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ScaledUp"))
    })
    .await;
    let regarding = e.regarding.unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Deployment"), Some("lms"))
    );
    assert!(!a.log().contains("forbidden"), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_releases_the_lease_for_the_follower() {
    let w = world("release").await;
    w.policy().await;
    // A 60 s lease: a takeover well before that can only come from a release.
    let long = [
        "--lease-duration",
        "60s",
        "--renew-deadline",
        "40s",
        "--retry-period",
        "1s",
    ];
    let a = w.autoscaler("a", &long);
    let b = w.autoscaler("b", &long);
    let first = wait_for("a lease holder", Duration::from_secs(20), || {
        w.lease_holder()
    })
    .await;
    let (leader, follower) = if first == "a" { (&a, "b") } else { (&b, "a") };
    let pid = leader.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    wait_logged(
        "the follower to take the released lease",
        Duration::from_secs(30),
        &[&a, &b],
        || async { w.lease_holder().await.filter(|h| h == follower) },
    )
    .await;
    assert!(
        leader.log().contains("released the leader lease"),
        "{}",
        leader.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_marks_each_pods_deletion_cost_with_its_live_sessions() {
    let w = world("cost").await;
    // Three LMS pods (made by the ReplicaSet), given the IPs of three real
    // backends behind a sticky balancer.
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), &w.ns);
    deployments
        .patch_scale(
            "lms",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), &w.ns);
    let names: Vec<String> = wait_for(
        "the ReplicaSet's 3 pods",
        Duration::from_secs(30),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=lms"))
                .await
                .ok()?;
            let mut names: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            names.sort();
            (names.len() == 3).then_some(names)
        },
    )
    .await;
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let mut backends = Vec::new();
    for (name, ip) in names.iter().zip(ips) {
        backends.push(web::backend_at(ip, Duration::ZERO).await);
        // Kept readable after the ReplicaSet deletes it (1.20 does not
        // honour the cost yet: which pods go is its choice).
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["usher.dev/test-keep"]}})),
        )
        .await
        .unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}]
            }})),
        )
        .await
        .unwrap();
    }
    let secret = "a-secret-shared-by-the-test";
    let extra = format!("    stickySessions: {{secret: {secret}}}\n");
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let lb = web::balancer_with("lms", &list.join(", "), &extra).await;
    // Sessions: 3 on the first pod, 1 on the second, none on the third,
    // pinned by cookies signed with the shared secret.
    let signer = usher_balancer::sticky::StickySecret::new(secret);
    for backend in [0, 0, 0, 1].map(|i| backends[i]) {
        let id = signer.endpoint_id("lms", &backend.to_string());
        let tag = format!("{:016x}", fastrand::u64(..));
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = http::Request::get(format!("http://{}/course/view.php", lb.public))
            .header("cookie", format!("usher_affinity={id}.{tag}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let metrics = web::get(
        &format!("http://{}/metrics", lb.admin),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .1;
    assert!(
        metrics.contains(&format!(
            "usher_balancer_endpoint_sessions{{pool=\"lms\",endpoint=\"{}\"}} 3",
            backends[0]
        )),
        "{metrics}"
    );

    // Light load: the policy wants 1 of the 3.
    let text = format!(
        "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata:
  name: lms
  namespace: {ns}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: lms
  minReplicas: 1
  maxReplicas: 6
  target: {{inFlightPerPod: 10}}
  surge: {{stableWindow: 2s, panicWindow: 1s}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 1
      policies: [{{type: Percent, value: 100, periodSeconds: 1}}]
  metricsSource: {{urls: ['http://{admin}/metrics'], interval: 250ms}}
",
        ns = w.ns,
        admin = lb.admin
    );
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let obj: ScalingPolicy = serde_json::from_value(doc).unwrap();
    Api::<ScalingPolicy>::namespaced(w.admin.clone(), &w.ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let a = w.autoscaler("only", &[]);
    w.wait_replicas(1, &[&a]).await;
    // Each pod carries its live sessions as its deletion cost.
    let costs: Vec<Option<String>> =
        wait_logged(
            "the deletion costs",
            Duration::from_secs(10),
            &[&a],
            || async {
                let mut costs = Vec::new();
                for name in &names {
                    let p = pods.get_opt(name).await.ok()??;
                    costs.push(p.metadata.annotations.and_then(|a| {
                        a.get("controller.kubernetes.io/pod-deletion-cost").cloned()
                    }));
                }
                costs.iter().all(Option::is_some).then_some(costs)
            },
        )
        .await;
    for name in &names {
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        costs,
        [
            Some("3".to_string()),
            Some("1".to_string()),
            Some("0".to_string())
        ],
        "{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_on_the_same_deployment_stops_it_acting_until_the_hpa_is_gone() {
    use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
    let w = world("hpa").await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(w.admin.clone(), &w.ns);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "lms-cpu"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lms"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 80
        }
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    w.policy().await;
    let a = w.autoscaler("only", &[]);
    // Demand for 4 replicas, but an HPA owns the Deployment.
    web::hold_requests(w.lb.public, 40);
    let status = wait_logged(
        "the ConflictingAutoscaler condition",
        Duration::from_secs(20),
        &[&a],
        || async {
            let s = w.status().await?;
            let c = s["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "ConflictingAutoscaler")?
                .clone();
            (c["status"] == "True" && s["desiredReplicas"] == 4).then_some(s)
        },
    )
    .await;
    let text = status.to_string();
    assert!(text.contains("HorizontalPodAutoscaler lms-cpu"), "{text}");
    let able = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "AbleToScale")
        .unwrap()
        .clone();
    assert_eq!(able["status"], "False", "{text}");
    assert_eq!(able["reason"], "ConflictingAutoscaler", "{text}");
    // It wants 4 and leaves the Deployment alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.replicas().await, 1, "{}", a.log());
    let events = wait_for(
        "a ConflictingAutoscaler Event",
        Duration::from_secs(10),
        || async {
            let e: Vec<Event> = w
                .events()
                .await
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("ConflictingAutoscaler"))
                .collect();
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(
        events[0].note.as_deref().unwrap().contains("lms-cpu"),
        "{:?}",
        events[0]
    );
    // The HPA goes: it acts again.
    hpas.delete("lms-cpu", &Default::default()).await.unwrap();
    w.wait_replicas(4, &[&a]).await;
    let s = w.status().await.unwrap();
    let c = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ConflictingAutoscaler")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "False", "{s}");
}
