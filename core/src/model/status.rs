//! Cluster state, member rollup and standard conditions, computed from member states.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use crate::api::cluster::StateRollup;
use crate::api::cluster::{ClusterState, MemberState, MemberStatus, RoleStatus};

use super::members::Observed;

fn all_members(roles: &[RoleStatus]) -> impl Iterator<Item = &MemberStatus> {
    roles.iter().flat_map(|r| r.members.iter())
}

/// A member that was never configured yet (as opposed to one restarting).
fn is_new(m: &MemberStatus) -> bool {
    matches!(m.state, MemberState::CreatePending | MemberState::Creating)
        && m.state_detail.last_configured_container.is_none()
}

fn is_leaving(m: &MemberStatus) -> bool {
    matches!(m.state, MemberState::DeletePending | MemberState::Deleting)
}

/// `creating` until every member has been set up once, then `configured`; `updating` while members
/// join or leave.
pub fn cluster_state(prev: Option<ClusterState>, roles: &[RoleStatus]) -> ClusterState {
    let settled = all_members(roles).all(|m| matches!(m.state, MemberState::Configured | MemberState::ConfigError));
    let changing = all_members(roles).any(|m| is_new(m) || is_leaving(m));
    match prev {
        None | Some(ClusterState::Creating) => {
            if settled {
                ClusterState::Configured
            } else {
                ClusterState::Creating
            }
        }
        Some(ClusterState::Deleting) => ClusterState::Deleting,
        // `spec modified` (KubeDirector's webhook marks a spec change so) is processed as an update.
        Some(ClusterState::Configured | ClusterState::Updating | ClusterState::SpecModified) => {
            if changing {
                ClusterState::Updating
            } else {
                ClusterState::Configured
            }
        }
    }
}

/// `memberStateRollup` as KubeDirector computes it, from each member's state and its
/// `lastKnownContainerState`: down = a terminated, unresponsive or absent container (not counted
/// for members still waiting to be created, or being deleted); waiting = a member waiting for a
/// container (or whose container waits), initializing = one whose init container runs. Ours adds
/// `membersNotScheduled` (PodScheduled False).
pub fn rollup(roles: &[RoleStatus], observed: &Observed) -> StateRollup {
    let mut r = StateRollup::default();
    for m in all_members(roles) {
        let known = m.state_detail.last_known_container_state.as_deref().unwrap_or("absent");
        let down = matches!(known, "terminated" | "unresponsive" | "absent");
        match m.state {
            MemberState::CreatePending => {
                r.membership_changing |= is_new(m);
                r.members_restarting |= !is_new(m);
                r.members_waiting |= known == "absent";
            }
            MemberState::Creating => {
                r.members_down |= down;
                r.membership_changing |= is_new(m);
                r.members_restarting |= !is_new(m);
            }
            MemberState::Configured => r.members_down |= down,
            MemberState::DeletePending => {
                r.members_down |= down;
                r.membership_changing = true;
            }
            MemberState::Deleting => r.membership_changing = true,
            MemberState::ConfigError => {
                r.members_down |= down;
                r.config_errors = true;
            }
        }
        r.members_initializing |= known == "initializing";
        r.members_waiting |= known == "waiting";
        r.members_not_scheduled |= observed.pods.get(&m.pod).is_some_and(|p| p.unschedulable);
    }
    r
}

/// Whether a configured member's pod is not Ready (the Ready and Degraded conditions' "members
/// down": stricter than the rollup's, which also counts members busy with a notification).
pub fn configured_members_down(roles: &[RoleStatus], observed: &Observed) -> bool {
    all_members(roles)
        .any(|m| m.state == MemberState::Configured && !observed.pods.get(&m.pod).is_some_and(|p| p.ready))
}

/// Standard conditions. `invalid` is the message of a spec error, which overrides everything else.
pub fn conditions(
    prev: &[Condition],
    state: Option<ClusterState>,
    rollup: &StateRollup,
    invalid: Option<&str>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (ready, ready_reason, ready_msg) = match (invalid, state) {
        (Some(msg), _) => (false, "InvalidSpec", msg.to_string()),
        (None, Some(ClusterState::Configured)) if rollup.members_down => (
            false,
            "MembersDown",
            "some configured members are not ready".to_string(),
        ),
        (None, Some(ClusterState::Configured)) if rollup.config_errors => {
            (false, "ConfigError", "some members failed their setup".to_string())
        }
        (None, Some(ClusterState::Configured)) => (true, "Configured", "every member is configured".to_string()),
        (None, Some(ClusterState::Updating)) => (false, "Updating", "members are joining or leaving".to_string()),
        (None, Some(ClusterState::SpecModified)) => {
            (false, "SpecModified", "a spec change is being processed".to_string())
        }
        (None, Some(ClusterState::Deleting)) => (false, "Deleting", "the cluster is being deleted".to_string()),
        (None, Some(ClusterState::Creating) | None) => (false, "Creating", "members are being created".to_string()),
    };
    let progressing = invalid.is_none()
        && matches!(
            state,
            Some(ClusterState::Creating | ClusterState::Updating | ClusterState::SpecModified) | None
        );
    let (degraded, degraded_reason, degraded_msg) = if let Some(msg) = invalid {
        (true, "InvalidSpec", msg.to_string())
    } else if rollup.config_errors {
        (true, "ConfigError", "some members failed their setup".to_string())
    } else if rollup.members_down && state == Some(ClusterState::Configured) {
        (true, "MembersDown", "some configured members are not ready".to_string())
    } else {
        (false, "AsExpected", "no problem found".to_string())
    };
    let progressing_reason = if progressing { ready_reason } else { "Settled" };
    vec![
        condition(prev, "Ready", ready, ready_reason, &ready_msg, generation, now),
        condition(
            prev,
            "Progressing",
            progressing,
            progressing_reason,
            if progressing { &ready_msg } else { "nothing in progress" },
            generation,
            now,
        ),
        condition(
            prev,
            "Degraded",
            degraded,
            degraded_reason,
            &degraded_msg,
            generation,
            now,
        ),
    ]
}

/// A condition whose lastTransitionTime moves only when its status flips.
fn condition(
    prev: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The generation at which `c` is configured, as its status tells: state `configured`, every member
/// `configured` and, where the spec gives every role's members, as many members as it asks for.
/// `None` while it is not. (Readers outside the operator — tests, the loadtest — judge by this.)
pub fn configured_generation(c: &crate::api::KubeDirectorCluster) -> Option<i64> {
    let s = c.status.as_ref()?;
    let members: Vec<&MemberStatus> = all_members(&s.roles).collect();
    let wanted: Option<usize> = c
        .spec
        .roles
        .iter()
        .map(|r| r.members.and_then(|m| usize::try_from(m).ok()))
        .sum();
    let ok = s.state == Some(ClusterState::Configured)
        && members.iter().all(|m| m.state == MemberState::Configured)
        && wanted.is_none_or(|w| w == members.len());
    if ok { s.observed_generation } else { None }
}

/// Configured at the cluster's current generation.
pub fn is_configured(c: &crate::api::KubeDirectorCluster) -> bool {
    configured_generation(c).is_some_and(|g| Some(g) == c.metadata.generation)
}
