//! The in-guest decisions: setup results, notifications on expand and shrink, configmeta, work lists.

use crate::api::app::{LifecycleEvent, SetupPackage};
use crate::api::cluster::{ClusterState, KubeDirectorClusterStatus, MemberState};

use super::catalog::ResolvedApp;
use super::guest::{self, Finished, SetupReport, WorkKind};
use super::members::Observed;
use super::plan::ClusterPlan;
use super::tests::{all_running, centos_app, centos_cluster, plan, plan_with};

/// The centos-like app with a setup package on every role.
fn app_with_setup() -> ResolvedApp {
    let mut app = centos_app();
    for r in &mut app.roles {
        r.setup_package = Some(SetupPackage {
            package_url: "file:///pkg/setup.tgz".to_string(),
            use_new_setup_layout: None,
        });
    }
    app
}

/// Every member's setup finished in its current container with `code`.
fn finish_setups(observed: &mut Observed, status: &KubeDirectorClusterStatus, code: i32) {
    for m in status.roles.iter().flat_map(|r| &r.members) {
        if let Some(c) = &m.state_detail.configuring_container {
            observed.setups.insert(
                m.pod.clone(),
                Finished {
                    container: c.clone(),
                    exit_code: code,
                    stdout_tail: "out".to_string(),
                    stderr_tail: "boom".to_string(),
                    configmeta_generation: Some(generation_of(status)),
                },
            );
        }
    }
}

/// The generation the status was planned for (what a setup's configmeta was made for).
fn generation_of(status: &KubeDirectorClusterStatus) -> i64 {
    status.observed_generation.unwrap_or(0)
}

/// Every member of the plan's status.
fn members(p: &ClusterPlan) -> impl Iterator<Item = &crate::api::cluster::MemberStatus> {
    p.status.roles.iter().flat_map(|r| &r.members)
}

/// No member has a notification waiting.
fn no_notifications(p: &ClusterPlan) -> bool {
    members(p).all(|m| m.state_detail.pending_notify_cmds.is_empty())
}

fn members_of<'a>(p: &'a ClusterPlan, role: &str) -> &'a [crate::api::cluster::MemberStatus] {
    &p.status.roles.iter().find(|r| r.id == role).expect("role").members
}

/// Plans until configured: created, running, setups finished with exit 0.
fn configured(cluster: &crate::api::KubeDirectorCluster, app: &ResolvedApp) -> (ClusterPlan, Observed) {
    let p1 = plan(cluster, app, None, &Observed::default());
    let mut observed = all_running(&p1, "a");
    let p2 = plan(cluster, app, Some(&p1.status), &observed);
    assert!(p2.guest_work.iter().all(|w| matches!(w.kind, WorkKind::Setup { .. })));
    assert_eq!(
        p2.guest_work.len(),
        p2.status.roles.iter().map(|r| r.members.len()).sum::<usize>()
    );
    finish_setups(&mut observed, &p2.status, 0);
    let p3 = plan(cluster, app, Some(&p2.status), &observed);
    assert_eq!(p3.status.state, Some(ClusterState::Configured), "{:?}", p3.status.roles);
    assert!(
        p3.guest_work.is_empty(),
        "nothing to run once configured: {:?}",
        p3.guest_work
    );
    (p3, observed)
}

#[test]
fn setup_result_decides_configured_or_config_error() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let mut observed = all_running(&p1, "a");
    let p2 = plan(&cluster, &app, Some(&p1.status), &observed);
    assert!(members(&p2).all(|m| m.state == MemberState::Creating));

    // A result for another container means nothing.
    let pod = members_of(&p2, "LoadBalancer")[0].pod.clone();
    observed.setups.insert(
        pod.clone(),
        Finished {
            container: "kwok://old".to_string(),
            exit_code: 0,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            configmeta_generation: None,
        },
    );
    let p3 = plan(&cluster, &app, Some(&p2.status), &observed);
    assert_eq!(members_of(&p3, "LoadBalancer")[0].state, MemberState::Creating);

    // Exit 3: config error with both tails; the cluster is not Ready and says why.
    finish_setups(&mut observed, &p3.status, 3);
    let p4 = plan(&cluster, &app, Some(&p3.status), &observed);
    let lb = &members_of(&p4, "LoadBalancer")[0];
    assert_eq!(lb.state, MemberState::ConfigError);
    let detail = lb.state_detail.config_error_detail.clone().unwrap_or_default();
    assert!(
        detail.contains("exited with 3") && detail.contains("out") && detail.contains("boom"),
        "{detail}"
    );
    assert!(p4.status.member_state_rollup.config_errors);

    // Deleting the pod (new container id) sets the member up again.
    let observed = all_running(&p4, "b");
    let p5 = plan(&cluster, &app, Some(&p4.status), &observed);
    let lb = &members_of(&p5, "LoadBalancer")[0];
    assert_eq!(lb.state, MemberState::Creating);
    assert!(
        p5.guest_work
            .iter()
            .any(|w| w.pod == lb.pod && w.container.ends_with("-b"))
    );
}

