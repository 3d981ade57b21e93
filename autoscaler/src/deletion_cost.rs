//! Session-aware scale-down in Kubernetes: before the Deployment shrinks,
//! each of its pods gets `controller.kubernetes.io/pod-deletion-cost` set to
//! the live sticky sessions the balancer counts on it, so the ReplicaSet
//! removes the pods with the fewest sessions first (the annotation is
//! honoured from Kubernetes 1.22 on; beta since then). Pure: which pods
//! need which annotation.

use crate::scrape::Sessions;

/// The annotation the ReplicaSet controller reads.
pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod of the Deployment as the cost computation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Its name.
    pub name: String,
    /// Its IP, once it has one.
    pub ip: Option<String>,
    /// The annotation's current value, if any.
    pub cost: Option<String>,
}

/// The host of an endpoint address (`10.0.0.1:8080`, `[fd00::1]:8080`).
fn host(endpoint: &str) -> &str {
    match endpoint.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => endpoint,
    }
}

/// The annotations to write: each pod with an IP gets the sum of the
/// sessions on endpoints at that IP (0 when none), written only when it
/// differs from what the pod carries.
pub fn changes(pods: &[PodView], sessions: &Sessions) -> Vec<(String, String)> {
    pods.iter()
        .filter_map(|p| {
            let ip = p.ip.as_deref()?;
            let total: f64 = sessions
                .iter()
                .filter(|(endpoint, _)| host(endpoint) == ip)
                .map(|(_, n)| *n)
                .sum();
            // The API takes an int32.
            let cost = (total.round() as i64)
                .clamp(0, i64::from(i32::MAX))
                .to_string();
            (p.cost.as_deref() != Some(cost.as_str())).then(|| (p.name.clone(), cost))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, cost: Option<&str>) -> PodView {
        PodView {
            name: name.into(),
            ip: ip.map(str::to_string),
            cost: cost.map(str::to_string),
        }
    }

    #[test]
    fn costs_are_the_sessions_at_each_pod_ip_and_written_only_when_they_change() {
        let sessions: Sessions = [
            ("10.0.0.1:8080".to_string(), 3.0),
            ("10.0.0.2:8080".to_string(), 1.0),
            ("[fd00::1]:8080".to_string(), 2.0),
        ]
        .into();
        let pods = [
            pod("a", Some("10.0.0.1"), None),
            pod("b", Some("10.0.0.2"), Some("1")),
            pod("c", Some("10.0.0.3"), Some("4")),
            pod("d", None, None),
            pod("e", Some("fd00::1"), None),
        ];
        assert_eq!(
            changes(&pods, &sessions),
            [
                ("a".to_string(), "3".to_string()),
                ("c".to_string(), "0".to_string()),
                ("e".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn a_second_pass_writes_nothing() {
        let sessions: Sessions = [("10.0.0.1:80".to_string(), 2.0)].into();
        let pods = [
            pod("a", Some("10.0.0.1"), Some("2")),
            pod("b", Some("10.0.0.9"), Some("0")),
        ];
        assert!(changes(&pods, &sessions).is_empty());
    }
}
