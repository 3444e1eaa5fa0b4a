//! The member state machine of one role, with KubeDirector's state names:
//! `create pending` → `creating` (pod running with a container id) → `configured` (setup done, or at
//! once without setup) | `config error`; `configured`/`config error` → `create pending` when the
//! container id changes; shrink: `delete pending` → `deleting` → gone once its pod, Service and PVCs are.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::cluster::{MemberState, MemberStateDetail, MemberStatus, RoleStatus};

use super::guest::{self, Finished};
use super::names;

/// What the cache says about one member's pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub running: bool,
    pub ready: bool,
    pub container_id: Option<String>,
    /// PodScheduled is False: no node could take it.
    pub unschedulable: bool,
    pub terminating: bool,
    /// The state of container `app` (`None`: the pod reports no status for it).
    pub app: Option<ContainerPhase>,
    /// The pod's Ready condition (`None`: not reported).
    pub ready_condition: Option<bool>,
    /// The first init container has not terminated yet.
    pub init_running: bool,
}

/// Which of its states container `app` is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerPhase {
    Running,
    Waiting,
    Terminated,
    Unknown,
}

/// KubeDirector's `lastKnownContainerState` of a member: `absent` without a pod (or without a
/// status for container `app`); a running container is `running` when the pod is Ready, and
/// `unresponsive` when it is not, or while the member has notifications queued or a configmeta.json
/// of an older spec (`stale`); a waiting one is `initializing` while the first init container runs,
/// else `waiting`; then `terminated`, and `unknown` for anything else.
pub fn container_state(pod: Option<&PodFacts>, pending_notifications: bool, stale: bool) -> &'static str {
    let Some(pod) = pod else {
        return "absent";
    };
    match pod.app {
        None => "absent",
        Some(ContainerPhase::Running) if stale || pending_notifications => "unresponsive",
        Some(ContainerPhase::Running) => match pod.ready_condition {
            Some(true) => "running",
            Some(false) => "unresponsive",
            None => "unknown",
        },
        Some(ContainerPhase::Waiting) if pod.init_running => "initializing",
        Some(ContainerPhase::Waiting) => "waiting",
        Some(ContainerPhase::Terminated) => "terminated",
        Some(ContainerPhase::Unknown) => "unknown",
    }
}

/// What the cache holds for a cluster: pods by name, and names of Services and PVCs.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub pods: BTreeMap<String, PodFacts>,
    pub services: BTreeSet<String>,
    pub pvcs: BTreeSet<String>,
    /// Finished `configure` runs by pod, as the guest runner reported them (for one container each).
    pub setups: BTreeMap<String, Finished>,
    /// By pod: the arguments of the notification at the head of its queue that has finished (run, or
    /// given up after its retries).
    pub notified: BTreeMap<String, Vec<String>>,
    /// By pod: the generation whose configmeta.json a refresh wrote into the member.
    pub refreshed: BTreeMap<String, i64>,
}

/// How a role's members are laid out, from the spec and the app.
#[derive(Clone, Debug)]
pub struct RoleShape<'a> {
    pub id: &'a str,
    pub statefulset: &'a str,
    /// 0 when the role was removed from the spec.
    pub desired: usize,
    pub opens_ports: bool,
    /// New members' Services are named as their pods (`names::bare_member_services`).
    pub bare_services: bool,
    pub has_setup: bool,
    /// The role runs a setup package: its members read configmeta.json, whose generation is kept in
    /// `lastConfigDataGeneration`.
    pub has_package: bool,
    /// The cluster's `metadata.generation` (what a current configmeta.json was made for).
    pub generation: i64,
    /// Bytes of each output tail kept in a config error's detail.
    pub max_log_size_dump: usize,
    /// volumeClaimTemplate names (`p`, `b0`, …): a member's PVCs are `<claim>-<pod>`.
    pub claims: &'a [String],
    pub block_device_paths: &'a [String],
}

/// The next status of a role, and what must be deleted for members on their way out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleStep {
    pub status: RoleStatus,
    pub delete_services: Vec<String>,
    pub delete_pvcs: Vec<String>,
}

fn new_member(shape: &RoleShape, pod: String, node_id: i64) -> MemberStatus {
    MemberStatus {
        service: if shape.opens_ports {
            names::member_service_named(shape.bare_services, &pod)
        } else {
            "n/a".to_string()
        },
        pvc: shape
            .claims
            .iter()
            .any(|c| c == names::STORAGE_CLAIM)
            .then(|| names::pvc(names::STORAGE_CLAIM, &pod)),
        pod,
        auth_token: None,
        state: MemberState::CreatePending,
        state_detail: MemberStateDetail::default(),
        node_id,
        block_device_paths: shape.block_device_paths.to_vec(),
    }
}

