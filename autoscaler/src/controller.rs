//! The Kubernetes controller: for each policy (a `ScalingPolicy` object or a
//! policy file) it reads the balancers, calls the pure `decide()` through a
//! [`Runner`], and, while it holds the leader lease and is not in dry-run,
//! scales the Deployment through its scale subresource, records an Event and
//! writes the policy's status.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::crd::{Condition, ScalingPolicy, ScalingPolicyStatus, to_policy};
use crate::policy::{self, Policy, PolicyError, SourceKind};
use crate::runner::{Replicas, Runner, Step};
use crate::source::Reader;
use crate::telemetry::Metrics;

/// Controller errors; each has a short label for the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy does not validate.
    #[error("{0}")]
    InvalidPolicy(#[from] PolicyError),
    /// The Deployment does not exist.
    #[error("Deployment {0} not found")]
    TargetMissing(String),
    /// Reading the Deployment failed.
    #[error("reading Deployment {name}: {source}")]
    GetScale {
        /// `namespace/name`.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Patching `deployments/scale` failed.
    #[error("scaling Deployment {name}: {source}")]
    UpdateScale {
        /// `namespace/name`.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the policy's status failed.
    #[error("writing the status of {name}: {source}")]
    Status {
        /// `namespace/name`.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

impl Error {
    /// The `error` label of `usher_autoscaler_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidPolicy(_) => "invalid_policy",
            Self::TargetMissing(_) => "target_missing",
            Self::GetScale { .. } => "get_scale",
            Self::UpdateScale { .. } => "update_scale",
            Self::Status { .. } => "status",
        }
    }
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the ScalingPolicies and policies without one (`None`:
    /// all namespaces, which needs a ClusterRole).
    pub namespace: Option<String>,
    /// Watch `ScalingPolicy` objects.
    pub watch_crds: bool,
    /// Also run the policies in this directory.
    pub policies_dir: Option<PathBuf>,
    /// Compute, log and record, but never patch.
    pub dry_run: bool,
    /// This instance's name (Events, the Lease).
    pub identity: String,
}

/// One policy's loop state.
struct PolicyLoop {
    runner: Runner,
    reader: Reader,
}

type Loops = Mutex<HashMap<String, Arc<tokio::sync::Mutex<PolicyLoop>>>>;
type PodStores = Mutex<HashMap<String, Store<Pod>>>;

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    settings: Settings,
    leader: watch::Receiver<bool>,
    loops: Loops,
    pods: PodStores,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`; `leader` says when this instance may act.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let reporter = Reporter {
            controller: "usher-autoscaler".to_string(),
            instance: Some(settings.identity.clone()),
        };
        metrics.set_dry_run(settings.dry_run);
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            leader,
            loops: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    fn namespace_of(&self, policy: &Policy) -> String {
        policy
            .namespace
            .clone()
            .or_else(|| self.settings.namespace.clone())
            .unwrap_or_else(|| "default".to_string())
    }

    fn policy_loop(&self, key: &str, policy: &Policy) -> Arc<tokio::sync::Mutex<PolicyLoop>> {
        let mut loops = self.loops.lock().expect("loops lock");
        loops
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(PolicyLoop {
                    runner: Runner::new(policy.clone()),
                    reader: Reader::for_policy(policy),
                }))
            })
            .clone()
    }

    /// Forgets policies not in `keep`.
    fn retain(&self, keep: &[String]) {
        let mut loops = self.loops.lock().expect("loops lock");
        loops.retain(|k, _| {
            let kept = keep.contains(k);
            if !kept {
                self.metrics.remove(k);
            }
            kept
        });
    }

    /// The ready balancer pods' metrics URLs (through a watch per selector).
    fn pod_urls(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
        port: u16,
        path: &str,
    ) -> Result<Vec<String>, String> {
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let key = format!("{namespace}/{labels}");
        let store = {
            let mut stores = self.pods.lock().expect("pod stores lock");
            stores
                .entry(key)
                .or_insert_with(|| {
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                    let (reader, writer) = reflector::store();
                    let stream = reflector::reflector(
                        writer,
                        watcher(api, watcher::Config::default().labels(&labels)),
                    )
                    .default_backoff()
                    .touched_objects();
                    tokio::spawn(async move {
                        stream.for_each(|_| std::future::ready(())).await;
                    });
                    reader
                })
                .clone()
        };
        let urls: Vec<String> = store
            .state()
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .map(|ip| {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip
                };
                format!("http://{host}:{port}{path}")
            })
            .collect();
        if urls.is_empty() {
            Err(format!(
                "no ready balancer pod matches `{labels}` in namespace {namespace}"
            ))
        } else {
            Ok(urls)
        }
    }

    /// One tick of `policy`: read, decide and (as leader) act. Returns the
    /// step and whether the target was scaled.
    pub async fn tick(
        &self,
        key: &str,
        policy: &Policy,
        regarding: &ObjectReference,
    ) -> Result<(Step, Replicas), Error> {
        let started = Instant::now();
        let namespace = self.namespace_of(policy);
        let state = self.policy_loop(key, policy);
        let mut state = state.lock().await;
        state.runner.set_policy(policy.clone());

        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        let target = format!("{namespace}/{}", policy.target_ref.name);
        let deployment = deployments
            .get_opt(&policy.target_ref.name)
            .await
            .map_err(|source| Error::GetScale {
                name: target.clone(),
                source,
            })?
            .ok_or_else(|| Error::TargetMissing(target.clone()))?;
        let replicas = Replicas {
            current: deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(1),
            ready: deployment
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
        };

        let urls = match &policy.metrics.kind {
            SourceKind::Pods {
                selector,
                namespace: pods_ns,
                port,
                path,
            } => self.pod_urls(
                pods_ns.as_deref().unwrap_or(&namespace),
                selector,
                *port,
                path,
            ),
            SourceKind::Urls(urls) => Ok(urls.clone()),
            SourceKind::Prometheus { .. } => Ok(Vec::new()),
        };
        let now = Utc::now();
        let outcome = state.reader.read(urls, policy.metrics.timeout, now).await;
        if !outcome.errors.is_empty() {
            self.metrics.scrape_errors(key, outcome.errors.len());
            tracing::warn!(policy = key, errors = ?outcome.errors, "reading the balancers failed");
        }
        let step = state.runner.tick(outcome.reading, replicas, now);
        self.metrics
            .tick(key, replicas, &step, started.elapsed().as_secs_f64());

        if let Some(to) = step.scale_to {
            let reason = &step.decision.reason;
            if !self.is_leader() {
                tracing::debug!(policy = key, to, %reason, "not the leader: not scaling");
            } else if self.settings.dry_run {
                tracing::info!(policy = key, from = replicas.current, to, %reason, "dry-run: would scale");
            } else {
                deployments
                    .patch_scale(
                        &policy.target_ref.name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": to}})),
                    )
                    .await
                    .map_err(|source| Error::UpdateScale {
                        name: target.clone(),
                        source,
                    })?;
                state.runner.scaled(now, reason);
                self.metrics.scaled(key, replicas.current, to);
                tracing::info!(policy = key, deployment = %target, from = replicas.current, to, mode = step.decision.mode.as_str(), %reason, "scaled");
                let (event_reason, action) = if to > replicas.current {
                    ("ScaledUp", "ScaleUp")
                } else {
                    ("ScaledDown", "ScaleDown")
                };
                let event = Event {
                    type_: EventType::Normal,
                    reason: event_reason.to_string(),
                    note: Some(truncate(
                        &format!(
                            "Deployment {} scaled from {} to {}: {reason}",
                            policy.target_ref.name, replicas.current, to
                        ),
                        1024,
                    )),
                    action: action.to_string(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&event, regarding).await {
                    tracing::warn!(policy = key, error = %e, "could not record the scale Event");
                }
            }
        }
        Ok((step, replicas))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn key_of(obj: &ScalingPolicy) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reconciles one `ScalingPolicy`: a tick, then its status.
pub async fn reconcile(obj: Arc<ScalingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&obj);
    let policy = match to_policy(&obj) {
        Ok(p) => p,
        Err(e) => {
            if ctx.is_leader() {
                let mut status = obj.status.clone().unwrap_or_default();
                status.observed_generation = obj.metadata.generation;
                set_condition(
                    &mut status.conditions,
                    "ScalingActive",
                    false,
                    "InvalidPolicy",
                    &e.to_string(),
                    Utc::now(),
                );
                write_status(&ctx, &obj, status).await?;
            }
            return Err(Error::InvalidPolicy(e));
        }
    };
    let regarding = obj.object_ref(&());
    let result = ctx.tick(&key, &policy, &regarding).await;
    if ctx.is_leader() {
        let status = status_for(&obj, &ctx, &key, &result);
        if obj.status.as_ref() != Some(&status) {
            write_status(&ctx, &obj, status).await?;
        }
    }
    let (_step, _replicas) = result?;
    ctx.failures.lock().expect("failures lock").remove(&key);
    Ok(Action::requeue(policy.metrics.interval))
}

/// Backs off per policy: 1 s, 2 s, 4 s … up to 60 s; an invalid policy
/// waits for its next change.
pub fn error_policy(obj: Arc<ScalingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    let key = key_of(&obj);
    tracing::warn!(policy = %key, error = %error, "reconcile failed");
    if matches!(error, Error::InvalidPolicy(_)) {
        return Action::await_change();
    }
    Action::requeue(backoff(&ctx, &key))
}

fn backoff(ctx: &Context, key: &str) -> Duration {
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(key.to_string()).or_insert(0);
    *n = (*n + 1).min(7);
    Duration::from_secs(1 << (*n - 1)).min(Duration::from_secs(60))
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let status = if ok { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let since = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let c = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message, 1024),
        last_transition_time: since,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(old) => *old = c,
        None => conditions.push(c),
    }
}

/// The status after a tick, HPA-style.
fn status_for(
    obj: &ScalingPolicy,
    ctx: &Context,
    key: &str,
    result: &Result<(Step, Replicas), Error>,
) -> ScalingPolicyStatus {
    let now = Utc::now();
    let mut status = obj.status.clone().unwrap_or_default();
    status.observed_generation = obj.metadata.generation;
    match result {
        Err(e) => {
            let reason = match e {
                Error::TargetMissing(_) | Error::GetScale { .. } => "FailedGetScale",
                _ => "FailedUpdateScale",
            };
            set_condition(
                &mut status.conditions,
                "AbleToScale",
                false,
                reason,
                &e.to_string(),
                now,
            );
        }
        Ok((step, replicas)) => {
            status.current_replicas = Some(replicas.current);
            status.ready_replicas = Some(replicas.ready);
            status.desired_replicas = Some(step.decision.desired);
            status.mode = Some(step.decision.mode.as_str().to_string());
            let state = ctx.loops.lock().expect("loops lock").get(key).cloned();
            if let Some(state) = state
                && let Ok(state) = state.try_lock()
                && let Some((at, reason)) = state.runner.last_scale()
            {
                status.last_scale_time =
                    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                status.last_scale_reason = Some(truncate(reason, 1024));
            }
            let able = if ctx.settings.dry_run {
                (
                    "DryRun",
                    "dry-run: decisions are recorded, the Deployment is never patched".to_string(),
                )
            } else {
                (
                    "ReadyForNewScale",
                    "the Deployment's scale subresource can be read and updated".to_string(),
                )
            };
            set_condition(
                &mut status.conditions,
                "AbleToScale",
                !ctx.settings.dry_run,
                able.0,
                &able.1,
                now,
            );
            if step.stale {
                set_condition(
                    &mut status.conditions,
                    "ScalingActive",
                    false,
                    "FailedGetMetrics",
                    &format!(
                        "holding {} replicas: {}",
                        replicas.current, step.decision.reason
                    ),
                    now,
                );
            } else {
                set_condition(
                    &mut status.conditions,
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    "the balancers' metrics are fresh",
                    now,
                );
            }
            let d = &step.decision;
            let limited_reason = if !d.limited {
                "DesiredWithinRange"
            } else if d.reason.contains("maxReplicas") {
                "TooManyReplicas"
            } else if d.reason.contains("minReplicas") {
                "TooFewReplicas"
            } else if d.reason.contains("stabilized") {
                "ScaleDownStabilized"
            } else {
                "ScaleRateLimited"
            };
            set_condition(
                &mut status.conditions,
                "ScalingLimited",
                d.limited,
                limited_reason,
                &d.reason,
                now,
            );
        }
    }
    status
}

async fn write_status(
    ctx: &Context,
    obj: &ScalingPolicy,
    status: ScalingPolicyStatus,
) -> Result<(), Error> {
    let api: Api<ScalingPolicy> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        name: key_of(obj),
        source,
    })
}

/// Runs the `ScalingPolicy` controller until `shutdown`.
pub async fn run_crds(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let api: Api<ScalingPolicy> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let mut stop = shutdown.clone();
    let controller = controller.graceful_shutdown_on(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let cleanup_ctx = ctx.clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
            let keep: Vec<String> = store.state().iter().map(|o| key_of(o)).collect();
            if !store.state().is_empty() {
                cleanup_ctx.retain_crds(&keep);
            }
            std::future::ready(())
        })
        .await;
}

impl Context {
    fn retain_crds(&self, keep: &[String]) {
        let files: Vec<String> = self
            .loops
            .lock()
            .expect("loops lock")
            .keys()
            .filter(|k| k.starts_with("file:"))
            .cloned()
            .collect();
        let mut all = keep.to_vec();
        all.extend(files);
        self.retain(&all);
    }
}

/// Runs the policies of a directory until `shutdown`, re-reading it every
/// 10 s; an invalid file keeps the last good set running.
pub async fn run_files(ctx: Arc<Context>, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut policies: Vec<Policy> = Vec::new();
    let mut loaded_at: Option<Instant> = None;
    let mut next: HashMap<String, Instant> = HashMap::new();
    loop {
        if loaded_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            match policy::load_dir(&dir) {
                Ok(p) => policies = p,
                Err(e) => {
                    tracing::error!(error = %e, "policy directory not reloaded; the last good policies keep running")
                }
            }
            loaded_at = Some(Instant::now());
        }
        let now = Instant::now();
        for policy in &policies {
            let key = format!("file:{}/{}", ctx.namespace_of(policy), policy.name);
            if next.get(&key).is_some_and(|t| *t > now) {
                continue;
            }
            let namespace = ctx.namespace_of(policy);
            let regarding = ObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: Some("Deployment".to_string()),
                name: Some(policy.target_ref.name.clone()),
                namespace: Some(namespace),
                ..ObjectReference::default()
            };
            let wait = match ctx.tick(&key, policy, &regarding).await {
                Ok(_) => {
                    ctx.failures.lock().expect("failures lock").remove(&key);
                    policy.metrics.interval
                }
                Err(e) => {
                    ctx.metrics.error(e.metric_label());
                    tracing::warn!(policy = %key, error = %e, "tick failed");
                    backoff(&ctx, &key)
                }
            };
            next.insert(key, now + wait);
        }
        let sleep_until = next
            .values()
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until.max(now + Duration::from_millis(50)).into()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
