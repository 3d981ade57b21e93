//! ScalingPolicy documents as written by SREs: serde structs that mirror the
//! YAML (and the CRD) exactly, denying unknown fields.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::ScalingPolicyStatus;

/// A `ScalingPolicy` document.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicyDocument {
    /// Must be `usher.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `ScalingPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: RawMetadata,
    /// The policy.
    pub spec: RawSpec,
}

/// Object metadata (the parts a policy uses).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RawMetadata {
    /// Policy name.
    pub name: String,
    /// Namespace of the policy and its Deployment.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec` of a ScalingPolicy. The same struct is the CRD's spec, so files
/// and `kubectl apply` share one schema.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, CustomResource)]
#[kube(
    group = "usher.dev",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    namespaced,
    status = "ScalingPolicyStatus",
    shortname = "sp",
    category = "usher",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSpec {
    /// The Deployment to scale.
    pub scale_target_ref: RawTargetRef,
    /// The balancer pool whose metrics drive it.
    pub pool: String,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// What one pod should carry.
    pub target: RawTarget,
    /// Surge (panic) detection.
    #[serde(default)]
    pub surge: Option<RawSurge>,
    /// HPA v2 `behavior`.
    #[serde(default)]
    pub behavior: Option<RawBehavior>,
    /// Pre-warm floors for known peaks.
    #[serde(default)]
    pub schedules: Vec<RawSchedule>,
    /// Relative change ignored to avoid flapping (0.1 = 10%).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Where the balancer replicas' metrics are read.
    #[serde(default)]
    pub metrics_source: Option<RawMetricsSource>,
    /// Predictive pre-scaling from past weeks' demand.
    #[serde(default)]
    pub predictive: Option<RawPredictive>,
}

/// `predictive`: raise the floor ahead of recurring peaks.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPredictive {
    /// How far ahead to forecast, e.g. `10m`.
    #[serde(default)]
    pub lead_time: Option<String>,
    /// Past weeks averaged (same weekday and time).
    #[serde(default)]
    pub weeks: Option<u32>,
    /// Safety margin added to the forecast (0.2 = 20%).
    #[serde(default)]
    pub margin: Option<f64>,
    /// Record what the forecast would do, change nothing.
    #[serde(default)]
    pub forecast_only: Option<bool>,
    /// Prometheus to read past demand from (`query_range`); without it the
    /// autoscaler keeps its own history.
    #[serde(default)]
    pub prometheus_url: Option<String>,
}

/// `metricsSource`: exactly one of `pods`, `urls` or `prometheus`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMetricsSource {
    /// Balancer pods found through the Pods API (ready pods only).
    #[serde(default)]
    pub pods: Option<RawPodsSource>,
    /// Fixed `/metrics` URLs of balancer replicas (outside Kubernetes).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// A Prometheus server's HTTP API instead of scraping the balancers.
    #[serde(default)]
    pub prometheus: Option<RawPrometheusSource>,
    /// How often to read, e.g. `1s`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Hold the replicas when no reading succeeded for this long, e.g. `5s`.
    #[serde(default)]
    pub stale_after: Option<String>,
    /// Give up on one replica's scrape after this long, e.g. `800ms`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `metricsSource.pods`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPodsSource {
    /// Label selector (`matchLabels`) of the balancer pods.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Namespace of the balancer pods; the policy's own when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The balancer's admin port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Metrics path, `/metrics` when absent.
    #[serde(default)]
    pub path: Option<String>,
}

/// `metricsSource.prometheus`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPrometheusSource {
    /// Base URL of the Prometheus server, e.g. `http://prometheus:9090`.
    pub url: String,
    /// Extra label matchers added to every query, e.g. `namespace="lms"`.
    #[serde(default)]
    pub matchers: Option<String>,
}

/// `scaleTargetRef`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTargetRef {
    /// `apps/v1` when absent.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `Deployment`.
    pub kind: String,
    /// Deployment name.
    pub name: String,
}

/// The per-pod target: exactly one field.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTarget {
    /// Requests in flight plus queued, per ready pod.
    #[serde(default)]
    pub in_flight_per_pod: Option<f64>,
    /// Requests per second per ready pod.
    #[serde(default)]
    pub requests_per_second_per_pod: Option<f64>,
    /// A latency objective.
    #[serde(default)]
    pub latency: Option<RawLatency>,
}

/// A latency objective.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLatency {
    /// The 95th percentile to stay under, e.g. `300ms`.
    pub p95: String,
}

/// Surge detection (Knative KPA's panic mode).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSurge {
    /// Short window whose average triggers panic.
    #[serde(default)]
    pub panic_window: Option<String>,
    /// Long window for normal decisions; panic ends after one calm stable window.
    #[serde(default)]
    pub stable_window: Option<String>,
    /// Panic when the panic-window need is this many times the ready pods.
    #[serde(default)]
    pub panic_threshold: Option<f64>,
}

/// HPA v2 `behavior`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBehavior {
    /// Rules for scaling up.
    #[serde(default)]
    pub scale_up: Option<RawRules>,
    /// Rules for scaling down.
    #[serde(default)]
    pub scale_down: Option<RawRules>,
}

/// HPA v2 `HPAScalingRules`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRules {
    /// Seconds of past recommendations considered.
    #[serde(default)]
    pub stabilization_window_seconds: Option<u32>,
    /// `Max`, `Min` or `Disabled`.
    #[serde(default)]
    pub select_policy: Option<String>,
    /// Rate limits.
    #[serde(default)]
    pub policies: Option<Vec<RawRatePolicy>>,
}

/// HPA v2 `HPAScalingPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRatePolicy {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Pods or percent per period.
    pub value: u32,
    /// Period length in seconds.
    pub period_seconds: u32,
}

/// A pre-warm floor.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSchedule {
    /// Name used in reasons and events.
    #[serde(default)]
    pub name: Option<String>,
    /// 5-field cron expression for the start.
    pub cron: String,
    /// IANA time zone of the cron expression; UTC when absent.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// How long the floor holds after each start.
    pub duration: String,
    /// The floor.
    pub min_replicas: u32,
}
