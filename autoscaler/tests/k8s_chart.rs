//! The Helm chart against a real kube-apiserver 1.20 (the cluster harness of
//! `support/cluster.rs`): the CRD file from `charts/usher/crds/`, the
//! example policies, the Roles made from `charts/usher/files/*-rules.yaml`
//! (checked verb by verb with SelfSubjectAccessReviews), and the chart as
//! `tests/chart/render.go` renders it (there is no Helm here; see
//! support/chart.rs) with the default values and examples/moodle-values.yaml.
//! Kinds this API server does not serve are left out: PodDisruptionBudget
//! policy/v1 (1.21+) and the Prometheus Operator's ServiceMonitor and
//! PrometheusRule (no such CRDs here).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/chart.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use cluster::cluster;
use support::{read, render_in, repo, yaml};

fn policies_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "usher.dev".into(),
        version: "v1alpha1".into(),
        api_version: "usher.dev/v1alpha1".into(),
        kind: "ScalingPolicy".into(),
        plural: "scalingpolicies".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Installs the chart's CRD file (once per test binary) and waits until it
/// is Established.
async fn install_chart_crd(admin: &Client) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let path = repo().join("charts/usher/crds/scalingpolicies.usher.dev.yaml");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("the apiserver refused {}: {e}", path.display()));
        let start = Instant::now();
        loop {
            let crd = crds.get("scalingpolicies.usher.dev").await.unwrap();
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the chart's CRD was not Established within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The API serves the kind before the first create may succeed.
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
}

/// `v` with every number as an f64 (the server writes 2.0 as 2).
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Creates `doc` and checks the server kept the spec whole: a structural
/// CRD prunes unknown fields silently, so a field the CRD schema lacks
/// would vanish here.
async fn create_policy(api: &Api<DynamicObject>, doc: Value, what: &str) {
    let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    let start = Instant::now();
    let created = loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => break o,
            // Right after Established the kind may still be unknown (404).
            Err(kube::Error::Api(s))
                if s.code == 404 && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: the apiserver refused the policy: {e}"),
        }
    };
    assert_eq!(
        numbers_as_f64(&created.data["spec"]),
        numbers_as_f64(&doc["spec"]),
        "{what}: the stored spec differs from the one sent (pruned or defaulted)"
    );
    // And the controller accepts what the server stored.
    let typed: usher_autoscaler::crd::ScalingPolicy =
        serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
    usher_autoscaler::crd::to_policy(&typed)
        .unwrap_or_else(|e| panic!("{what}: {}: {e}", created.name_any()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_crd_takes_the_example_policies_and_refuses_a_mistyped_one() {
    let c = cluster();
    let admin = c.admin().await;
    install_chart_crd(&admin).await;
    let ns = c.namespace(&admin, "chart-policies").await;
    let api = policies_api(&admin, &ns);

    let dir = repo().join("examples/policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for path in &files {
        let mut doc = yaml(path);
        doc["metadata"]["namespace"] = json!(ns);
        create_policy(&api, doc, &path.display().to_string()).await;
    }

    // The CRD's schema refuses a mistyped field.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "usher.dev/v1alpha1", "kind": "ScalingPolicy",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "moodle"}, "pool": "moodle",
                 "minReplicas": "four", "maxReplicas": 8, "target": {"inFlightPerPod": 8}}
    }))
    .unwrap();
    match api.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(s.message.contains("minReplicas"), "{}", s.message);
        }
        other => panic!("a mistyped policy was not refused: {other:?}"),
    }
}

fn rules(file: &str) -> Vec<PolicyRule> {
    let path = repo().join("charts/usher/files").join(file);
    serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Creates the Role and RoleBinding the chart's template would (rules from
/// `file`) for ServiceAccount `sa` in `ns`, and returns a client with the
/// ServiceAccount's token.
async fn bind(admin: &Client, ns: &str, sa: &str, file: &str) -> Client {
    let c = cluster();
    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some(sa.into()),
            ..Default::default()
        },
        rules: Some(rules(file)),
    };
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("the apiserver refused the Role from {file}: {e}"));
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = c.service_account_token(admin, ns, sa).await;
    c.client_for_token(&token).await
}