#[test]
fn expand_queues_addnodes_on_existing_members_only() {
    let mut cluster = centos_cluster();
    let app = app_with_setup();
    let (p3, _) = configured(&cluster, &app);
    let before: Vec<String> = members_of(&p3, "vanilla_centos")
        .iter()
        .map(|m| m.pod.clone())
        .collect();
    let n = before.len();

    cluster.spec.roles[0].members = Some(i32::try_from(n + 2).expect("small"));
    let p4 = plan(&cluster, &app, Some(&p3.status), &all_running(&p3, "a"));
    let mut observed = all_running(&p4, "a");
    let p5 = plan(&cluster, &app, Some(&p4.status), &observed);
    finish_setups(&mut observed, &p5.status, 0);
    let p6 = plan(&cluster, &app, Some(&p5.status), &observed);
    let vc = members_of(&p6, "vanilla_centos");
    assert_eq!(vc.len(), n + 2);
    let new_fqdns: Vec<String> = vc[n..]
        .iter()
        .map(|m| format!("{}.{}.ns.svc.cluster.local", m.pod, p6.status.cluster_service))
        .collect();
    let expected = guest::notification("addnodes", "vanilla_centos", &new_fqdns);
    for m in &vc[..n] {
        assert_eq!(m.state_detail.pending_notify_cmds, vec![expected.clone()], "{}", m.pod);
    }
    for m in &vc[n..] {
        assert!(
            m.state_detail.pending_notify_cmds.is_empty(),
            "new members are not told about themselves"
        );
    }
    // v1.node's eventList is empty: it hears nothing.
    assert!(
        members_of(&p6, "v1.node")
            .iter()
            .all(|m| m.state_detail.pending_notify_cmds.is_empty())
    );
    // LoadBalancer (eventList unset = all) hears it too.
    assert!(
        members_of(&p6, "LoadBalancer")
            .iter()
            .all(|m| m.state_detail.pending_notify_cmds == vec![expected.clone()])
    );
    // The head of each queue becomes work, with configmeta naming the new members.
    let work: Vec<_> = p6
        .guest_work
        .iter()
        .filter(|w| matches!(w.kind, WorkKind::Notify { .. }))
        .collect();
    assert_eq!(work.len(), n + 1);
    let fqdns = &work[0].configmeta["nodegroups"]["1"]["roles"]["vanilla_centos"]["fqdns"];
    assert_eq!(fqdns.as_array().map(Vec::len), Some(n + 2));

    // Once delivered (the runner reports it), the head is dropped.
    for w in &work {
        if let WorkKind::Notify { arguments, .. } = &w.kind {
            observed.notified.insert(w.pod.clone(), arguments.clone());
        }
    }
    let p7 = plan(&cluster, &app, Some(&p6.status), &observed);
    assert!(no_notifications(&p7));
    assert!(p7.guest_work.is_empty());
}

#[test]
fn shrink_queues_delnodes_and_creation_queues_nothing() {
    let mut cluster = centos_cluster();
    cluster.spec.roles[0].members = Some(3);
    let app = app_with_setup();
    let (p3, _) = configured(&cluster, &app);
    assert!(no_notifications(&p3));

    cluster.spec.roles[0].members = Some(1);
    let p4 = plan(&cluster, &app, Some(&p3.status), &all_running(&p3, "a"));
    let vc = members_of(&p4, "vanilla_centos");
    let gone: Vec<String> = vc
        .iter()
        .filter(|m| m.state == MemberState::Deleting)
        .map(|m| format!("{}.{}.ns.svc.cluster.local", m.pod, p4.status.cluster_service))
        .collect();
    assert_eq!(gone.len(), 2);
    let expected = guest::notification("delnodes", "vanilla_centos", &gone);
    assert_eq!(vc[0].state_detail.pending_notify_cmds, vec![expected]);
    assert!(vc[1..].iter().all(|m| m.state_detail.pending_notify_cmds.is_empty()));
}

