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
use kube::api::{Api, ListParams, Patch, PatchParams};
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
    backfilled_at: Option<Instant>,
    /// The other autoscaler of the target seen at the last tick, if any.
    conflict: Option<String>,
}

type Loops = Mutex<HashMap<String, Arc<tokio::sync::Mutex<PolicyLoop>>>>;
type PodStores = Mutex<HashMap<String, Store<Pod>>>;

/// What one tick saw and did.
#[derive(Debug, Clone)]
pub struct Ticked {
    /// The runner's step: the decision and what it was given.
    pub step: Step,
    /// The target's replicas before acting.
    pub replicas: Replicas,
    /// When and why the target was last scaled by this instance.
    pub last_scale: Option<(DateTime<Utc>, String)>,
    /// Another autoscaler of the same Deployment (an HPA or a KEDA
    /// ScaledObject): this one does not act while it exists.
    pub conflict: Option<String>,
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    settings: Settings,
    leader: watch::Receiver<bool>,
    loops: Loops,
    pods: PodStores,
    failures: Mutex<HashMap<String, backon::ExponentialBackoff>>,
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
                    backfilled_at: None,
                    conflict: None,
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
    async fn pod_urls(
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
        // The first list may still be in flight: wait for it, bounded.
        if tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready())
            .await
            .is_err()
        {
            return Err(format!(
                "the balancer pods in namespace {namespace} could not be listed yet"
            ));
        }
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

