//! The whole decision for one KubeDirectorCluster: from the spec, its app, the settings, the previous
//! status and what the cache observed, to the desired children, what to delete, and the next status.
//! Pure: the reconcile applies the result.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};

use crate::api::cluster::{ClusterState, KubeDirectorClusterSpec, KubeDirectorClusterStatus, MemberState};

use super::catalog::{self, ResolvedApp};
use super::configmeta;
use super::connections;
use super::desired::{self, ClusterFacts, RoleInput};
use super::guest;
use super::members::{self, Observed, RoleShape};
use super::names;
use super::secretkeys;
use super::settings::Settings;
use super::status;
use super::validate::{self, FieldError, StorageClasses};

pub struct ClusterInput<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a KubeDirectorClusterSpec,
    pub prev: Option<&'a KubeDirectorClusterStatus>,
    pub app: &'a ResolvedApp,
    pub settings: &'a Settings,
    pub classes: &'a StorageClasses,
    pub observed: &'a Observed,
    /// `connections` of configmeta: the connected objects' content (`connections::empty()` if none).
    pub connections: &'a serde_json::Value,
    pub now: Time,
    /// Fresh randomness from the caller, from which new members' auth tokens are derived (tokens
    /// are recorded in status at once, so each is made once).
    pub token_salt: &'a str,
}

#[derive(Clone, Debug, Default)]
pub struct ClusterPlan {
    pub headless: Option<Service>,
    pub statefulsets: Vec<StatefulSet>,
    pub member_services: Vec<Service>,
    pub delete_statefulsets: Vec<String>,
    pub delete_services: Vec<String>,
    pub delete_pvcs: Vec<String>,
    pub status: KubeDirectorClusterStatus,
    /// Commands to run inside members (setup, notifications), with their configmeta.
    pub guest_work: Vec<guest::Work>,
    /// Spec errors: nothing is created or changed, the status says why.
    pub errors: Vec<FieldError>,
    /// The owner reference every child carries (also given to PVCs that nothing owns).
    pub owner: Option<OwnerReference>,
}

/// How long a brand-new cluster's first status may still wait, or `None` to write it now.
///
/// A cluster whose members come up together then gets one status write (at `configured`) instead of
/// two. Holding it loses nothing: the plan from no status is the same every time (names and the
/// generation UID come from the cluster's UID, the node IDs from zero), which is also what a crash
/// between the children and the first status relies on. So it is held only while nothing in it
/// must be recorded: no guest command to start (they start only from a recorded status), no auth
/// token (a fresh one is drawn per plan and goes into the member Services), and the cluster still
/// `creating`; and never longer than `grace` after the cluster was created, so a cluster whose pods
/// stay Pending still shows its state.
pub fn hold_first_status(
    prev: Option<&KubeDirectorClusterStatus>,
    plan: &ClusterPlan,
    age: Duration,
    grace: Duration,
) -> Option<Duration> {
    let members = || plan.status.roles.iter().flat_map(|r| &r.members);
    let holdable = prev.is_none()
        && plan.status.state == Some(ClusterState::Creating)
        && plan.guest_work.is_empty()
        && members().all(|m| m.auth_token.is_none());
    (holdable && age < grace).then(|| grace - age)
}

