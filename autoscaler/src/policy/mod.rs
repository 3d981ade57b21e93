//! Scaling policies: YAML documents (files or the `ScalingPolicy` CRD)
//! validated into typed settings, with errors that name the field and fix.

pub mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::validate;

#[cfg(test)]
mod tests;

/// A validated scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// Namespace (of the policy and its Deployment).
    pub namespace: Option<String>,
    /// The Deployment to scale.
    pub target_ref: TargetRef,
    /// The balancer pool whose metrics drive it.
    pub pool: String,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// What one pod should carry.
    pub target: Target,
    /// Surge detection.
    pub surge: Surge,
    /// HPA-style behaviour.
    pub behavior: Behavior,
    /// Pre-warm floors.
    pub schedules: Vec<Schedule>,
    /// Relative change ignored (0.1 = 10%).
    pub tolerance: f64,
    /// Where the balancers' metrics are read.
    pub metrics: MetricsSource,
    /// Predictive pre-scaling, if enabled.
    pub predictive: Option<Predictive>,
}

/// Predictive pre-scaling settings (see [`crate::decide::forecast`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Predictive {
    /// How far ahead the forecast looks.
    pub lead_time: std::time::Duration,
    /// Past weeks averaged.
    pub weeks: u32,
    /// Safety margin (0.2 = 20%).
    pub margin: f64,
    /// Record only; never raise the floor.
    pub forecast_only: bool,
    /// Prometheus base URL for past demand.
    pub prometheus_url: Option<String>,
}

/// Where and how often the balancers' metrics are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSource {
    /// The replicas (or the Prometheus server) to ask.
    pub kind: SourceKind,
    /// Time between readings.
    pub interval: Duration,
    /// Without a successful reading for this long, hold the replicas.
    pub stale_after: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The label selector Usher's Helm chart puts on balancer pods.
pub const DEFAULT_BALANCER_SELECTOR: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "usher"),
    ("app.kubernetes.io/component", "balancer"),
];

/// The balancer's default admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// The replicas a policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Ready pods matching a label selector, scraped directly.
    Pods {
        /// `matchLabels`.
        selector: std::collections::BTreeMap<String, String>,
        /// Namespace of the pods (`None`: the policy's).
        namespace: Option<String>,
        /// Admin port.
        port: u16,
        /// Metrics path.
        path: String,
    },
    /// Fixed URLs.
    Urls(Vec<String>),
    /// A Prometheus server's HTTP API.
    Prometheus {
        /// Base URL.
        url: String,
        /// Extra label matchers for every query.
        matchers: Option<String>,
    },
}

/// The object a policy scales.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// API version, `apps/v1`.
    pub api_version: String,
    /// Kind, `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// The per-pod target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// In-flight plus queued requests per ready pod.
    InFlightPerPod(f64),
    /// Requests per second per ready pod.
    RequestsPerSecondPerPod(f64),
    /// Keep the 95th percentile latency under this.
    LatencyP95(Duration),
}

/// Surge detection: KPA's stable and panic windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surge {
    /// Short window.
    pub panic_window: Duration,
    /// Long window.
    pub stable_window: Duration,
    /// Panic when the short-window need reaches this multiple of ready pods.
    pub panic_threshold: f64,
}

impl Default for Surge {
    fn default() -> Self {
        Self {
            panic_window: Duration::from_secs(6),
            stable_window: Duration::from_secs(60),
            panic_threshold: 2.0,
        }
    }
}

/// HPA v2 behaviour for both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    /// Scaling up.
    pub scale_up: Rules,
    /// Scaling down.
    pub scale_down: Rules,
}

impl Default for Behavior {
    /// Usher's defaults: scale up fast (KPA allows 1000% per tick), scale
    /// down only after 5 minutes of lower recommendations (the HPA's window),
    /// by at most half the pods per 30 s.
    fn default() -> Self {
        Self {
            scale_up: Rules {
                stabilization: Duration::ZERO,
                select: Select::Max,
                policies: vec![
                    RatePolicy {
                        kind: RateKind::Percent,
                        value: 1000,
                        period: Duration::from_secs(2),
                    },
                    RatePolicy {
                        kind: RateKind::Pods,
                        value: 4,
                        period: Duration::from_secs(2),
                    },
                ],
            },
            scale_down: Rules {
                stabilization: Duration::from_secs(300),
                select: Select::Max,
                policies: vec![RatePolicy {
                    kind: RateKind::Percent,
                    value: 50,
                    period: Duration::from_secs(30),
                }],
            },
        }
    }
}

impl Behavior {
    /// The Kubernetes HPA's defaults, for comparison.
    pub fn hpa_defaults() -> Self {
        Self {
            scale_up: Rules {
                stabilization: Duration::ZERO,
                select: Select::Max,
                policies: vec![
                    RatePolicy {
                        kind: RateKind::Percent,
                        value: 100,
                        period: Duration::from_secs(15),
                    },
                    RatePolicy {
                        kind: RateKind::Pods,
                        value: 4,
                        period: Duration::from_secs(15),
                    },
                ],
            },
            scale_down: Rules {
                stabilization: Duration::from_secs(300),
                select: Select::Max,
                policies: vec![RatePolicy {
                    kind: RateKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                }],
            },
        }
    }
}

/// HPA `HPAScalingRules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Window of past recommendations considered.
    pub stabilization: Duration,
    /// Which policy wins.
    pub select: Select,
    /// Rate limits.
    pub policies: Vec<RatePolicy>,
}

/// `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the most change.
    Max,
    /// The policy allowing the least change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Pods or percent.
    pub kind: RateKind,
    /// Amount per period.
    pub value: u32,
    /// Period.
    pub period: Duration,
}

/// The unit of a rate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// Absolute pods.
    Pods,
    /// Percent of the replicas at the start of the period.
    Percent,
}

/// A pre-warm floor.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Name for reasons.
    pub name: String,
    /// The cron expression as written.
    pub pattern: String,
    /// Parsed.
    pub cron: croner::Cron,
    /// Its time zone.
    pub time_zone: chrono_tz::Tz,
    /// How long the floor holds after each start.
    pub duration: Duration,
    /// The floor.
    pub min_replicas: u32,
}

/// A policy error: which file, which field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, if the policy came from one.
    pub file: Option<PathBuf>,
    /// Field path such as `spec.schedules[0].timeZone`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl PolicyError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            file: None,
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.field.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "field `{}`: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Parses and validates one policy document.
pub fn from_str(text: &str) -> Result<Policy, PolicyError> {
    let mut field = String::new();
    let raw: raw::RawPolicyDocument = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let message = e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        PolicyError::new(
            if field == "." {
                String::new()
            } else {
                field.clone()
            },
            message,
        )
    })?;
    validate(raw)
}

/// Reads, parses and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::new("", format!("cannot read the file: {e}")).in_file(path))?;
    from_str(&text).map_err(|e| e.in_file(path))
}

/// Loads every `*.yaml`/`*.yml` policy in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, PolicyError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PolicyError::new("", format!("cannot read the directory: {e}")).in_file(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files.iter().map(|f| load(f)).collect()
}
