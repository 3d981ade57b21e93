//! A real, local Kubernetes control plane for integration tests: etcd,
//! kube-apiserver 1.20 (TLS, token auth, RBAC) and kube-controller-manager
//! (service-account, token, deployment, replicaset, namespace and
//! garbage-collector controllers). There is no scheduler and no kubelet, so
//! Pods stay `Pending`.
//!
//! Use it from a test file in `autoscaler/tests/` with
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster;
//! ```
//!
//! then call [`cluster()`] in each test. The control plane is started once per
//! test binary by `tests/k8s/start.sh` (binaries from `tests/k8s/build.sh`),
//! shared by all tests of that binary, and stopped (its directory removed) by
//! the script's watchdog within a second after the test process exits. Tests
//! share it, so each should work in its own namespace ([`Cluster::namespace`]).
//! When the control plane cannot start, every test calling [`cluster()`]
//! panics with the script's output: such tests fail, they never skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// How long [`Cluster::service_account_token`] waits for the token Secret.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// A running control plane (see the module documentation).
#[derive(Debug)]
pub struct Cluster {
    /// Directory holding the control plane's files, logs and pid files.
    pub dir: PathBuf,
    /// The apiserver URL, `https://127.0.0.1:PORT`.
    pub server: String,
    /// Kubeconfig of user `admin` (group `system:masters`), namespace `default`.
    pub kubeconfig: PathBuf,
    /// PEM CA certificate of the apiserver's serving certificate.
    pub ca_file: PathBuf,
    /// `certificate-authority-data` (base64 PEM) from the admin kubeconfig.
    ca_data: String,
}

/// The shared control plane, started on first use. Panics (with
/// `tests/k8s/start.sh`'s output) when it cannot start.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("the test Kubernetes control plane did not start:\n{e}"),
    }
}

fn start() -> Result<Cluster, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/k8s/start.sh");
    let temp = tempfile::Builder::new()
        .prefix("usher-k8s-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(temp.path())
        .env("USHER_K8S_OWNER_PID", std::process::id().to_string())
        .env("USHER_K8S_CLEANUP", "1")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let output = format!(
        "{} exited with {}\n--- stdout\n{}--- stderr\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        // `temp` is dropped here: a failed start leaves nothing behind.
        return Err(output);
    }
    // From now on the watchdog removes the directory once this process exits.
    let dir = temp.keep();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("reading {name}: {e}\n{output}"))
    };
    let server = read("server")?;
    let kubeconfig = dir.join("admin.kubeconfig");
    let ca_data = Kubeconfig::read_from(&kubeconfig)
        .map_err(|e| format!("reading admin.kubeconfig: {e}"))?
        .clusters
        .into_iter()
        .find_map(|c| c.cluster?.certificate_authority_data)
        .ok_or_else(|| format!("admin.kubeconfig has no certificate-authority-data\n{output}"))?;
    eprintln!(
        "{} (started in {:.1?}, files in {})",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed(),
        dir.display()
    );
    Ok(Cluster {
        ca_file: dir.join("ca.crt"),
        dir,
        server,
        kubeconfig,
        ca_data,
    })
}

impl Cluster {
    /// A client authenticated as `admin` (group `system:masters`). Makes a new
    /// client each call: each `#[tokio::test]` has its own runtime.
    pub async fn admin(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        client(kubeconfig).await
    }

    /// Creates a namespace named `PREFIX-N` (unique within this cluster, which
    /// belongs to this test process) and returns its name.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut prefix: String = prefix
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .take(40)
            .collect();
        prefix = prefix.trim_matches('-').to_owned();
        if prefix.is_empty() {
            prefix.push_str("test");
        }
        let name = format!("{prefix}-{n}");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// The token of ServiceAccount `sa` in `ns`, creating the ServiceAccount
    /// if absent and waiting (at most 30 s) for the controller-manager to give
    /// it a token Secret.
    pub async fn service_account_token(&self, client: &Client, ns: &str, sa: &str) -> String {
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => panic!("creating ServiceAccount {ns}/{sa}: {e}"),
        }
        let secrets = Api::<Secret>::namespaced(client.clone(), ns);
        let list = ListParams::default().fields("type=kubernetes.io/service-account-token");
        let deadline = Instant::now() + TOKEN_WAIT;
        loop {
            let found = secrets
                .list(&list)
                .await
                .unwrap_or_else(|e| panic!("listing Secrets in {ns}: {e}"));
            for secret in found {
                let for_sa = secret
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/service-account.name"))
                    .is_some_and(|name| name == sa);
                if for_sa && let Some(token) = secret.data.as_ref().and_then(|d| d.get("token")) {
                    return String::from_utf8(token.0.clone()).unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no token Secret for ServiceAccount {ns}/{sa} after {TOKEN_WAIT:?}; see {}",
                self.dir.join("controller-manager.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a kubeconfig authenticating with `token` (e.g. a ServiceAccount's),
    /// its current context in `namespace`, e.g. for running `usher-autoscaler`
    /// as that ServiceAccount.
    pub fn kubeconfig_for_token(&self, token: &str, namespace: &str, path: &Path) {
        let text = serde_json::to_string_pretty(&self.token_kubeconfig(token, namespace)).unwrap();
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A client authenticated with `token`, default namespace `default`.
    pub async fn client_for_token(&self, token: &str) -> Client {
        let kubeconfig = serde_json::from_value(self.token_kubeconfig(token, "default")).unwrap();
        client(kubeconfig).await
    }

    /// A kubeconfig (as JSON, which is YAML too) for `token` in `namespace`.
    fn token_kubeconfig(&self, token: &str, namespace: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "usher-test",
                "cluster": {
                    "server": self.server,
                    "certificate-authority-data": self.ca_data,
                },
            }],
            "users": [{ "name": "token", "user": { "token": token } }],
            "contexts": [{
                "name": "token@usher-test",
                "context": { "cluster": "usher-test", "user": "token", "namespace": namespace },
            }],
            "current-context": "token@usher-test",
        })
    }
}

async fn client(kubeconfig: Kubeconfig) -> Client {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}
