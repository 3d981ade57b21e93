//! The demo's balancer config, its two autoscaling policies and the pods'
//! command line, written as files the real loaders read.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::profile::{Profile, daily_cron};

/// php-fpm workers per pod (`pm.max_children`), also the balancer's
/// `maxInFlightPerEndpoint`.
pub const WORKERS: u32 = 2;
/// The policy's target: requests in flight (and queued) per ready pod, 75%
/// of the workers.
pub const TARGET_IN_FLIGHT: f64 = 1.5;
/// Mean service time of a page (log-normal).
pub const SERVICE_TIME: &str = "300ms";
/// A pod's cold start: `/healthz` fails this long.
pub const COLD_START: &str = "2500ms";
/// The slower warm-up after the cold start (an empty opcache), twice as
/// slow at first.
pub const WARMUP: Duration = Duration::from_secs(5);
/// Fewest pods (two, for availability).
pub const MIN_REPLICAS: u32 = 2;
/// Most pods either policy may run.
pub const MAX_REPLICAS: u32 = 10;
/// Pods the schedule pre-warms for the lecture.
pub const LECTURE_FLOOR: u32 = 4;
/// The latency objective: a second with a p95 above it (or a failed
/// request) counts as a violation.
pub const SLO_P95_MS: f64 = 1000.0;
/// The balancer pool.
pub const POOL: &str = "moodle";
/// Seconds between a pod leaving the endpoints file and being stopped;
/// longer than the pool's sticky `drainTimeout` (3 s) plus a slow page.
pub const DRAIN_SECS: u64 = 6;

/// A string as a YAML double-quoted scalar (JSON's escaping is YAML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The balancer: one pool fed by the autoscaler's endpoints file, sticky on
/// the LMS's `MoodleSession`, a surge queue in front of pods that take
/// [`WORKERS`] requests each, and a slow start for new pods.
pub fn balancer_yaml(endpoints_file: &Path) -> String {
    format!(
        r#"# Written by peak-hour: the demo's balancer.
listeners:
  - name: public
    bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
shutdown:
  drainTimeout: 2s
routes:
  - pathPrefix: /
    pool: {POOL}
pools:
  {POOL}:
    balance: leastConnections
    endpoints:
      file: {{path: {file}, interval: 250ms}}
    timeouts: {{connect: 1s, response: 30s}}
    stickySessions:
      applicationCookie: MoodleSession   # follow the LMS's own session cookie
    drainTimeout: 3s                     # a removed pod keeps its sessions this long
    slowStart: {{window: 4s}}
    maxInFlightPerEndpoint: {WORKERS}    # php-fpm's pm.max_children
    queue: {{maxLength: 2000, timeout: 10s}}
"#,
        file = quoted(&endpoints_file.display().to_string()),
    )
}

/// Which autoscaling policy a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Usher: a 1 s loop, panic mode, the lecture's schedule, a short
    /// scale-down window.
    Usher,
    /// What a plain HPA would do: a 15 s sync, no panic mode, no schedule,
    /// the HPA's default rate policies and 300 s scale-down window.
    HpaLike,
}

impl Strategy {
    /// The label in the CSV, the chart and the tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Usher => "usher",
            Self::HpaLike => "hpa-like",
        }
    }

    /// One line on what the policy does.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Usher => {
                "1 s loop, panic mode at 2× (2 s window), lecture schedule, scale-down after 15 s"
            }
            Self::HpaLike => {
                "15 s sync, no panic mode, no schedule, +100%/+4 pods per 15 s, scale-down after 300 s"
            }
        }
    }
}