/// Advances one role. `last_node_id` is the cluster's counter; new members take the next ids.
pub fn step_role(
    prev: Option<&RoleStatus>,
    shape: &RoleShape,
    observed: &Observed,
    last_node_id: &mut i64,
) -> RoleStep {
    let mut members: Vec<MemberStatus> = prev.map(|r| r.members.clone()).unwrap_or_default();
    members.sort_by_key(|m| names::ordinal_of(shape.statefulset, &m.pod).unwrap_or(usize::MAX));

    // Membership: ordinals 0..desired are wanted, higher ones leave (highest first, as the
    // StatefulSet removes them).
    for ordinal in 0..shape.desired {
        let pod = names::pod(shape.statefulset, ordinal);
        match members.iter_mut().find(|m| m.pod == pod) {
            // Expanded again while it was leaving: start over as a new member.
            Some(m) if matches!(m.state, MemberState::DeletePending | MemberState::Deleting) => {
                *last_node_id += 1;
                *m = new_member(shape, pod, *last_node_id);
            }
            Some(_) => {}
            None => {
                *last_node_id += 1;
                members.push(new_member(shape, pod, *last_node_id));
            }
        }
    }
    for m in &mut members {
        let wanted = names::ordinal_of(shape.statefulset, &m.pod).is_some_and(|o| o < shape.desired);
        if !wanted && !matches!(m.state, MemberState::DeletePending | MemberState::Deleting) {
            m.state = MemberState::DeletePending;
        }
    }

    let mut step = RoleStep::default();
    members.retain_mut(|m| advance(m, shape, observed, &mut step));
    members.sort_by_key(|m| names::ordinal_of(shape.statefulset, &m.pod).unwrap_or(usize::MAX));
    step.status = RoleStatus {
        id: shape.id.to_string(),
        stateful_set: shape.statefulset.to_string(),
        members,
        encrypted_secret_keys: prev.and_then(|r| r.encrypted_secret_keys.clone()),
    };
    step
}

/// One member's transition. Returns false when the member is gone for good.
fn advance(m: &mut MemberStatus, shape: &RoleShape, observed: &Observed, step: &mut RoleStep) -> bool {
    let pod = observed.pods.get(&m.pod).filter(|p| !p.terminating);
    let container = pod.filter(|p| p.running).and_then(|p| p.container_id.clone());
    // Run the transitions to a fixed point, so one reconcile takes a member as far as the facts allow.
    let setup = observed.setups.get(&m.pod);
    loop {
        let before = m.state;
        transition(m, shape, container.as_ref(), setup);
        if m.state == before {
            break;
        }
    }
    let head_done = m
        .state_detail
        .pending_notify_cmds
        .first()
        .is_some_and(|n| observed.notified.get(&m.pod) == Some(&n.arguments));
    if head_done {
        m.state_detail.pending_notify_cmds.remove(0);
    }
    if let Some(g) = observed.refreshed.get(&m.pod)
        && shape.has_package
        && m.state == MemberState::Configured
    {
        m.state_detail.last_config_data_generation = Some(*g);
    }
    let stale = super::guest::needs_refresh(m, shape.has_package, observed, shape.generation);
    let known = container_state(
        observed.pods.get(&m.pod),
        !m.state_detail.pending_notify_cmds.is_empty(),
        stale,
    );
    m.state_detail.last_known_container_state = Some(known.to_string());
    if m.state != MemberState::Deleting {
        return true;
    }
    // Leaving: once the pod is gone, remove its Service and PVCs; drop the member when all are gone.
    if observed.pods.contains_key(&m.pod) {
        return true;
    }
    // The recorded name: KubeDirector's CrNameRole members have bare ones.
    let service = m.service.clone();
    let pvcs: Vec<String> = shape
        .claims
        .iter()
        .map(|c| names::pvc(c, &m.pod))
        .filter(|p| observed.pvcs.contains(p))
        .collect();
    let service_left = service != "n/a" && observed.services.contains(&service);
    if service_left {
        step.delete_services.push(service);
    }
    let done = !service_left && pvcs.is_empty();
    step.delete_pvcs.extend(pvcs);
    !done
}

fn transition(m: &mut MemberStatus, shape: &RoleShape, container: Option<&String>, setup: Option<&Finished>) {
    match m.state {
        MemberState::CreatePending => {
            if let Some(id) = container {
                m.state = MemberState::Creating;
                m.state_detail.configuring_container = Some(id.clone());
            }
        }
        MemberState::Creating => match container {
            Some(id) => {
                m.state_detail.configuring_container = Some(id.clone());
                advance_creating(m, shape, setup);
            }
            None => m.state = MemberState::CreatePending,
        },
        MemberState::Configured | MemberState::ConfigError => {
            // A new container (restart, rescheduled pod) must be set up again.
            if container.is_some_and(|id| m.state_detail.last_configured_container.as_ref() != Some(id)) {
                m.state = MemberState::CreatePending;
                m.state_detail.configuring_container = None;
                // Without a volume the new container is set up from scratch with the whole
                // membership: queued news are moot and its configmeta is gone (as in KubeDirector).
                // With one it keeps its configure, so it still needs what was queued.
                if m.pvc.is_none() {
                    m.state_detail.pending_notify_cmds.clear();
                    m.state_detail.last_config_data_generation = None;
                }
            }
        }
        MemberState::DeletePending => m.state = MemberState::Deleting,
        MemberState::Deleting => {}
    }
}

/// `creating` → `configured` at once when the role runs no setup package; with one, once the guest
/// runner reports `configure` finished in this very container: exit 0 → `configured`, else
/// `config error` with the output tails. Nothing here waits for the guest.
fn advance_creating(m: &mut MemberStatus, shape: &RoleShape, setup: Option<&Finished>) {
    if !shape.has_setup {
        m.state = MemberState::Configured;
        m.state_detail.last_configured_container = m.state_detail.configuring_container.take();
        m.state_detail.config_error_detail = None;
        return;
    }
    let Some(done) = setup.filter(|f| m.state_detail.configuring_container.as_ref() == Some(&f.container)) else {
        return;
    };
    if shape.has_package {
        // 0: written by a setup this replica did not see start; the member is refreshed.
        m.state_detail.last_config_data_generation = Some(done.configmeta_generation.unwrap_or(0));
    }
    if done.exit_code == 0 {
        m.state = MemberState::Configured;
        m.state_detail.config_error_detail = None;
    } else {
        m.state = MemberState::ConfigError;
        m.state_detail.config_error_detail = Some(guest::config_error_detail(done, shape.max_log_size_dump));
    }
    m.state_detail.last_configured_container = m.state_detail.configuring_container.take();
}
