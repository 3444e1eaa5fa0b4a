//! Decisions about work inside members (the in-guest contract), as pure functions: what a finished
//! guest command means for a member, which lifecycle notifications a membership change queues, how
//! often a running setup is polled. The commands themselves run in `reconcile::guest`, never in a
//! worker.

use std::time::Duration;

use crate::api::app::LifecycleEvent;
use crate::api::cluster::{
    ClusterState, FileInjection, MemberState, MemberStatus, NotificationDesc, RoleSpec, RoleStatus,
};

use super::catalog::{ResolvedApp, ResolvedRole};
use super::configmeta;

/// The result of one finished guest command, as its script reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The container the command ran in: a result for an older container means nothing.
    pub container: String,
    pub exit_code: i32,
    /// The tails of the command's stdout and stderr (at most maxLogSizeDump bytes each).
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// The generation whose configmeta.json this container's setup wrote (`None`: not known to
    /// this replica, e.g. the setup finished before it took over).
    pub configmeta_generation: Option<i64>,
}

/// What the setup script reported about `configure` in one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupReport {
    /// Started now, or already running from an earlier call.
    Running,
    Done(Finished),
}

/// Parses the guest script's report: a first line `kd-result running|started|done <code> [fresh]`,
/// then for `done` the stdout tail. `stderr` is the stderr tail. Anything else is an error naming
/// what came. The second value says whether this very call wrote configmeta.json (`started`, or
/// `fresh` after a code).
pub fn parse_report(container: &str, stdout: &str, stderr: &str) -> Result<(SetupReport, bool), String> {
    let (first, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let mut words = first.split_whitespace();
    if words.next() != Some("kd-result") {
        return Err(format!(
            "the guest command did not report (first line {:?}, stderr {:?})",
            cut(first, 120),
            cut(stderr, 200)
        ));
    }
    match (words.next(), words.next(), words.next()) {
        (Some("running"), None, None) => Ok((SetupReport::Running, false)),
        (Some("started"), None, None) => Ok((SetupReport::Running, true)),
        (Some("done"), Some(code), fresh @ (None | Some("fresh"))) => {
            let exit_code = code
                .parse::<i32>()
                .map_err(|_| format!("the guest command reported exit code {code:?}"))?;
            let done = Finished {
                container: container.to_string(),
                exit_code,
                stdout_tail: rest.to_string(),
                stderr_tail: stderr.to_string(),
                configmeta_generation: None,
            };
            Ok((SetupReport::Done(done), fresh.is_some()))
        }
        _ => Err(format!("the guest command reported {:?}", cut(first, 120))),
    }
}

fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `stateDetail.configErrorDetail` of a failed setup.
pub fn config_error_detail(f: &Finished, max_log: usize) -> String {
    format!(
        "configure exited with {} in container {}; stdout tail: {:?}; stderr tail: {:?}",
        f.exit_code,
        f.container,
        tail(&f.stdout_tail, max_log),
        tail(&f.stderr_tail, max_log)
    )
}

/// How long to wait before polling a running setup again: 1 s, doubling per poll up to 30 s, so a
/// script that runs for hours costs a few execs a minute.
pub fn poll_delay(polls: u32) -> Duration {
    Duration::from_secs(1u64 << polls.min(5)).min(Duration::from_secs(30))
}

/// Delay before retrying a failed notification: 2 s, doubling up to 60 s. A notification is retried
/// until it is delivered or its member is gone (as KubeDirector does), never dropped.
pub fn notify_retry_delay(failures: u32) -> Duration {
    Duration::from_secs(2u64 << failures.min(5)).min(Duration::from_secs(60))
}

/// Whether members of `role` run `startscript` for `event`: they have a setup package and their
/// eventList (none = every event) names it.
fn wants(app: &ResolvedApp, role: &str, event: LifecycleEvent) -> bool {
    app.role(role)
        .is_some_and(|r| r.setup_package.is_some() && r.event_list.as_ref().is_none_or(|list| list.contains(&event)))
}

fn leaving(m: &MemberStatus) -> bool {
    matches!(m.state, MemberState::DeletePending | MemberState::Deleting)
}

/// The argv of a queued notification: each argument split at white space, as KubeDirector's shell
/// splits them (it queues `"--nodegroup 1"` as one argument).
pub fn notify_argv(arguments: &[String]) -> Vec<String> {
    arguments
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(str::to_string)
        .collect()
}

/// `startscript` arguments of a membership notification.
pub fn notification(event: &str, role: &str, fqdns: &[String]) -> NotificationDesc {
    NotificationDesc {
        arguments: vec![
            format!("--{event}"),
            "--nodegroup".to_string(),
            configmeta::NODEGROUP.to_string(),
            "--role".to_string(),
            role.to_string(),
            "--fqdns".to_string(),
            fqdns.join(","),
        ],
    }
}

/// Queues `addnodes`/`delnodes` on the members that stay, after a step from `prev` to `next` roles:
/// members configured for the first time in this step are announced (only once the cluster had been
/// configured: at creation every member reads the full membership from its configmeta), members that
/// started leaving in this step are announced as deleted. Receivers are configured members whose
/// role's eventList allows the event; the queue lives in their status, so nothing is lost when the
/// replica changes.
pub fn queue_notifications(
    prev_state: Option<ClusterState>,
    prev: &[RoleStatus],
    next: &mut [RoleStatus],
    app: &ResolvedApp,
    domain: &str,
) {
    let was = |pod: &str| prev.iter().flat_map(|r| &r.members).find(|m| m.pod == pod);
    let mut events: Vec<(&'static str, LifecycleEvent, String, Vec<String>)> = Vec::new();
    for role in next.iter() {
        let joined: Vec<String> = role
            .members
            .iter()
            .filter(|m| m.state == MemberState::Configured)
            .filter(|m| {
                was(&m.pod).is_none_or(|p| {
                    p.state != MemberState::Configured && p.state_detail.last_configured_container.is_none()
                })
            })
            .map(|m| configmeta::fqdn(&m.pod, domain))
            .collect();
        if !joined.is_empty() && matches!(prev_state, Some(ClusterState::Configured | ClusterState::Updating)) {
            events.push(("addnodes", LifecycleEvent::Addnodes, role.id.clone(), joined));
        }
        let left: Vec<String> = role
            .members
            .iter()
            .filter(|m| leaving(m) && was(&m.pod).is_some_and(|p| !leaving(p)))
            .map(|m| configmeta::fqdn(&m.pod, domain))
            .collect();
        if !left.is_empty() {
            events.push(("delnodes", LifecycleEvent::Delnodes, role.id.clone(), left));
        }
    }
    for (name, event, role_id, fqdns) in events {
        for receiver_role in next.iter_mut() {
            if !wants(app, &receiver_role.id, event) {
                continue;
            }
            for m in &mut receiver_role.members {
                if m.state == MemberState::Configured && !fqdns.contains(&configmeta::fqdn(&m.pod, domain)) {
                    m.state_detail
                        .pending_notify_cmds
                        .push(notification(name, &role_id, &fqdns));
                }
            }
        }
    }
}

/// One command to run inside a member.
#[derive(Clone, Debug, PartialEq)]
pub struct Work {
    pub pod: String,
    pub container: String,
    pub kind: WorkKind,
    pub max_log_size_dump: usize,
    /// The member's configmeta.json, written before the command runs.
    pub configmeta: serde_json::Value,
    /// The cluster's `metadata.generation` that configmeta was made for (recorded in the member's
    /// `lastConfigDataGeneration` once it is in).
    pub generation: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WorkKind {
    /// Inject the role's files and fetch the package (once per container), then start or poll
    /// `startscript --configure`. Without a package (injections only) the setup is done once the
    /// files are in.
    Setup {
        package_url: Option<String>,
        injections: Vec<FileInjection>,
        /// Run `startscript --configure` (the role's eventList allows it); else only install.
        configure: bool,
        /// The package's `useNewSetupLayout`: where configcli goes, configmeta.json's mode. `None`:
        /// no package, no configcli.
        new_layout: Option<bool>,
        /// The app runs systemd: nothing is set up before systemd answers in the member.
        wait_systemd: bool,
    },
    /// Write a configured member's configmeta.json again (the cluster's spec changed since it was
    /// written), as KubeDirector refreshes its ready members.
    Refresh { new_layout: bool },
    /// Run `startscript <arguments>` (the head of the member's notification queue).
    Notify { arguments: Vec<String>, new_layout: bool },
}

/// Whether members of a role are set up inside (a package to run, or files to inject): they stay
/// `creating` until that is done.
pub fn has_setup(app_role: &ResolvedRole, role_spec: Option<&RoleSpec>) -> bool {
    app_role.setup_package.is_some() || role_spec.is_some_and(|r| !r.file_injections.is_empty())
}

/// Whether a member's configmeta.json predates `generation` and must be written again before
/// anything else happens in the cluster: configured members of roles with a setup package (only
/// those read it), whose pod runs (a member that is down is set up afresh when it is back). A
/// member without a recorded generation (configured by an older version of this operator) counts
/// as stale.
pub fn needs_refresh(
    m: &MemberStatus,
    has_package: bool,
    observed: &super::members::Observed,
    generation: i64,
) -> bool {
    has_package
        && m.state == MemberState::Configured
        && m.state_detail.last_configured_container.is_some()
        && m.state_detail.last_config_data_generation != Some(generation)
        && observed.pods.get(&m.pod).is_some_and(|p| p.running && !p.terminating)
}

fn has_package(app: &ResolvedApp, role: &str) -> bool {
    app.role(role).is_some_and(|r| r.setup_package.is_some())
}

/// Whether any member still needs configmeta.json of the current spec (`needs_refresh`): until
/// none does, nothing else runs and the cluster is not configured at this generation.
pub fn refresh_pending(
    roles: &[RoleStatus],
    app: &ResolvedApp,
    observed: &super::members::Observed,
    generation: i64,
) -> bool {
    roles.iter().any(|r| {
        r.members
            .iter()
            .any(|m| needs_refresh(m, has_package(app, &r.id), observed, generation))
    })
}

/// The guest commands the members of a status need now: setup for members `creating` in a role with
/// a package or file injections (until a result for their container is known), the head
/// notification for configured members with a queue. When the spec changed (`generation`), the
/// configured members first get a fresh configmeta.json, and no new member is set up and no
/// notification sent before all of them have it (KubeDirector's order: its ready members are
/// updated before a spec change is processed further).
pub fn work(c: &configmeta::Cluster, observed: &super::members::Observed, generation: i64) -> Vec<Work> {
    let stale = |role: &str, m: &MemberStatus| needs_refresh(m, has_package(c.app, role), observed, generation);
    let refreshing = refresh_pending(c.roles, c.app, observed, generation);
    let mut out = Vec::new();
    for role in c.roles {
        let Some(app_role) = c.app.role(&role.id) else {
            continue;
        };
        let role_spec = c.spec.roles.iter().find(|r| r.id == role.id);
        if !has_setup(app_role, role_spec) {
            continue;
        }
        let new_layout = app_role
            .setup_package
            .as_ref()
            .map(|p| p.use_new_setup_layout == Some(true));
        for m in &role.members {
            let kind = if stale(&role.id, m) {
                m.state_detail.last_configured_container.clone().map(|cid| {
                    (
                        cid,
                        WorkKind::Refresh {
                            new_layout: new_layout == Some(true),
                        },
                    )
                })
            } else if refreshing {
                None
            } else {
                member_work(app_role, role_spec, m, observed, new_layout, c.app.systemd_required)
            };
            let Some((container, kind)) = kind else {
                continue;
            };
            let Some(configmeta) = configmeta::for_member(c, &m.pod) else {
                continue;
            };
            out.push(Work {
                pod: m.pod.clone(),
                container,
                kind,
                max_log_size_dump: usize::try_from(app_role.max_log_size_dump).unwrap_or(0),
                configmeta,
                generation,
            });
        }
    }
    out
}

/// A member's own next command, if any: setup while `creating` (until a result for its container is
/// known), the head of its notification queue once configured.
fn member_work(
    app_role: &ResolvedRole,
    role_spec: Option<&RoleSpec>,
    m: &MemberStatus,
    observed: &super::members::Observed,
    new_layout: Option<bool>,
    wait_systemd: bool,
) -> Option<(String, WorkKind)> {
    match (m.state, &m.state_detail.configuring_container) {
        (MemberState::Creating, Some(container)) => {
            if observed.setups.get(&m.pod).is_some_and(|f| &f.container == container) {
                return None;
            }
            let setup = WorkKind::Setup {
                package_url: app_role.setup_package.as_ref().map(|p| p.package_url.clone()),
                injections: role_spec.map(|r| r.file_injections.clone()).unwrap_or_default(),
                configure: app_role
                    .event_list
                    .as_ref()
                    .is_none_or(|events| events.contains(&LifecycleEvent::Configure)),
                new_layout,
                wait_systemd,
            };
            Some((container.clone(), setup))
        }
        (MemberState::Configured, _) => {
            let head = m.state_detail.pending_notify_cmds.first()?;
            let container = m.state_detail.last_configured_container.clone()?;
            let notify = WorkKind::Notify {
                arguments: head.arguments.clone(),
                new_layout: new_layout == Some(true),
            };
            Some((container, notify))
        }
        _ => None,
    }
}