/// The policy for `strategy`, reading the balancer at `admin`; the Usher
/// policy pre-warms [`LECTURE_FLOOR`] pods from `prewarm_at` (a whole UTC
/// minute) for the profile's lecture.
pub fn policy_yaml(
    strategy: Strategy,
    admin: SocketAddr,
    profile: &Profile,
    prewarm_at: DateTime<Utc>,
) -> String {
    let head = format!(
        r#"# Written by peak-hour: the {label} policy ({what}).
apiVersion: usher.dev/v1alpha1
kind: ScalingPolicy
metadata:
  name: peak-hour-{label}
spec:
  scaleTargetRef: {{kind: Deployment, name: lms}}
  pool: {POOL}
  minReplicas: {MIN_REPLICAS}
  maxReplicas: {MAX_REPLICAS}
  target:
    inFlightPerPod: {TARGET_IN_FLIGHT}         # in flight + queued per ready pod
"#,
        label = strategy.label(),
        what = strategy.describe(),
    );
    let url = quoted(&format!("http://{admin}/metrics"));
    let body = match strategy {
        Strategy::Usher => format!(
            r#"  surge:
    stableWindow: 8s
    panicWindow: 2s
    panicThreshold: 2.0             # panic when the 2 s need is twice the ready pods
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 15  # keeps the lecture's pods through a short lull
      policies: [{{type: Percent, value: 50, periodSeconds: 2}}]
  schedules:
    - name: lecture
      cron: "{cron}"            # {at} UTC, computed at start
      timeZone: UTC
      duration: {floor}s
      minReplicas: {LECTURE_FLOOR}
  metricsSource:
    urls: [{url}]
    interval: 1s
    timeout: 800ms
"#,
            cron = daily_cron(prewarm_at),
            at = prewarm_at.format("%H:%M"),
            floor = profile.floor_duration(),
        ),
        Strategy::HpaLike => format!(
            r#"  surge:
    stableWindow: 15s
    panicWindow: 15s
    panicThreshold: 1000            # never panics
  tolerance: 0.1
  behavior:                         # the HPA's defaults
    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies:
        - {{type: Percent, value: 100, periodSeconds: 15}}
        - {{type: Pods, value: 4, periodSeconds: 15}}
    scaleDown:
      stabilizationWindowSeconds: 300
      policies: [{{type: Percent, value: 100, periodSeconds: 15}}]
  metricsSource:
    urls: [{url}]
    interval: 15s                   # the HPA's sync period
    staleAfter: 45s
    timeout: 2s
"#
        ),
    };
    head + &body
}

/// The pods' command: this very program's hidden `pod` subcommand, so the
/// demo needs no separately built `lms-sim`.
pub fn pod_command(exe: &Path, seed: u64) -> Vec<String> {
    [
        exe.display().to_string().as_str(),
        "pod",
        "--port",
        "{port}",
        "--name",
        "pod-{index}",
        "--workers",
        &WORKERS.to_string(),
        "--service-time",
        SERVICE_TIME,
        "--cold-start",
        COLD_START,
        "--warmup",
        &format!("{}s", WARMUP.as_secs()),
        "--warmup-factor",
        "2",
        // Each pod draws its own, reproducible service times.
        "--seed",
        &format!("{}0{{index}}", seed % 1_000_000_000),
        "--exit-with-parent",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile::new(Duration::from_secs(90), 20)
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T09:42:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn both_policies_load_and_differ_as_described() {
        let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let usher = usher_autoscaler::policy::from_str(&policy_yaml(
            Strategy::Usher,
            admin,
            &profile(),
            at(),
        ))
        .unwrap();
        assert_eq!(usher.schedules.len(), 1);
        assert_eq!(usher.schedules[0].pattern, "42 9 * * *");
        assert_eq!(usher.schedules[0].min_replicas, LECTURE_FLOOR);
        assert_eq!(usher.metrics.interval, Duration::from_secs(1));
        assert_eq!(usher.surge.panic_threshold, 2.0);
        let hpa = usher_autoscaler::policy::from_str(&policy_yaml(
            Strategy::HpaLike,
            admin,
            &profile(),
            at(),
        ))
        .unwrap();
        assert!(hpa.schedules.is_empty());
        assert_eq!(hpa.metrics.interval, Duration::from_secs(15));
        assert_eq!(
            hpa.behavior.scale_down.stabilization,
            Duration::from_secs(300)
        );
        assert_eq!(
            usher_autoscaler::local::urls_of(&hpa).unwrap(),
            vec!["http://127.0.0.1:9901/metrics".to_string()]
        );
    }

    #[test]
    fn the_balancer_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = dir.path().join("end \"points\".json");
        std::fs::write(&endpoints, "[]").unwrap();
        let path = dir.path().join("balancer.yaml");
        std::fs::write(&path, balancer_yaml(&endpoints)).unwrap();
        let config = usher_balancer::config::load(&path).unwrap();
        assert_eq!(config.pools.len(), 1);
    }

    #[test]
    fn pods_run_this_program_with_a_seed_per_copy() {
        let cmd = pod_command(Path::new("/x/peak-hour"), 42);
        assert_eq!(&cmd[..4], ["/x/peak-hour", "pod", "--port", "{port}"]);
        let seed = cmd.iter().position(|a| a == "--seed").unwrap();
        assert_eq!(cmd[seed + 1], "420{index}");
    }
}