#[test]
fn event_list_without_addnodes_hears_nothing() {
    let mut cluster = centos_cluster();
    let mut app = app_with_setup();
    for r in &mut app.roles {
        r.event_list = Some(vec![LifecycleEvent::Configure, LifecycleEvent::Delnodes]);
    }
    let (p3, _) = configured(&cluster, &app);
    cluster.spec.roles[0].members = Some(5);
    let p4 = plan(&cluster, &app, Some(&p3.status), &all_running(&p3, "a"));
    let mut observed = all_running(&p4, "a");
    let p5 = plan(&cluster, &app, Some(&p4.status), &observed);
    finish_setups(&mut observed, &p5.status, 0);
    let p6 = plan(&cluster, &app, Some(&p5.status), &observed);
    assert_eq!(p6.status.state, Some(ClusterState::Configured));
    assert!(no_notifications(&p6));
}

#[test]
fn configmeta_has_the_contract_structure() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    let lb = p2
        .guest_work
        .iter()
        .find(|w| w.pod == members_of(&p2, "LoadBalancer")[0].pod)
        .expect("LB setup work");
    let cm = &lb.configmeta;
    let domain = format!("{}.ns.svc.cluster.local", p2.status.cluster_service);
    assert_eq!(cm["version"], "7");
    assert_eq!(cm["cluster"]["name"], cluster.metadata.name.clone().unwrap_or_default());
    assert_eq!(cm["cluster"]["id"], "uid-1");
    assert_eq!(cm["node"]["role_id"], "LoadBalancer");
    assert_eq!(cm["node"]["nodegroup_id"], "1");
    assert_eq!(cm["node"]["domain"], domain.as_str());
    assert_eq!(cm["node"]["fqdn"], format!("{}.{domain}", lb.pod).as_str());
    assert_eq!(cm["node"]["distro_id"], "example/centos8");
    let node_id = members_of(&p2, "LoadBalancer")[0].node_id.to_string();
    assert_eq!(cm["node"]["id"], node_id.as_str());
    let role = &cm["nodegroups"]["1"]["roles"]["vanilla_centos"];
    let pods: Vec<String> = members_of(&p2, "vanilla_centos")
        .iter()
        .map(|m| format!("{}.{domain}", m.pod))
        .collect();
    assert_eq!(role["fqdns"], serde_json::json!(pods));
    // KubeDirector's structure: a map of service objects per role, referenced from `services`.
    let services: Vec<&String> = role["services"].as_object().expect("a map").keys().collect();
    assert_eq!(services, ["noport", "ssh"]);
    assert_eq!(
        role["fqdn_mappings"][&pods[0]],
        members_of(&p2, "vanilla_centos")[0].node_id.to_string().as_str()
    );
    assert_eq!(cm["nodegroups"]["1"]["catalog_entry_version"], "1.3");
    // A service with a port has endpoints per member; one without has none.
    // (no urlScheme: KubeDirector's `://host:port`)
    assert_eq!(
        role["services"]["ssh"]["endpoints"][0],
        format!("://{}:22", pods[0]).as_str()
    );
    assert_eq!(role["services"]["noport"]["endpoints"], serde_json::json!([]));
    assert_eq!(
        cm["services"]["ssh"]["1"]["vanilla_centos"]["bdvlibrefkey"],
        serde_json::json!(["nodegroups", "1", "roles", "vanilla_centos", "services", "ssh"])
    );
    for key in ["distros", "connections"] {
        assert!(cm[key].is_object(), "{key}");
    }
}

