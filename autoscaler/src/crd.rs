//! The `ScalingPolicy` custom resource: the same spec as policy files
//! ([`RawSpec`]), plus the status the controller writes.

use kube::{CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::policy::raw::ScalingPolicy;
use crate::policy::raw::{RawMetadata, RawPolicyDocument};
use crate::policy::{Policy, PolicyError, validate};

/// `status` of a ScalingPolicy, written by the leader.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas the Deployment asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<u32>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<u32>,
    /// Replicas the policy wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// `stable` or `panic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Replicas the predictive forecast asks for (recorded in forecastOnly
    /// mode too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_replicas: Option<u32>,
    /// When the controller last changed the replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// HPA-style conditions: `AbleToScale`, `ScalingActive`, `ScalingLimited`,
    /// and `ConflictingAutoscaler` (an HPA or KEDA ScaledObject also targets
    /// the Deployment).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One status condition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `AbleToScale`, `ScalingActive`, `ScalingLimited` or `ConflictingAutoscaler`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD as YAML, as `usher-autoscaler crd` prints it.
pub fn crd_yaml() -> String {
    let crd = ScalingPolicy::crd();
    serde_saphyr::to_string(&crd).expect("a CRD always serializes")
}

/// Validates a ScalingPolicy object from the API like a policy file, naming
/// the object instead of a file in errors.
pub fn to_policy(obj: &ScalingPolicy) -> Result<Policy, PolicyError> {
    let doc = RawPolicyDocument {
        api_version: "usher.dev/v1alpha1".to_string(),
        kind: "ScalingPolicy".to_string(),
        metadata: RawMetadata {
            name: obj.name_any(),
            namespace: obj.namespace(),
        },
        spec: obj.spec.clone(),
    };
    validate(doc).map_err(|mut e| {
        e.problem = format!(
            "ScalingPolicy {}/{}: {}",
            obj.namespace().unwrap_or_default(),
            obj.name_any(),
            e.problem
        );
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_namespaced_with_a_status_subresource_and_the_policy_schema() {
        let crd = ScalingPolicy::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("scalingpolicies.usher.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(&version.schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        for field in [
            "scaleTargetRef",
            "pool",
            "minReplicas",
            "maxReplicas",
            "target",
            "surge",
            "behavior",
            "schedules",
            "metricsSource",
        ] {
            assert!(
                spec["properties"].get(field).is_some(),
                "spec.{field} missing from the CRD schema"
            );
        }
        let yaml = crd_yaml();
        assert!(yaml.contains("kind: CustomResourceDefinition"), "{yaml}");
    }

    #[test]
    fn an_object_from_the_api_validates_like_a_file() {
        let text = include_str!("../../examples/policies/exam-day.yaml");
        let file = crate::policy::from_str(text).unwrap();
        let doc: RawPolicyDocument = serde_saphyr::from_str(text).unwrap();
        let mut obj = ScalingPolicy::new(&doc.metadata.name, doc.spec);
        obj.metadata.namespace = doc.metadata.namespace;
        assert_eq!(to_policy(&obj).unwrap(), file);

        obj.spec.min_replicas = 100;
        let err = to_policy(&obj).unwrap_err();
        assert_eq!(err.field, "spec.minReplicas");
        assert!(
            err.to_string()
                .contains("ScalingPolicy lms/moodle-exam-day"),
            "{err}"
        );
    }
}