    /// Another autoscaler of Deployment `name`: an autoscaling/v1
    /// HorizontalPodAutoscaler or a KEDA ScaledObject targeting it (KEDA
    /// likewise refuses to fight an HPA it does not own). A cluster without
    /// KEDA, or a list this instance may not read, counts as none.
    async fn conflicting_autoscaler(&self, namespace: &str, name: &str) -> Option<String> {
        use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), namespace);
        match hpas.list(&ListParams::default()).await {
            Ok(list) => {
                if let Some(h) = list.items.iter().find(|h| {
                    h.spec.as_ref().is_some_and(|s| {
                        s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == name
                    })
                }) {
                    return Some(format!("HorizontalPodAutoscaler {}", h.name_any()));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list HorizontalPodAutoscalers")
            }
        }
        let resource = kube::api::ApiResource {
            group: "keda.sh".into(),
            version: "v1alpha1".into(),
            api_version: "keda.sh/v1alpha1".into(),
            kind: "ScaledObject".into(),
            plural: "scaledobjects".into(),
        };
        let scaled: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        match scaled.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .find(|o| {
                    let target = &o.data["spec"]["scaleTargetRef"];
                    target["name"].as_str() == Some(name)
                        && target["kind"].as_str().unwrap_or("Deployment") == "Deployment"
                })
                .map(|o| format!("KEDA ScaledObject {}", o.name_any())),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list KEDA ScaledObjects");
                None
            }
        }
    }

    /// Before a scale-down: marks each pod of `deployment` with the live
    /// sticky sessions the balancers count on it
    /// (`controller.kubernetes.io/pod-deletion-cost`), so the ReplicaSet
    /// removes the pods with the fewest first. Only changed costs are
    /// written. Best effort: a failure is logged and the scale goes on.
    async fn mark_deletion_costs(
        &self,
        namespace: &str,
        deployment: &Deployment,
        sessions: &crate::scrape::Sessions,
        key: &str,
    ) {
        let Some(labels) = deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
        else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = match pods.list(&ListParams::default().labels(&labels)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(policy = key, error = %e, "could not list the Deployment's pods to mark their deletion cost");
                return;
            }
        };
        let views: Vec<crate::deletion_cost::PodView> = list
            .items
            .iter()
            .map(|p| crate::deletion_cost::PodView {
                name: p.metadata.name.clone().unwrap_or_default(),
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                cost: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::deletion_cost::ANNOTATION).cloned()),
            })
            .collect();
        for (name, cost) in crate::deletion_cost::changes(&views, sessions) {
            let patch =
                json!({"metadata": {"annotations": {crate::deletion_cost::ANNOTATION: cost}}});
            match pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(policy = key, pod = %name, %cost, "marked the pod's deletion cost (live sessions)")
                }
                Err(e) => {
                    tracing::warn!(policy = key, pod = %name, error = %e, "could not mark the pod's deletion cost")
                }
            }
        }
    }

    /// One tick of `policy`: read, decide and (as leader) act.
    pub async fn tick(
        &self,
        key: &str,
        policy: &Policy,
        regarding: &ObjectReference,
    ) -> Result<Ticked, Error> {
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
            } => {
                self.pod_urls(
                    pods_ns.as_deref().unwrap_or(&namespace),
                    selector,
                    *port,
                    path,
                )
                .await
            }
            SourceKind::Urls(urls) => Ok(urls.clone()),
            SourceKind::Prometheus { .. } => Ok(Vec::new()),
        };
        let now = Utc::now();
        backfill(&mut state, policy, now).await;
        let outcome = state.reader.read(urls, policy.metrics.timeout, now).await;
        if !outcome.errors.is_empty() {
            self.metrics.scrape_errors(key, outcome.errors.len());
            tracing::warn!(policy = key, errors = ?outcome.errors, "reading the balancers failed");
        }
        let step = state.runner.tick(outcome.reading, replicas, now);
        self.metrics.tick(
            key,
            (policy.min_replicas, policy.max_replicas),
            replicas,
            &step,
            started.elapsed().as_secs_f64(),
        );

        let conflict = self
            .conflicting_autoscaler(&namespace, &policy.target_ref.name)
            .await;
        if conflict != state.conflict {
            match &conflict {
                Some(other) => {
                    tracing::warn!(policy = key, deployment = %target, %other, "another autoscaler targets the Deployment: not acting until it is gone");
                    if self.is_leader() {
                        let event = Event {
                            type_: EventType::Warning,
                            reason: "ConflictingAutoscaler".to_string(),
                            note: Some(truncate(
                                &format!(
                                    "{other} also scales Deployment {}; usher-autoscaler does not act until it is removed",
                                    policy.target_ref.name
                                ),
                                1024,
                            )),
                            action: "Hold".to_string(),
                            secondary: None,
                        };
                        if let Err(e) = self.recorder.publish(&event, regarding).await {
                            tracing::warn!(policy = key, error = %e, "could not record the ConflictingAutoscaler Event");
                        }
                    }
                }
                None => {
                    tracing::info!(policy = key, deployment = %target, "no other autoscaler targets the Deployment: acting again")
                }
            }
            state.conflict = conflict.clone();
        }

        if let Some(to) = step.scale_to.filter(|_| conflict.is_none()) {
            let reason = &step.decision.reason;
            if !self.is_leader() {
                tracing::debug!(policy = key, to, %reason, "not the leader: not scaling");
            } else if self.settings.dry_run {
                tracing::info!(policy = key, from = replicas.current, to, %reason, "dry-run: would scale");
            } else {
                if to < replicas.current && !outcome.sessions.is_empty() {
                    self.mark_deletion_costs(&namespace, &deployment, &outcome.sessions, key)
                        .await;
                }
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
        Ok(Ticked {
            step,
            replicas,
            last_scale: state.runner.last_scale().cloned(),
            conflict,
        })
    }
}

/// How often predictive history is re-read from Prometheus (AWS predictive
/// scaling refreshes its forecast every 6 hours).
const BACKFILL_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Loads past demand from `predictive.prometheusUrl` when due.
async fn backfill(state: &mut PolicyLoop, policy: &Policy, now: DateTime<Utc>) {
    let Some(p) = &policy.predictive else { return };
    let Some(url) = &p.prometheus_url else { return };
    if state
        .backfilled_at
        .is_some_and(|t| t.elapsed() < BACKFILL_EVERY)
    {
        return;
    }
    state.backfilled_at = Some(Instant::now());
    let matchers = match &policy.metrics.kind {
        SourceKind::Prometheus { matchers, .. } => matchers.as_deref(),
        _ => None,
    };
    let Some(query) = crate::source::demand_query(policy, matchers) else {
        return;
    };
    let keep = crate::decide::forecast::retention(p.weeks, p.lead_time);
    let start = now - chrono::Duration::from_std(keep).unwrap_or_default();
    match crate::source::query_range_minutes(url, &query, start, now, Duration::from_secs(10)).await
    {
        Ok(points) => {
            let history = state.runner.demand_history_mut();
            for (t, v) in &points {
                history.insert_minute(*t, *v);
            }
            tracing::info!(policy = %policy.name, minutes = points.len(), "loaded predictive history from Prometheus");
        }
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "could not load predictive history; retrying in 6 h")
        }
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
        let status = status_for(&obj, &ctx, &result);
        if obj.status.as_ref() != Some(&status) {
            write_status(&ctx, &obj, status).await?;
        }
    }
    result?;
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