#[test]
fn guest_reports_parse_strictly() {
    assert_eq!(
        guest::parse_report("c", "kd-result running\n", ""),
        Ok((SetupReport::Running, false))
    );
    // `started` always wrote configmeta.json; `done` says so with `fresh`.
    assert_eq!(
        guest::parse_report("c", "kd-result started\n", ""),
        Ok((SetupReport::Running, true))
    );
    let finished = Finished {
        container: "c".to_string(),
        exit_code: 2,
        stdout_tail: "last words".to_string(),
        stderr_tail: "err tail".to_string(),
        configmeta_generation: None,
    };
    let done = guest::parse_report("c", "kd-result done 2\nlast words", "err tail");
    assert_eq!(done, Ok((SetupReport::Done(finished.clone()), false)));
    let done = guest::parse_report("c", "kd-result done 2 fresh\nlast words", "err tail");
    assert_eq!(done, Ok((SetupReport::Done(finished), true)));
    assert!(guest::parse_report("c", "kd-result done 0 stale\n", "").is_err());
    assert!(guest::parse_report("c", "sh: not found\n", "").is_err());
    assert!(guest::parse_report("c", "kd-result done x\n", "").is_err());
    assert!(guest::parse_report("c", "kd-result maybe\n", "").is_err());
}

#[test]
fn tails_cut_on_character_boundaries_and_polls_slow_down() {
    assert_eq!(guest::tail("abcdef", 3), "def");
    assert_eq!(guest::tail("ab", 3), "ab");
    assert_eq!(guest::tail("aé", 1), "");
    let delays: Vec<u64> = (0..8).map(|n| guest::poll_delay(n).as_secs()).collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    assert!(guest::notify_retry_delay(10).as_secs() <= 60);
}

#[test]
fn a_change_of_connected_content_queues_reconnect_until_delivered() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let (p3, mut observed) = configured(&cluster, &app);
    let first = p3.status.last_connection_hash.clone();
    assert!(!first.is_empty(), "the hash is recorded from the start");

    // Same content again: nothing to tell.
    let same = plan(&cluster, &app, Some(&p3.status), &observed);
    assert!(same.guest_work.is_empty());
    assert_eq!(same.status.last_connection_hash, first);

    // A connected ConfigMap changed: every configured member with a package hears --reconnect, and
    // the cluster is `updating` until they have.
    let changed =
        serde_json::json!({"clusters": {}, "configmaps": {"settings": [{"data": {"k": "2"}}]}, "secrets": {}});
    let p4 = plan_with(&cluster, &app, Some(&p3.status), &observed, &changed);
    assert_ne!(p4.status.last_connection_hash, first);
    assert_eq!(p4.status.state, Some(ClusterState::Updating));
    let reconnect = crate::model::connections::reconnect();
    let queued: Vec<_> = members(&p4).collect();
    assert!(
        queued
            .iter()
            .all(|m| m.state_detail.pending_notify_cmds == vec![reconnect.clone()])
    );
    // Each notification carries the new content in configmeta.
    assert_eq!(p4.guest_work.len(), queued.len());
    assert!(p4.guest_work.iter().all(|w| w.configmeta["connections"] == changed));
    // Planned again before delivery: queued once, not twice.
    let again = plan_with(&cluster, &app, Some(&p4.status), &observed, &changed);
    assert!(members(&again).all(|m| m.state_detail.pending_notify_cmds.len() == 1));

    for m in &queued {
        observed.notified.insert(m.pod.clone(), reconnect.arguments.clone());
    }
    let p5 = plan_with(&cluster, &app, Some(&p4.status), &observed, &changed);
    assert_eq!(p5.status.state, Some(ClusterState::Configured));
    assert!(p5.guest_work.is_empty());
}

#[test]
fn a_change_while_creating_reaches_members_whose_setup_may_have_seen_the_old_content() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let observed = all_running(&p1, "a");
    let p2 = plan(&cluster, &app, Some(&p1.status), &observed);
    assert!(members(&p2).all(|m| m.state == MemberState::Creating));
    let changed = serde_json::json!({"clusters": {"db": {}}, "configmaps": {}, "secrets": {}});
    let p3 = plan_with(&cluster, &app, Some(&p2.status), &observed, &changed);
    let reconnect = crate::model::connections::reconnect();
    assert!(
        members(&p3).all(|m| m.state_detail.pending_notify_cmds == vec![reconnect.clone()]),
        "queued on creating members"
    );
    // Not run before they are configured: only setup work.
    assert!(p3.guest_work.iter().all(|w| matches!(w.kind, WorkKind::Setup { .. })));
    // Members whose pods do not run yet (create pending) will read the new content at setup.
    let p0 = plan(&cluster, &app, None, &Observed::default());
    let p0b = plan_with(&cluster, &app, Some(&p0.status), &Observed::default(), &changed);
    assert!(no_notifications(&p0b));
}

