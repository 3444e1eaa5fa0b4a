//! What to write to a role's StatefulSet that already exists, whoever made it (this operator, an
//! older version of it, or KubeDirector). Only mutable fields are ever sent, and the pod template only
//! when the user changed the role: any template change rolls every pod, so a takeover, an operator
//! upgrade or a changed default never does.
//!
//! The StatefulSet records the digest of the role's inputs it was last built from
//! (`labels::ROLE_INPUTS`). A StatefulSet without one (KubeDirector's, or an older version's) is
//! adopted as it is: the digest is recorded and the template left alone.

use serde::Serialize;

use crate::api::cluster::RoleSpec;

use super::desired::spec_hash;

/// What the cache shows of an existing StatefulSet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub replicas: Option<i32>,
    /// The recorded digest of the role inputs, if any.
    pub role_inputs: Option<String>,
}

/// The write for an existing StatefulSet; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub replicas: Option<i32>,
    /// Replace the pod template with the desired one (a rollout the user asked for).
    pub template: bool,
    /// Record this digest of the role inputs.
    pub record_inputs: Option<String>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.replicas.is_none() && !self.template && self.record_inputs.is_none()
    }
}

/// Digest of what a user controls about a role's pods: the role's spec (its member count aside,
/// which only scales) and the image the app gives it.
pub fn role_inputs(spec: &RoleSpec, image: &str) -> String {
    #[derive(Serialize)]
    struct Inputs<'a> {
        spec: &'a RoleSpec,
        image: &'a str,
    }
    let mut spec = spec.clone();
    spec.members = None;
    spec_hash(&Inputs { spec: &spec, image })
}

/// The update that takes `current` to `replicas` members built from `inputs`.
pub fn update(current: &Existing, replicas: i32, inputs: &str) -> Update {
    let changed_inputs = current.role_inputs.as_deref() != Some(inputs);
    Update {
        replicas: (current.replicas != Some(replicas)).then_some(replicas),
        // Unrecorded inputs: adopted as built; recorded and different: the user changed the role.
        template: changed_inputs && current.role_inputs.is_some(),
        record_inputs: changed_inputs.then(|| inputs.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn role(members: i32, env: &str) -> RoleSpec {
        serde_json::from_value(serde_json::json!({
            "id": "worker", "members": members, "resources": ResourceRequirements::default(),
            "env": [{"name": "E", "value": env}]
        }))
        .expect("role")
    }

    #[test]
    fn an_adopted_statefulset_is_scaled_and_recorded_but_its_template_is_kept() {
        let inputs = role_inputs(&role(3, "a"), "img:1");
        let u = update(
            &Existing {
                replicas: Some(1),
                role_inputs: None,
            },
            3,
            &inputs,
        );
        assert_eq!(u.replicas, Some(3));
        assert!(!u.template, "takeover never rolls pods");
        assert_eq!(u.record_inputs.as_deref(), Some(inputs.as_str()));
    }

    #[test]
    fn the_member_count_is_no_input_but_the_role_spec_and_image_are() {
        assert_eq!(role_inputs(&role(1, "a"), "img:1"), role_inputs(&role(7, "a"), "img:1"));
        assert_ne!(role_inputs(&role(1, "a"), "img:1"), role_inputs(&role(1, "b"), "img:1"));
        assert_ne!(role_inputs(&role(1, "a"), "img:1"), role_inputs(&role(1, "a"), "img:2"));
    }

    #[test]
    fn a_changed_role_rolls_out_and_an_unchanged_one_writes_nothing() {
        let old = role_inputs(&role(2, "a"), "img");
        let new = role_inputs(&role(2, "b"), "img");
        let current = Existing {
            replicas: Some(2),
            role_inputs: Some(old.clone()),
        };
        assert!(update(&current, 2, &old).is_empty());
        let u = update(&current, 2, &new);
        assert!(u.template && u.replicas.is_none());
        assert_eq!(u.record_inputs, Some(new));
    }
}
