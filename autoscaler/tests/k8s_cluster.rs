//! The test Kubernetes control plane (`support/cluster.rs`) is real: the
//! apiserver serves TLS and authenticates tokens, RBAC is enforced, and the
//! controller-manager runs the token and deployment controllers.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::test]
async fn admin_lists_namespaces() {
    let cluster = cluster();
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "admin-lists").await;
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for expected in ["default", "kube-system", ns.as_str()] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
}

#[tokio::test]
async fn service_account_without_binding_is_forbidden() {
    let cluster = cluster();
    let admin = cluster.admin().await;
    let ns = cluster.namespace(&admin, "rbac").await;
    let token = cluster.service_account_token(&admin, &ns, "nobody").await;
    let client = cluster.client_for_token(&token).await;
    let err = Api::<Pod>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without any RoleBinding listed pods");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{ns}:nobody")),
                "{status:?}"
            );
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    // The same token written as a kubeconfig file authenticates as well.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    cluster.kubeconfig_for_token(&token, &ns, &path);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, ns);
    let client = kube::Client::try_from(config).unwrap();
    let err = Api::<Pod>::default_namespaced(client)
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without any RoleBinding listed pods");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
}

#[tokio::test]
async fn deployment_controller_observes_deployments() {
    let cluster = cluster();
    let client = cluster.admin().await;
    let ns = cluster.namespace(&client, "deploy").await;
    let deployments = Api::<Deployment>::namespaced(client, &ns);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "lms" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "lms" } },
            "template": {
                "metadata": { "labels": { "app": "lms" } },
                "spec": { "containers": [{ "name": "lms", "image": "example.invalid/lms:1" }] },
            },
        },
    }))
    .unwrap();
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let generation = created.metadata.generation.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = deployments.get("lms").await.unwrap();
        let status = current.status.unwrap_or_default();
        // The ReplicaSet controller counts the (never scheduled) Pods it made.
        if status.observed_generation == Some(generation) && status.replicas == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deployment status not maintained after 30 s: {status:?}; see {}",
            cluster.dir.join("controller-manager.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