#[test]
fn file_injections_alone_make_a_setup_and_travel_with_it() {
    let mut cluster = centos_cluster();
    let app = centos_app(); // vanilla_centos has no package
    cluster.spec.roles[0].file_injections = vec![crate::api::cluster::FileInjection {
        src_url: "https://files.example.invalid/a.conf".to_string(),
        dest_dir: "/etc/a".to_string(),
        permissions: None,
    }];
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    let vc = members_of(&p2, "vanilla_centos");
    assert!(
        vc.iter().all(|m| m.state == MemberState::Creating),
        "waits for its files"
    );
    let work: Vec<_> = p2
        .guest_work
        .iter()
        .filter(|w| vc.iter().any(|m| m.pod == w.pod))
        .collect();
    assert_eq!(work.len(), vc.len());
    for w in work {
        match &w.kind {
            WorkKind::Setup {
                package_url,
                injections,
                configure,
                new_layout,
                ..
            } => {
                assert_eq!(package_url, &None);
                assert_eq!(injections.len(), 1);
                assert!(configure, "no eventList: every event");
                assert_eq!(new_layout, &None, "no package, no configcli");
            }
            other => panic!("{other:?}"),
        }
    }
    // v1.node (no package, no injections) is configured at once.
    assert!(
        members_of(&p2, "v1.node")
            .iter()
            .all(|m| m.state == MemberState::Configured)
    );
}

#[test]
fn a_hash_kubedirector_recorded_is_replaced_without_a_reconnect() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let (p3, observed) = configured(&cluster, &app);
    let mut taken_over = p3.status.clone();
    // KubeDirector's md5 of no connections, as its clusters carry it.
    taken_over.last_connection_hash = "d41d8cd98f00b204e9800998ecf8427e".to_string();
    let p = plan(&cluster, &app, Some(&taken_over), &observed);
    assert!(no_notifications(&p), "no --reconnect on takeover");
    assert_eq!(p.status.last_connection_hash, p3.status.last_connection_hash);
}

#[test]
fn notification_arguments_are_split_as_kubedirectors_shell_splits_them() {
    let queued = vec![
        "--addnodes".to_string(),
        "--nodegroup 1".to_string(),
        "--role  worker".to_string(),
    ];
    assert_eq!(
        guest::notify_argv(&queued),
        ["--addnodes", "--nodegroup", "1", "--role", "worker"]
    );
}

#[test]
fn a_role_whose_event_list_lacks_configure_is_installed_but_not_configured() {
    let cluster = centos_cluster();
    let mut app = app_with_setup();
    for r in &mut app.roles {
        r.event_list = Some(vec![LifecycleEvent::Addnodes]);
    }
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    assert!(!p2.guest_work.is_empty());
    assert!(
        p2.guest_work
            .iter()
            .all(|w| matches!(w.kind, WorkKind::Setup { configure: false, .. })),
        "{:?}",
        p2.guest_work
    );
}