/// Whether the client may do `verb` on `group`/`resource` (`res/sub` for a
/// subresource) in `ns`, as the apiserver's authorizer answers.
async fn allowed(client: &Client, ns: &str, verb: &str, group: &str, resource: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "namespace": ns, "verb": verb, "group": group,
            "resource": resource, "subresource": subresource,
        }}
    }))
    .unwrap();
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// Every verb of every rule in `file` is allowed; each of `denied`
/// (verb, group, resource) is not, nor is anything in another namespace.
async fn check_rules(file: &str, sa: &str, denied: &[(&str, &str, &str)]) {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.namespace(&admin, sa).await;
    let client = bind(&admin, &ns, sa, file).await;
    let mut checked = 0;
    for rule in rules(file) {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        allowed(&client, &ns, verb, group, resource).await,
                        "{file}: {verb} {group}/{resource} is not allowed"
                    );
                    assert!(
                        !allowed(&client, "default", verb, group, resource).await,
                        "{file}: {verb} {group}/{resource} is allowed in another namespace"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "{file} has no rules");
    for (verb, group, resource) in denied {
        assert!(
            !allowed(&client, &ns, verb, group, resource).await,
            "{file}: {verb} {group}/{resource} is allowed but should not be"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_role_allows_its_rules_and_nothing_else() {
    check_rules(
        "autoscaler-rules.yaml",
        "usher-autoscaler",
        &[
            ("get", "", "secrets"),
            ("list", "", "secrets"),
            ("delete", "", "pods"),
            ("create", "", "pods"),
            ("patch", "apps", "deployments"),
            ("update", "apps", "deployments"),
            ("delete", "apps", "deployments"),
            ("update", "apps", "deployments/scale"),
            ("create", "usher.dev", "scalingpolicies"),
            ("delete", "usher.dev", "scalingpolicies"),
            ("update", "usher.dev", "scalingpolicies/status"),
            ("delete", "coordination.k8s.io", "leases"),
            ("get", "", "configmaps"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_role_allows_watching_endpointslices_and_nothing_else() {
    check_rules(
        "balancer-rules.yaml",
        "usher-balancer",
        &[
            ("get", "", "secrets"),
            ("list", "", "pods"),
            ("list", "", "endpoints"),
            ("create", "discovery.k8s.io", "endpointslices"),
            ("update", "discovery.k8s.io", "endpointslices"),
            ("delete", "discovery.k8s.io", "endpointslices"),
            ("get", "apps", "deployments"),
        ],
    )
    .await;
}

/// The API resource of a rendered object's kind.
fn resource_of(doc: &Value) -> ApiResource {
    let api_version = doc["apiVersion"].as_str().unwrap();
    let kind = doc["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "Service" => "services",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Pod" => "pods",
        "ScalingPolicy" => "scalingpolicies",
        other => panic!("the chart renders a {other}, which this test does not know"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Creates every object the chart renders with `files` in a new namespace,
/// and returns the namespace and the objects as stored.
async fn install(admin: &Client, prefix: &str, files: &[PathBuf]) -> (String, Vec<DynamicObject>) {
    let c = cluster();
    install_chart_crd(admin).await;
    let ns = c.namespace(admin, prefix).await;
    // Rendered for this API server's version, as Helm would.
    let (docs, _) = render_in(&ns, "v1.20.2", files, &json!({})).unwrap_or_else(|e| panic!("{e}"));
    let mut stored = Vec::new();
    let mut skipped = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        if ["PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"].contains(&kind.as_str()) {
            skipped.push(kind);
            continue;
        }
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &resource_of(&doc));
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("the apiserver refused {kind} {name}: {e}"));
        if kind == "ScalingPolicy" {
            assert_eq!(
                numbers_as_f64(&created.data["spec"]),
                numbers_as_f64(&doc["spec"]),
                "ScalingPolicy {name}: the stored spec differs from the rendered one"
            );
        }
        stored.push(created);
    }
    assert!(
        skipped.contains(&"PodDisruptionBudget".to_string()),
        "{skipped:?}"
    );
    (ns, stored)
}

fn stored<'a>(objs: &'a [DynamicObject], kind: &str, name: &str) -> &'a DynamicObject {
    objs.iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind) && o.name_any() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} was created"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_installs_on_a_real_api_server() {
    let c = cluster();
    let admin = c.admin().await;
    let (ns, objs) = install(&admin, "chart-default", &[]).await;
    // The server kept what the pods need. Rendered for 1.20, the preStop
    // sleep action (1.30+) is left out.
    let d = stored(&objs, "Deployment", "usher-balancer");
    let pod = &d.data["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert!(container.get("lifecycle").is_none(), "{container}");
    let d = stored(&objs, "Deployment", "usher-autoscaler");
    let env = &d.data["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The Service got its node port (type LoadBalancer).
    let svc = stored(&objs, "Service", "usher-balancer");
    assert!(
        svc.data["spec"]["ports"][0]["nodePort"].as_i64().is_some(),
        "{:?}",
        svc.data
    );

    // The chart's autoscaler ServiceAccount, bound by the chart's
    // RoleBinding, may patch deployments/scale here and read no Secret.
    let token = c
        .service_account_token(&admin, &ns, "usher-autoscaler")
        .await;
    let sa = c.client_for_token(&token).await;
    assert!(allowed(&sa, &ns, "patch", "apps", "deployments/scale").await);
    assert!(allowed(&sa, &ns, "watch", "usher.dev", "scalingpolicies").await);
    assert!(!allowed(&sa, &ns, "get", "", "secrets").await);
    let token = c.service_account_token(&admin, &ns, "usher-balancer").await;
    let sa = c.client_for_token(&token).await;
    assert!(allowed(&sa, &ns, "watch", "discovery.k8s.io", "endpointslices").await);
    assert!(!allowed(&sa, &ns, "list", "", "pods").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moodle_values_install_with_their_policy() {
    let admin = cluster().admin().await;
    let (_, objs) = install(
        &admin,
        "chart-moodle",
        &[repo().join("examples/moodle-values.yaml")],
    )
    .await;
    let policy = stored(&objs, "ScalingPolicy", "moodle-exam-day");
    // The controller accepts what the server stored.
    let typed: usher_autoscaler::crd::ScalingPolicy =
        serde_json::from_value(serde_json::to_value(policy).unwrap()).unwrap();
    let p = usher_autoscaler::crd::to_policy(&typed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.pool, "moodle");
    let config = stored(&objs, "ConfigMap", "usher-balancer");
    assert!(
        config.data["data"]["balancer.yaml"]
            .as_str()
            .unwrap()
            .contains("applicationCookie: MoodleSession")
    );
}