/// The wait before `key`'s next attempt after a failure: 1 s, doubling to
/// 60 s, each with up to as much again of random jitter (backon), so
/// replicas that failed together do not retry together. A success resets it.
fn backoff(ctx: &Context, key: &str) -> Duration {
    use backon::BackoffBuilder as _;
    let mut failures = ctx.failures.lock().expect("failures lock");
    failures
        .entry(key.to_string())
        .or_insert_with(|| {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(60))
                .with_jitter()
                .without_max_times()
                .build()
        })
        .next()
        .unwrap_or(Duration::from_secs(60))
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
    result: &Result<Ticked, Error>,
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
        Ok(Ticked {
            step,
            replicas,
            last_scale,
            conflict,
        }) => {
            status.current_replicas = Some(replicas.current);
            status.ready_replicas = Some(replicas.ready);
            status.desired_replicas = Some(step.decision.desired);
            status.mode = Some(step.decision.mode.as_str().to_string());
            status.forecast_replicas = step.decision.forecast;
            if let Some((at, reason)) = last_scale {
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
            let able = match conflict {
                Some(other) => (
                    "ConflictingAutoscaler",
                    format!("{other} also scales the Deployment; not acting until it is removed"),
                ),
                None => able,
            };
            set_condition(
                &mut status.conditions,
                "AbleToScale",
                !ctx.settings.dry_run && conflict.is_none(),
                able.0,
                &able.1,
                now,
            );
            match conflict {
                Some(other) => set_condition(
                    &mut status.conditions,
                    "ConflictingAutoscaler",
                    true,
                    "ConflictingAutoscaler",
                    &format!("{other} targets the same Deployment"),
                    now,
                ),
                None => {
                    if status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "ConflictingAutoscaler")
                    {
                        set_condition(
                            &mut status.conditions,
                            "ConflictingAutoscaler",
                            false,
                            "NoConflict",
                            "no other autoscaler targets the Deployment",
                            now,
                        );
                    }
                }
            }
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
            // Forget the loops (and metrics) of deleted policies.
            let keep: Vec<String> = store.state().iter().map(|o| key_of(o)).collect();
            cleanup_ctx.retain_crds(&keep);
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

#[cfg(test)]
mod tests {
    //! Error handling against kube's tower-test mock: the API answers what
    //! the test says, so failures can be injected exactly.

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    const POLICY: &str = "apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: web, namespace: lms}
spec:
  scaleTargetRef: {kind: Deployment, name: moodle}
  pool: moodle
  minReplicas: 1
  maxReplicas: 5
  target: {inFlightPerPod: 10}
  metricsSource: {urls: ['http://127.0.0.1:1/metrics'], timeout: 200ms}
";

    fn object() -> Arc<ScalingPolicy> {
        let doc: crate::policy::raw::RawPolicyDocument = serde_saphyr::from_str(POLICY).unwrap();
        let mut obj = ScalingPolicy::new("web", doc.spec);
        obj.metadata.namespace = Some("lms".into());
        obj.metadata.generation = Some(1);
        Arc::new(obj)
    }

    fn context(client: Client) -> Arc<Context> {
        let (tx, leader) = watch::channel(true);
        std::mem::forget(tx);
        Arc::new(Context::new(
            client,
            Settings {
                namespace: Some("lms".into()),
                watch_crds: true,
                policies_dir: None,
                dry_run: false,
                identity: "test".into(),
            },
            Metrics::new(),
            leader,
        ))
    }

    fn json_response(code: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn deployment(replicas: i32) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "moodle", "namespace": "lms"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "moodle"}},
                     "template": {"metadata": {"labels": {"app": "moodle"}}, "spec": {"containers": []}}},
            "status": {"readyReplicas": replicas}
        })
    }

    /// Answers `n` requests: GETs of the Deployment with `get`, status
    /// patches with the patched object; returns the paths seen.
    fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        n: usize,
        get: impl Fn(usize) -> Response<Body> + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut gets = 0;
            for _ in 0..n {
                let (req, send) = handle.next_request().await.expect("a request");
                let line = format!("{} {}", req.method(), req.uri().path());
                if req.method() == http::Method::GET {
                    send.send_response(get(gets));
                    gets += 1;
                } else {
                    let mut obj = serde_json::to_value(object().as_ref()).unwrap();
                    obj["apiVersion"] = json!("usher.dev/v1alpha1");
                    obj["kind"] = json!("ScalingPolicy");
                    send.send_response(json_response(200, obj));
                }
                seen.push(line);
            }
            seen
        })
    }

    /// The delay of a requeue action, from its debug form (kube's `Action`
    /// keeps it private).
    fn requeue_of(action: Action) -> Duration {
        let text = format!("{action:?}");
        let inner = text
            .split("requeue_after: Some(")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("no requeue in {text}"));
        parse_debug_duration(inner).unwrap_or_else(|| panic!("{inner}"))
    }

    /// Parses a `Duration`'s debug text (`1.5s`, `250ms`, `3s`).
    fn parse_debug_duration(t: &str) -> Option<Duration> {
        let (n, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
        let n: f64 = n.parse().ok()?;
        let secs = match unit {
            "s" => n,
            "ms" => n / 1e3,
            "µs" => n / 1e6,
            "ns" => n / 1e9,
            _ => return None,
        };
        Some(Duration::from_secs_f64(secs))
    }

    #[tokio::test]
    async fn api_errors_back_off_exponentially_and_a_success_resets_the_backoff() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(Client::new(service, "lms"));
        let obj = object();
        let failure = || {
            json_response(
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
            )
        };
        // Three failed GETs (each followed by a status write), then a good
        // one, the look for other autoscalers (an HPA list, a KEDA list) and
        // the status write.
        let server = serve(handle, 10, move |i| {
            if i < 3 {
                failure()
            } else {
                json_response(200, deployment(2))
            }
        });
        for expected in [1, 2, 4] {
            let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
            assert_eq!(err.metric_label(), "get_scale", "{err}");
            assert!(err.to_string().contains("lms/moodle"), "{err}");
            // Doubling, with up to as much again of jitter.
            let wait = requeue_of(error_policy(obj.clone(), &err, ctx.clone()));
            let base = Duration::from_secs(expected);
            assert!(wait >= base && wait <= base * 2, "{wait:?} for {base:?}");
        }
        // The Deployment reads again; the balancer does not answer, so the
        // replicas are held, and the loop goes back to its interval.
        let action = reconcile(obj.clone(), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(1)));
        let seen = server.await.unwrap();
        assert_eq!(
            seen.iter()
                .filter(|s| s.ends_with("/scalingpolicies/web/status"))
                .count(),
            4,
            "{seen:?}"
        );
        assert!(
            seen[0].starts_with("GET /apis/apps/v1/namespaces/lms/deployments/moodle"),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.ends_with("/scale")),
            "scaled without metrics: {seen:?}"
        );
        assert!(
            seen.iter().any(|s| s
                .starts_with("GET /apis/autoscaling/v1/namespaces/lms/horizontalpodautoscalers")),
            "{seen:?}"
        );
        // After the success the next failure starts over at 1 s.
        let err = Error::TargetMissing("lms/moodle".into());
        let wait = requeue_of(error_policy(obj, &err, ctx.clone()));
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let text = ctx.metrics.encode();
        assert!(
            text.contains("usher_autoscaler_errors_total{error=\"get_scale\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("usher_autoscaler_metrics_stale{policy=\"lms/web\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_invalid_policy_waits_for_a_change_and_says_why_in_the_status() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(Client::new(service, "lms"));
        let mut obj = (*object()).clone();
        obj.spec.min_replicas = 9;
        let obj = Arc::new(obj);
        let server = serve(handle, 1, |_| unreachable!("no GET for an invalid policy"));
        let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
        assert_eq!(err.metric_label(), "invalid_policy");
        assert!(err.to_string().contains("spec.minReplicas"), "{err}");
        assert_eq!(error_policy(obj, &err, ctx), Action::await_change());
        assert_eq!(
            server.await.unwrap(),
            vec!["PATCH /apis/usher.dev/v1alpha1/namespaces/lms/scalingpolicies/web/status"]
        );
    }
}