#[test]
fn a_spec_change_refreshes_configured_members_before_new_ones_set_up() {
    let mut cluster = centos_cluster();
    cluster.metadata.generation = Some(1);
    cluster.spec.roles[0].members = Some(2);
    let app = app_with_setup();
    let (p3, _) = configured(&cluster, &app);
    assert!(members(&p3).all(|m| m.state_detail.last_config_data_generation == Some(1)));
    let old: Vec<String> = members(&p3).map(|m| m.pod.clone()).collect();

    // Expand (generation 2): the configured members get a fresh configmeta.json first; the new
    // member, running, is not set up and no notification is sent until they all have it.
    cluster.metadata.generation = Some(2);
    cluster.spec.roles[0].members = Some(3);
    let p4 = plan(&cluster, &app, Some(&p3.status), &all_running(&p3, "a"));
    let mut observed = all_running(&p4, "a");
    let p5 = plan(&cluster, &app, Some(&p4.status), &observed);
    let new = members_of(&p5, "vanilla_centos")
        .iter()
        .find(|m| !old.contains(&m.pod))
        .expect("new member");
    assert_eq!(new.state, MemberState::Creating);
    assert!(p5.guest_work.iter().all(|w| matches!(w.kind, WorkKind::Refresh { .. })));
    let mut refreshed: Vec<String> = p5.guest_work.iter().map(|w| w.pod.clone()).collect();
    refreshed.sort();
    let mut expected = old.clone();
    expected.sort();
    assert_eq!(refreshed, expected);
    assert_eq!(p5.status.state, Some(ClusterState::Updating));
    let w = &p5.guest_work[0];
    assert_eq!(w.generation, 2);
    let fqdns = &w.configmeta["nodegroups"]["1"]["roles"]["vanilla_centos"]["fqdns"];
    assert_eq!(
        fqdns.as_array().map(Vec::len),
        Some(3),
        "the refresh lists the new member"
    );

    // One refreshed, one not yet: still nothing else.
    observed.refreshed.insert(old[0].clone(), 2);
    let p6 = plan(&cluster, &app, Some(&p5.status), &observed);
    assert!(
        p6.guest_work
            .iter()
            .all(|w| matches!(w.kind, WorkKind::Refresh { .. }) && w.pod != old[0])
    );
    // All refreshed: recorded, and the new member's setup starts in the same step.
    for pod in &old {
        observed.refreshed.insert(pod.clone(), 2);
    }
    let p7 = plan(&cluster, &app, Some(&p6.status), &observed);
    for m in members(&p7).filter(|m| old.contains(&m.pod)) {
        assert_eq!(m.state_detail.last_config_data_generation, Some(2), "{}", m.pod);
    }
    assert_eq!(p7.guest_work.len(), 1, "{:?}", p7.guest_work);
    assert!(matches!(p7.guest_work[0].kind, WorkKind::Setup { .. }) && p7.guest_work[0].pod == new.pod);

    // A configured member whose pod is down is not waited for; one configured by an older
    // version (no generation recorded) is refreshed.
    let mut status = p7.status.clone();
    let mut down = observed.clone();
    if let Some(p) = down.pods.get_mut(&old[0]) {
        p.running = false;
    }
    status.roles[0].members[1].state_detail.last_config_data_generation = None;
    cluster.metadata.generation = Some(3);
    let p8 = plan(&cluster, &app, Some(&status), &down);
    let kinds: Vec<(&str, bool)> = p8
        .guest_work
        .iter()
        .map(|w| (w.pod.as_str(), matches!(w.kind, WorkKind::Refresh { .. })))
        .collect();
    assert!(!kinds.iter().any(|(pod, _)| *pod == old[0]), "{kinds:?}");
    assert!(kinds.iter().any(|(pod, r)| *pod == old[1] && *r), "{kinds:?}");
    assert_eq!(
        p8.status.state,
        Some(ClusterState::Updating),
        "not configured before the refresh"
    );
}

#[test]
fn a_restarted_member_keeps_its_queue_only_with_a_volume() {
    let cluster = centos_cluster();
    let app = app_with_setup();
    let (p3, _) = configured(&cluster, &app);
    let mut status = p3.status.clone();
    let pending = guest::notification("addnodes", "vanilla_centos", &["x.example".to_string()]);
    for m in status.roles.iter_mut().flat_map(|r| r.members.iter_mut()) {
        m.state_detail.pending_notify_cmds = vec![pending.clone()];
    }
    let with_pv = status.roles[0].members[0].pod.clone();
    status.roles[0].members[0].pvc = Some(format!("p-{with_pv}"));
    // Every pod gets a new container.
    let p4 = plan(&cluster, &app, Some(&status), &super::tests::all_running(&p3, "b"));
    for m in members(&p4) {
        assert_eq!(
            m.state,
            MemberState::Creating,
            "{}: set up again in its new container",
            m.pod
        );
        let kept = !m.state_detail.pending_notify_cmds.is_empty();
        assert_eq!(
            kept,
            m.pod == with_pv,
            "{}: {:?}",
            m.pod,
            m.state_detail.pending_notify_cmds
        );
        assert_eq!(
            m.state_detail.last_config_data_generation.is_some(),
            m.pod == with_pv,
            "{}",
            m.pod
        );
    }
}