/// The status to write when the cluster cannot be planned (missing app, invalid spec, unreadable
/// object): everything recorded so far is kept, the conditions say what is wrong.
pub fn blocked_status(
    prev: Option<&KubeDirectorClusterStatus>,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> KubeDirectorClusterStatus {
    let mut status = prev.cloned().unwrap_or_default();
    let state = status.state.or(Some(ClusterState::Creating));
    status.state = state;
    status.conditions = status::conditions(
        &status.conditions,
        state,
        &status.member_state_rollup,
        Some(message),
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

/// The roles' secret keys, decrypted for configmeta. One that does not open under the master key
/// is left out, as KubeDirector leaves it out (admission refuses such values where it can).
pub fn secret_keys(
    spec: &KubeDirectorClusterSpec,
    settings: &Settings,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    spec.roles
        .iter()
        .filter(|r| !r.secret_keys.is_empty())
        .map(|r| {
            let opened = r
                .secret_keys
                .iter()
                .filter_map(|k| {
                    // A plaintext value is stored only where no mutating webhook sealed it.
                    if let Some(plain) = &k.value {
                        return Some((k.name.clone(), plain.clone()));
                    }
                    let master = settings.master_encryption_key.as_deref()?;
                    let value = secretkeys::decrypt(master, k.encrypted_value.as_deref()?).ok()?;
                    Some((k.name.clone(), value))
                })
                .collect();
            (r.id.clone(), opened)
        })
        .collect()
}

/// The conditions of a blocked cluster whose status cannot be read: the only part written then.
pub fn blocked_conditions(prev: &[Condition], message: &str, generation: Option<i64>, now: &Time) -> Vec<Condition> {
    status::conditions(prev, None, &Default::default(), Some(message), generation, now)
}

pub fn plan_cluster(input: &ClusterInput) -> ClusterPlan {
    let settings = input.settings;
    let defaulted = catalog::apply_cluster_defaults(input.spec, input.app, settings.default_naming_scheme);
    let spec = &defaulted;
    let mut errors = validate::validate_cluster(
        spec,
        input.app,
        settings.default_storage_class.as_deref(),
        input.classes,
    );
    errors.extend(secretkeys::stored_errors(
        spec,
        settings.master_encryption_key.as_deref(),
        false,
    ));
    if !errors.is_empty() {
        let message = validate::describe(&errors);
        return ClusterPlan {
            status: blocked_status(input.prev, &message, input.generation, &input.now),
            errors,
            ..Default::default()
        };
    }

    let scheme = spec.naming_scheme.unwrap_or(settings.default_naming_scheme);
    let recorded_headless = input.prev.map(|s| s.cluster_service.as_str());
    let facts = ClusterFacts {
        name: input.name,
        namespace: input.namespace,
        uid: input.uid,
        app: input.app,
        settings,
        headless_name: names::headless_service(scheme, input.name, input.uid, recorded_headless),
        service_type: spec.service_type.unwrap_or(settings.default_service_type),
    };
    let prev_roles = input.prev.map(|s| s.roles.as_slice()).unwrap_or_default();
    let mut last_node_id = input.prev.map(|s| s.last_node_id).unwrap_or(0);
    let mut plan = ClusterPlan {
        headless: Some(desired::headless_service(&facts)),
        owner: Some(facts.owner()),
        ..Default::default()
    };
    let mut roles = Vec::new();

    for role_spec in &spec.roles {
        // Validation guarantees the role exists in the app.
        let Some(role) = input.app.role(&role_spec.id) else {
            continue;
        };
        let prev = prev_roles.iter().find(|r| r.id == role_spec.id);
        let sts_name = names::statefulset(
            scheme,
            input.name,
            input.uid,
            &role.id,
            prev.map(|r| r.stateful_set.as_str()),
        );
        let desired_members = role_spec
            .members
            .map(|m| m.max(0) as usize)
            .unwrap_or(role.cardinality.default_members() as usize);
        let mut claims = Vec::new();
        if role_spec.storage.is_some() {
            claims.push(names::STORAGE_CLAIM.to_string());
        }
        let block_paths = desired::block_device_paths(role_spec);
        claims.extend((0..block_paths.len()).map(names::block_claim));
        let recorded = prev
            .iter()
            .flat_map(|r| r.members.iter())
            .map(|m| (m.pod.as_str(), m.service.as_str()));
        let shape = RoleShape {
            id: &role.id,
            statefulset: &sts_name,
            desired: desired_members,
            opens_ports: role.opens_ports(),
            bare_services: names::bare_member_services(scheme, recorded),
            has_setup: guest::has_setup(role, Some(role_spec)),
            has_package: role.setup_package.is_some(),
            generation: input.generation.unwrap_or(0),
            max_log_size_dump: usize::try_from(role.max_log_size_dump).unwrap_or(0),
            claims: &claims,
            block_device_paths: &block_paths,
        };
        let mut step = members::step_role(prev, &shape, input.observed, &mut last_node_id);
        // `status.roles[].encryptedSecretKeys`: the role's sealed keys by name, as the spec holds them
        // (kept as recorded for a role that has none in its spec).
        let sealed: std::collections::BTreeMap<String, String> = role_spec
            .secret_keys
            .iter()
            .filter_map(|k| Some((k.name.clone(), k.encrypted_value.clone()?)))
            .collect();
        if !sealed.is_empty() {
            step.status.encrypted_secret_keys = Some(sealed);
        }
        if role
            .services
            .iter()
            .any(|s| s.endpoint.as_set().and_then(|e| e.has_auth_token) == Some(true))
        {
            for m in step.status.members.iter_mut().filter(|m| m.auth_token.is_none()) {
                m.auth_token = Some(secretkeys::auth_token(input.token_salt, input.uid, &m.pod));
            }
        }
        let class_of = |requested: Option<&str>| {
            validate::effective_storage_class(requested, settings.default_storage_class.as_deref(), input.classes)
        };
        plan.statefulsets.push(desired::statefulset(
            &facts,
            &RoleInput {
                spec: role_spec,
                role,
                statefulset_name: &sts_name,
                replicas: desired_members as i32,
                storage_class: role_spec
                    .storage
                    .as_ref()
                    .and_then(|s| class_of(s.storage_class_name.as_deref())),
                block_storage_class: role_spec
                    .block_storage
                    .as_ref()
                    .and_then(|b| class_of(b.storage_class_name.as_deref())),
            },
        ));
        for m in &step.status.members {
            if !matches!(m.state, MemberState::DeletePending | MemberState::Deleting) {
                plan.member_services
                    .extend(desired::member_service(&facts, role_spec, role, m));
            }
        }
        plan.delete_services.extend(step.delete_services);
        plan.delete_pvcs.extend(step.delete_pvcs);
        roles.push(step.status);
    }

    // Member Services and PVCs nobody accounts for: a crash between applying a new member's children
    // and recording the member in status leaves them behind, and no later shrink knows about them.
    // Children of a role's StatefulSet whose member is not in status and whose pod is gone go; until
    // they are gone the cluster is not reported `configured` (as with members known to be leaving).
    let orphan_of = |pod: &str| {
        !input.observed.pods.contains_key(pod)
            && roles.iter().any(|r: &crate::api::cluster::RoleStatus| {
                names::ordinal_of(&r.stateful_set, pod).is_some() && !r.members.iter().any(|m| m.pod == pod)
            })
    };
    let mut orphans = false;
    for svc in &input.observed.services {
        // `s-<pod>`, or `<pod>` itself (KubeDirector's CrNameRole members).
        if svc.strip_prefix("s-").is_some_and(orphan_of) || orphan_of(svc) {
            orphans = true;
            if !plan.delete_services.contains(svc) {
                plan.delete_services.push(svc.clone());
            }
        }
    }
    for pvc in &input.observed.pvcs {
        if names::pod_of_pvc(pvc).is_some_and(orphan_of) {
            orphans = true;
            if !plan.delete_pvcs.contains(pvc) {
                plan.delete_pvcs.push(pvc.clone());
            }
        }
    }

    // Roles removed from the spec: their StatefulSet goes now; members leave as on a shrink.
    for prev in prev_roles.iter().filter(|r| !spec.roles.iter().any(|s| s.id == r.id)) {
        let claims: Vec<String> = prev
            .members
            .iter()
            .flat_map(|m| {
                let mut c: Vec<String> = m.pvc.iter().map(|_| names::STORAGE_CLAIM.to_string()).collect();
                c.extend((0..m.block_device_paths.len()).map(names::block_claim));
                c
            })
            .collect();
        let shape = RoleShape {
            id: &prev.id,
            statefulset: &prev.stateful_set,
            desired: 0,
            opens_ports: false,
            bare_services: false,
            has_setup: false,
            has_package: false,
            generation: input.generation.unwrap_or(0),
            max_log_size_dump: 0,
            claims: &claims,
            block_device_paths: &[],
        };
        let step = members::step_role(Some(prev), &shape, input.observed, &mut last_node_id);
        plan.delete_statefulsets.push(prev.stateful_set.clone());
        plan.delete_services.extend(step.delete_services);
        plan.delete_pvcs.extend(step.delete_pvcs);
        if !step.status.members.is_empty() {
            roles.push(step.status);
        }
    }

    let prev_state = input.prev.and_then(|s| s.state);
    let domain = configmeta::domain(&facts.headless_name, input.namespace, &settings.svc_domain_base);
    guest::queue_notifications(prev_state, prev_roles, &mut roles, input.app, &domain);
    // A change of the connected content tells the members that have seen the old one (`--reconnect`);
    // the first hash is only recorded (members configure with the connections in their configmeta).
    let connection_hash = connections::content_hash(input.connections);
    let prev_hash = input.prev.map(|s| s.last_connection_hash.as_str()).unwrap_or_default();
    // A hash KubeDirector recorded (an md5) cannot be compared with ours: on takeover it is only
    // replaced, or every connected member would hear a --reconnect for nothing.
    if connections::is_our_hash(prev_hash) && prev_hash != connection_hash {
        connections::queue_reconnect(&mut roles, input.app);
    }
    let mut state = status::cluster_state(prev_state, &roles);
    // Members still to hear of a change (a reconnect, or a configmeta.json from an older spec):
    // the cluster is not yet configured at this generation.
    let generation = input.generation.unwrap_or(0);
    let refresh_pending = guest::refresh_pending(&roles, input.app, input.observed, generation);
    if state == ClusterState::Configured && (connections::reconnect_pending(&roles) || refresh_pending) {
        state = ClusterState::Updating;
    }
    if orphans && state == ClusterState::Configured {
        state = if matches!(prev_state, None | Some(ClusterState::Creating)) {
            ClusterState::Creating
        } else {
            ClusterState::Updating
        };
    }
    let rollup = status::rollup(&roles, input.observed);
    let prev_conditions = input.prev.map(|s| s.conditions.as_slice()).unwrap_or_default();
    plan.guest_work = guest::work(
        &configmeta::Cluster {
            name: input.name,
            namespace: input.namespace,
            uid: input.uid,
            headless_service: &facts.headless_name,
            spec,
            app: input.app,
            roles: &roles,
            connections: input.connections,
            domain_base: &settings.svc_domain_base,
            secret_keys: &secret_keys(spec, settings),
        },
        input.observed,
        generation,
    );
    plan.status = KubeDirectorClusterStatus {
        state: Some(state),
        conditions: status::conditions(
            prev_conditions,
            Some(state),
            &status::StateRollup {
                members_down: status::configured_members_down(&roles, input.observed),
                ..rollup.clone()
            },
            None,
            input.generation,
            &input.now,
        ),
        member_state_rollup: rollup,
        generation_uid: input
            .prev
            .map(|s| s.generation_uid.clone())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| input.uid.to_string()),
        // KubeDirector's own counter (bumped by its webhook on spec changes): kept as recorded.
        spec_generation_to_process: input.prev.and_then(|s| s.spec_generation_to_process),
        cluster_service: facts.headless_name.clone(),
        last_node_id,
        roles,
        last_connection_hash: connection_hash,
        // Ordinary reconciles follow a finished restore: its progress is over (as in KubeDirector).
        restore_progress: None,
        observed_generation: input.generation,
    };
    plan
}
