//! Unit tests of the pure plan over the app shapes of the contract: null/absent/set packages, roles
//! without ports, services shared by roles, `.`/`_`/upper case in role ids, GPU and non-GPU roles,
//! storage and block storage, expand/shrink and the member state machine.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::cluster::{AppCatalog, ClusterState, KubeDirectorClusterStatus, MemberState};
use crate::api::{KubeDirectorApp, KubeDirectorCluster, Tristate};

use super::catalog::{ResolvedApp, apply_app_defaults, choose_catalog, resolve_app};
use super::members::{Observed, PodFacts};
use super::plan::{ClusterInput, ClusterPlan, hold_first_status, plan_cluster};
use super::settings::Settings;
use super::validate::StorageClasses;
use super::{labels, names};

pub(super) fn fixture<T: serde::de::DeserializeOwned>(text: &str, yaml: bool) -> T {
    if yaml {
        serde_yaml::from_str(text).expect("fixture YAML")
    } else {
        serde_json::from_str(text).expect("fixture JSON")
    }
}

fn spark_app() -> ResolvedApp {
    let app: KubeDirectorApp = fixture(include_str!("../../../tests/fixtures/valid/app-spark-like.json"), false);
    resolve_app("spark-like", AppCatalog::Local, &app.spec).expect("resolves")
}

pub(super) fn centos_app() -> ResolvedApp {
    let app: KubeDirectorApp = fixture(include_str!("../../../tests/fixtures/valid/app-centos-like.yaml"), true);
    resolve_app("centos-like", AppCatalog::System, &app.spec).expect("resolves")
}

fn spark_cluster() -> KubeDirectorCluster {
    fixture(
        include_str!("../../../tests/fixtures/valid/cluster-spark-like.yaml"),
        true,
    )
}

pub(super) fn centos_cluster() -> KubeDirectorCluster {
    fixture(
        include_str!("../../../tests/fixtures/valid/cluster-centos-like.json"),
        false,
    )
}

fn classes() -> StorageClasses {
    StorageClasses {
        names: vec!["fast".into(), "block".into(), "standard".into()],
        cluster_default: Some("standard".into()),
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::UNIX_EPOCH)
}

pub(super) fn plan(
    cluster: &KubeDirectorCluster,
    app: &ResolvedApp,
    prev: Option<&KubeDirectorClusterStatus>,
    observed: &Observed,
) -> ClusterPlan {
    plan_with(cluster, app, prev, observed, &super::connections::empty())
}

/// `plan` with the given connected content.
pub(super) fn plan_with(
    cluster: &KubeDirectorCluster,
    app: &ResolvedApp,
    prev: Option<&KubeDirectorClusterStatus>,
    observed: &Observed,
    connections: &serde_json::Value,
) -> ClusterPlan {
    plan_in(cluster, app, prev, observed, connections, &Settings::default())
}

/// `plan_with` under the given settings (kd-global-config).
pub(super) fn plan_in(
    cluster: &KubeDirectorCluster,
    app: &ResolvedApp,
    prev: Option<&KubeDirectorClusterStatus>,
    observed: &Observed,
    connections: &serde_json::Value,
    settings: &Settings,
) -> ClusterPlan {
    plan_cluster(&ClusterInput {
        name: cluster.metadata.name.as_deref().expect("name"),
        namespace: "ns",
        uid: "uid-1",
        generation: cluster.metadata.generation.or(Some(1)),
        spec: &cluster.spec,
        prev,
        app,
        settings,
        classes: &classes(),
        observed,
        connections,
        now: now(),
        token_salt: "",
    })
}

fn sts<'a>(plan: &'a ClusterPlan, name: &str) -> &'a StatefulSet {
    plan.statefulsets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no StatefulSet {name}"))
}

fn app_container(s: &StatefulSet) -> &Container {
    let pod = s
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    pod.containers.iter().find(|c| c.name == "app").expect("container app")
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn port_names(c: &Container) -> Vec<String> {
    c.ports.iter().flatten().filter_map(|p| p.name.clone()).collect()
}

/// Every pod of the plan's members is running with the given container id suffix.
pub(super) fn all_running(plan: &ClusterPlan, suffix: &str) -> Observed {
    let mut observed = Observed::default();
    for m in plan.status.roles.iter().flat_map(|r| &r.members) {
        let facts = PodFacts {
            running: true,
            ready: true,
            container_id: Some(format!("kwok://{}-{suffix}", m.pod)),
            app: Some(super::members::ContainerPhase::Running),
            ready_condition: Some(true),
            ..Default::default()
        };
        observed.pods.insert(m.pod.clone(), facts);
    }
    observed
}

#[test]
fn app_defaults_fill_roles_and_keep_explicit_null() {
    let app: KubeDirectorApp = fixture(include_str!("../../../tests/fixtures/valid/app-spark-like.json"), false);
    let spec = apply_app_defaults(&app.spec);
    assert!(spec.default_config_package.is_absent() && spec.default_image_repo_tag.is_none());
    let role = |id: &str| spec.roles.iter().find(|r| r.id == id).expect("role");
    assert!(
        matches!(role("controller").config_package, Tristate::Set(_)),
        "absent inherits the default package"
    );
    assert_eq!(
        role("jupyter").config_package,
        Tristate::Null,
        "explicit null means no setup"
    );
    assert_eq!(role("controller").image_repo_tag.as_deref(), Some("example/spark:2.1"));
    assert_eq!(role("jupyter").image_repo_tag.as_deref(), Some("example/notebook:2.1"));
    assert_eq!(
        role("worker").persist_dirs.as_deref(),
        Some(&["/home".to_string()][..]),
        "own value wins"
    );
    assert_eq!(role("controller").max_log_size_dump, Some(512));
}

#[test]
fn catalog_prefers_local_then_system() {
    assert_eq!(choose_catalog(None, true, true), Some(AppCatalog::Local));
    assert_eq!(choose_catalog(None, false, true), Some(AppCatalog::System));
    assert_eq!(choose_catalog(Some(AppCatalog::System), true, false), None);
    assert_eq!(choose_catalog(Some(AppCatalog::Local), false, true), None);
}

#[test]
fn crnamerole_cluster_gets_contract_children() {
    let cluster = spark_cluster();
    let p = plan(&cluster, &spark_app(), None, &Observed::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);

    let headless = p.headless.as_ref().expect("headless");
    assert_eq!(headless.metadata.name.as_deref(), Some("spark-one"));
    let hspec = headless.spec.as_ref().expect("spec");
    assert_eq!(hspec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hspec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        hspec
            .selector
            .as_ref()
            .and_then(|s| s.get(labels::HEADLESS))
            .map(String::as_str),
        Some("spark-one")
    );
    assert!(
        !headless
            .metadata
            .labels
            .as_ref()
            .expect("labels")
            .contains_key(labels::ROLE),
        "no role label on the headless Service"
    );

    let controller = sts(&p, "spark-one-controller");
    let meta_labels = controller.metadata.labels.as_ref().expect("labels");
    for (k, v) in [
        (labels::CLUSTER, "spark-one"),
        (labels::APP, "spark-like"),
        (labels::APP_CATALOG, "local"),
        (labels::ROLE, "controller"),
        (labels::HEADLESS, "spark-one"),
    ] {
        assert_eq!(meta_labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let owner = &controller.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("KubeDirectorCluster", "uid-1", Some(true))
    );
    let s = controller.spec.as_ref().expect("spec");
    assert_eq!(s.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(s.service_name.as_deref(), Some("spark-one"));
    assert_eq!(s.replicas, Some(1));
    let c = app_container(controller);
    assert_eq!(c.image.as_deref(), Some("example/spark:2.1"));
    // Only services with a port become container ports; the port-less "agent" does not.
    assert_eq!(port_names(c), vec!["spark-web", "spark-master", "ssh"]);
    assert_eq!(env_value(c, "SPARK_MODE").as_deref(), Some("master"));
    assert_eq!(
        env_value(c, "NVIDIA_VISIBLE_DEVICES"),
        None,
        "the controller requests a GPU"
    );
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone());
    assert_eq!(caps, Some(vec!["SYS_ADMIN".to_string(), "NET_ADMIN".to_string()]));
    let mounts: BTreeMap<String, Option<String>> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), m.sub_path.clone()))
        .collect();
    for tmpfs in ["/tmp", "/run", "/run/lock", "/dev/shm", "/etc/creds", "/data"] {
        assert!(mounts.contains_key(tmpfs), "mount {tmpfs} missing: {mounts:?}");
    }
    // KubeDirector's rule: /etc always, and the app's /etc/spark collapses into it.
    assert_eq!(
        mounts.get("/etc"),
        Some(&Some("etc".to_string())),
        "persist dir by subPath"
    );
    assert!(!mounts.contains_key("/etc/spark"), "inside a persisted directory");
    assert_eq!(mounts.get("/home"), Some(&Some("home".to_string())));
    let claims = s.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("p"));
    assert_eq!(
        claims[0].spec.as_ref().and_then(|s| s.storage_class_name.as_deref()),
        Some("fast")
    );
    let pod_spec = s.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod_spec.init_containers.as_ref().map(|i| i[0].name.as_str()),
        Some("init")
    );
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("spark-runner"));
    assert!(pod_spec.affinity.is_some());
    let pod_labels = s
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    assert_eq!(pod_labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(pod_labels.get(labels::HEADLESS).map(String::as_str), Some("spark-one"));

    let worker = sts(&p, "spark-one-worker");
    let wc = app_container(worker);
    assert_eq!(
        env_value(wc, "NVIDIA_VISIBLE_DEVICES").as_deref(),
        Some("void"),
        "no GPU requested"
    );
    assert_eq!(
        port_names(wc),
        vec!["ssh"],
        "a service shared by two roles opens on both"
    );
    let devices: Vec<String> = wc
        .volume_devices
        .iter()
        .flatten()
        .map(|d| d.device_path.clone())
        .collect();
    assert_eq!(devices, vec!["/dev/xvd0", "/dev/xvd1"]);
    assert_eq!(
        sts(&p, "spark-one-jupyter").spec.as_ref().and_then(|s| s.replicas),
        Some(0)
    );

    // Members: 1 controller + 3 workers, node ids 1..4, all waiting for their pods.
    let members: Vec<_> = p.status.roles.iter().flat_map(|r| &r.members).collect();
    assert_eq!(members.len(), 4);
    assert_eq!(members.iter().map(|m| m.node_id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(members.iter().all(|m| m.state == MemberState::CreatePending));
    assert_eq!(members[0].pvc.as_deref(), Some("p-spark-one-controller-0"));
    assert_eq!(p.status.last_node_id, 4);
    assert_eq!(p.status.state, Some(ClusterState::Creating));
    let svc_names: Vec<&str> = p
        .member_services
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    // KubeDirector's CrNameRole member Services are named as their pods.
    assert_eq!(
        svc_names,
        vec![
            "spark-one-controller-0",
            "spark-one-worker-0",
            "spark-one-worker-1",
            "spark-one-worker-2"
        ]
    );
    assert!(
        p.status
            .roles
            .iter()
            .flat_map(|r| &r.members)
            .all(|m| m.service == m.pod)
    );
    let svc = &p.member_services[0];
    assert_eq!(svc.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("ClusterIP"));
    assert_eq!(
        svc.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(labels::POD_NAME))
            .map(String::as_str),
        Some("spark-one-controller-0")
    );
}

#[test]
fn uid_naming_odd_role_ids_and_roles_without_ports() {
    let cluster = centos_cluster();
    let p = plan(&cluster, &centos_app(), None, &Observed::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let names: Vec<&str> = p
        .statefulsets
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(
        names.iter().all(|n| n.starts_with("kdss-") && n.len() == 10),
        "{names:?}"
    );
    assert!(
        p.headless
            .as_ref()
            .and_then(|h| h.metadata.name.as_deref())
            .is_some_and(|n| n.starts_with("kdhs-"))
    );
    let role = |id: &str| p.status.roles.iter().find(|r| r.id == id).expect("role status");
    // v1.node only runs "noport" (endpoint: null): no Service, recorded as n/a.
    assert!(role("v1.node").members.iter().all(|m| m.service == "n/a"));
    assert_eq!(role("v1.node").members.len(), 3);
    assert_eq!(
        role("LoadBalancer").members.len(),
        1,
        "members default to the cardinality"
    );
    let lb = p
        .statefulsets
        .iter()
        .find(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::ROLE))
                .map(String::as_str)
                == Some("LoadBalancer")
        })
        .expect("LB sts");
    assert_eq!(
        lb.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::APP_CATALOG))
            .map(String::as_str),
        Some("system")
    );
    assert_eq!(
        p.member_services.len(),
        3,
        "2 vanilla_centos + 1 LoadBalancer members open ssh"
    );
    assert_eq!(
        p.member_services[0].spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer"),
        "KubeDirector's default type"
    );
}

#[test]
fn spec_errors_name_the_field_and_the_allowed_values() {
    let mut cluster = spark_cluster();
    cluster.spec.roles[0].members = Some(2); // controller is "1"
    cluster.spec.roles[1].id = "wrker".into();
    cluster.spec.roles[2].storage = Some(crate::api::cluster::ClusterStorage {
        size: k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
        storage_class_name: Some("gold".into()),
    });
    let p = plan(&cluster, &spark_app(), None, &Observed::default());
    let text: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
    assert!(
        p.statefulsets.is_empty() && p.headless.is_none(),
        "nothing is created for an invalid spec"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("spec.roles[0].members: 2 is outside") && e.contains("exactly 1")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("spec.roles[1].id: \"wrker\" is not a role")
                && e.contains("controller, worker, jupyter")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("spec.roles: role \"worker\"") && e.contains("at least 2")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("spec.roles[2].storage.storageClassName: storage class \"gold\" does not exist")),
        "{text:?}"
    );
    let ready = p.status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
    assert!(ready.message.contains("spec.roles[0].members"));
}

#[test]
fn members_configure_without_setup_and_wait_with_setup() {
    let cluster = spark_cluster();
    let app = spark_app();
    let first = plan(&cluster, &app, None, &Observed::default());
    let running = all_running(&first, "a");
    let second = plan(&cluster, &app, Some(&first.status), &running);
    // spark roles inherit a setup package: they stay `creating` (setup runs asynchronously, issue 9).
    assert!(
        second
            .status
            .roles
            .iter()
            .flat_map(|r| &r.members)
            .all(|m| m.state == MemberState::Creating)
    );
    assert_eq!(second.status.state, Some(ClusterState::Creating));
    // KubeDirector's rollup: new members joining; their containers run (no init container), so
    // nothing is initializing, waiting or down.
    let r = &second.status.member_state_rollup;
    assert!(
        r.membership_changing && !r.members_initializing && !r.members_waiting && !r.members_down,
        "{r:?}"
    );

    let cluster = centos_cluster();
    let app = centos_app();
    let first = plan(&cluster, &app, None, &Observed::default());
    assert!(first.status.member_state_rollup.members_waiting);
    let running = all_running(&first, "a");
    let second = plan(&cluster, &app, Some(&first.status), &running);
    let lb = second.status.roles.iter().find(|r| r.id == "LoadBalancer").expect("LB");
    // LoadBalancer has its own package; the others have none (default package is null).
    assert!(lb.members.iter().all(|m| m.state == MemberState::Creating));
    let others = second
        .status
        .roles
        .iter()
        .filter(|r| r.id != "LoadBalancer")
        .flat_map(|r| &r.members);
    assert!(
        others.clone().all(|m| m.state == MemberState::Configured),
        "{:?}",
        second.status.roles
    );
    assert!(
        others
            .clone()
            .all(|m| m.state_detail.last_configured_container.is_some())
    );
}

fn without_setup_app() -> ResolvedApp {
    let mut app = centos_app();
    for r in &mut app.roles {
        r.setup_package = None;
    }
    app
}

/// What lets a reconcile skip the watch event of its own `configured` write (`settles` in
/// reconcile/cluster.rs): planned again from the status it produced, with the same pods, the plan
/// is the same. (`settles` checks this at run time for each write; this shows it holds where it
/// matters most.)
#[test]
fn a_configured_status_planned_again_with_the_same_pods_is_a_fixpoint() {
    let cluster = centos_cluster();
    let app = without_setup_app();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let running = all_running(&p1, "a");
    let p2 = plan(&cluster, &app, Some(&p1.status), &running);
    assert_eq!(p2.status.state, Some(ClusterState::Configured));
    assert_ne!(p2.status, p1.status, "the configured write is a write");
    let p3 = plan(&cluster, &app, Some(&p2.status), &running);
    assert_eq!(p3.status, p2.status);
    assert_eq!(p3.statefulsets, p2.statefulsets);
    assert_eq!(p3.member_services, p2.member_services);
    assert_eq!(p3.headless, p2.headless);
    assert!(p3.guest_work.is_empty() && p3.delete_services.is_empty() && p3.delete_pvcs.is_empty());
}

#[test]
fn expand_shrink_and_restart() {
    let mut cluster = centos_cluster();
    let app = without_setup_app();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    assert_eq!(p2.status.state, Some(ClusterState::Configured));
    assert_eq!(
        p2.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str()),
        Some("True")
    );

    // Expand vanilla_centos 2 → 5: three new members, cluster updating, then configured.
    cluster.spec.roles[0].members = Some(5);
    let p3 = plan(&cluster, &app, Some(&p2.status), &all_running(&p1, "a"));
    assert_eq!(p3.status.state, Some(ClusterState::Updating));
    assert!(p3.status.member_state_rollup.membership_changing);
    let vc = |p: &ClusterPlan| {
        p.status
            .roles
            .iter()
            .find(|r| r.id == "vanilla_centos")
            .expect("role")
            .members
            .clone()
    };
    assert_eq!(vc(&p3).len(), 5);
    assert_eq!(
        vc(&p3).iter().map(|m| m.node_id).max(),
        Some(9),
        "ids continue from lastNodeID 6"
    );
    let p4 = plan(&cluster, &app, Some(&p3.status), &all_running(&p3, "a"));
    assert_eq!(p4.status.state, Some(ClusterState::Configured));

    // Shrink 5 → 2: the highest ordinals leave; their Service and PVC go once the pod is gone.
    cluster.spec.roles[0].members = Some(2);
    let observed = all_running(&p4, "a");
    let p5 = plan(&cluster, &app, Some(&p4.status), &observed);
    let leaving: Vec<_> = vc(&p5)
        .into_iter()
        .filter(|m| m.state == MemberState::Deleting)
        .collect();
    assert_eq!(leaving.len(), 3);
    let sts_name = &p5.status.roles[0].stateful_set;
    assert!(
        leaving
            .iter()
            .all(|m| names::ordinal_of(sts_name, &m.pod).is_some_and(|o| o >= 2))
    );
    assert_eq!(p5.status.state, Some(ClusterState::Updating));
    assert_eq!(p5.statefulsets[0].spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(p5.delete_services.is_empty(), "pods still exist");
    let mut gone = observed.clone();
    for m in &leaving {
        gone.pods.remove(&m.pod);
        gone.services.insert(names::member_service(&m.pod));
    }
    let p6 = plan(&cluster, &app, Some(&p5.status), &gone);
    assert_eq!(p6.delete_services.len(), 3);
    for m in &leaving {
        gone.services.remove(&names::member_service(&m.pod));
    }
    let p7 = plan(&cluster, &app, Some(&p6.status), &gone);
    assert_eq!(vc(&p7).len(), 2);
    assert_eq!(p7.status.state, Some(ClusterState::Configured));

    // A new container id on a configured member: set up again.
    let mut restarted = gone.clone();
    let first_pod = vc(&p7)[0].pod.clone();
    restarted.pods.insert(
        first_pod.clone(),
        PodFacts {
            running: true,
            ready: true,
            container_id: Some("kwok://new".into()),
            ..Default::default()
        },
    );
    let p8 = plan(&cluster, &app, Some(&p7.status), &restarted);
    let m = vc(&p8).into_iter().find(|m| m.pod == first_pod).expect("member");
    assert_eq!(
        m.state,
        MemberState::Configured,
        "without setup it is configured again at once"
    );
    assert_eq!(m.state_detail.last_configured_container.as_deref(), Some("kwok://new"));
}

#[test]
fn removed_role_is_torn_down() {
    let mut cluster = centos_cluster();
    let app = without_setup_app();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    let removed = cluster.spec.roles.remove(2); // v1.node has cardinality 3 and no ports
    assert_eq!(removed.id, "v1.node");
    let mut app_optional = app.clone();
    if let Some(r) = app_optional.roles.iter_mut().find(|r| r.id == "v1.node") {
        r.cardinality = super::cardinality::Cardinality { min: 0, scalable: true };
    }
    let p3 = plan(&cluster, &app_optional, Some(&p2.status), &all_running(&p1, "a"));
    let sts_name = p2
        .status
        .roles
        .iter()
        .find(|r| r.id == "v1.node")
        .map(|r| r.stateful_set.clone())
        .expect("sts");
    assert_eq!(p3.delete_statefulsets, vec![sts_name]);
    let p4 = plan(&cluster, &app_optional, Some(&p3.status), &Observed::default());
    assert!(
        p4.status.roles.iter().all(|r| r.id != "v1.node"),
        "role dropped once its pods are gone"
    );
}

#[test]
fn unchanged_input_gives_identical_children() {
    let cluster = spark_cluster();
    let a = plan(&cluster, &spark_app(), None, &Observed::default());
    let b = plan(&cluster, &spark_app(), Some(&a.status), &Observed::default());
    let hash = |s: &StatefulSet| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::SPEC_HASH))
            .cloned()
    };
    for (x, y) in a.statefulsets.iter().zip(&b.statefulsets) {
        assert_eq!(hash(x), hash(y));
        assert!(hash(x).is_some());
    }
    let mut changed = cluster.clone();
    changed.spec.roles[1].env.push(k8s_openapi::api::core::v1::EnvVar {
        name: "X".into(),
        value: Some("1".into()),
        ..Default::default()
    });
    let c = plan(&changed, &spark_app(), Some(&a.status), &Observed::default());
    assert_ne!(
        hash(&a.statefulsets[1]),
        hash(&c.statefulsets[1]),
        "a template change is rolled out"
    );
    assert_eq!(hash(&a.statefulsets[0]), hash(&c.statefulsets[0]));
}

#[test]
fn orphaned_member_services_are_removed() {
    // A crash after a new member's Service was applied but before the member reached status: the
    // Service exists, the member does not, and its pod is gone (the spec shrank again meanwhile).
    let cluster = centos_cluster();
    let app = without_setup_app();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    let mut observed = all_running(&p1, "a");
    let sts = p1
        .status
        .roles
        .iter()
        .find(|r| r.id == "vanilla_centos")
        .expect("role")
        .stateful_set
        .clone();
    let orphan = names::member_service(&names::pod(&sts, 7));
    observed.services.insert(orphan.clone());
    let known = names::member_service(&names::pod(&sts, 0));
    observed.services.insert(known.clone());
    let orphan_pvc = names::pvc(names::STORAGE_CLAIM, &names::pod(&sts, 7));
    observed.pvcs.insert(orphan_pvc.clone());
    let settled = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    let p2 = plan(&cluster, &app, Some(&settled.status), &observed);
    assert_eq!(p2.delete_services, vec![orphan.clone()], "only the orphan goes");
    assert_eq!(p2.delete_pvcs, vec![orphan_pvc], "and its PVC");
    assert_eq!(
        p2.status.state,
        Some(ClusterState::Updating),
        "not configured while orphans remain"
    );

    // While its pod still exists (the StatefulSet is scaling down), the Service stays for now.
    observed.pods.insert(
        names::pod(&sts, 7),
        PodFacts {
            running: true,
            ..Default::default()
        },
    );
    let p3 = plan(&cluster, &app, Some(&settled.status), &observed);
    assert!(p3.delete_services.is_empty());
}

#[test]
fn configured_generation_as_readers_judge_it() {
    use super::status::{configured_generation, is_configured};
    let mut cluster = centos_cluster();
    cluster.metadata.generation = Some(1);
    let app = without_setup_app();
    let p1 = plan(&cluster, &app, None, &Observed::default());
    cluster.status = Some(p1.status.clone());
    assert_eq!(configured_generation(&cluster), None, "members still being created");
    let p2 = plan(&cluster, &app, Some(&p1.status), &all_running(&p1, "a"));
    cluster.status = Some(p2.status.clone());
    assert_eq!(configured_generation(&cluster), Some(1));
    assert!(is_configured(&cluster));
    // A newer spec not yet observed: configured, but not at the current generation.
    cluster.metadata.generation = Some(2);
    assert!(!is_configured(&cluster));
    // Members are counted once every role gives its number ("LoadBalancer" takes the app's default).
    cluster.metadata.generation = Some(1);
    let counts: BTreeMap<String, i32> = p2
        .status
        .roles
        .iter()
        .map(|r| (r.id.clone(), r.members.len() as i32))
        .collect();
    for r in &mut cluster.spec.roles {
        r.members = counts.get(&r.id).copied();
    }
    assert_eq!(configured_generation(&cluster), Some(1), "every count matches");
    cluster.spec.roles[0].members = cluster.spec.roles[0].members.map(|m| m + 1);
    assert_eq!(
        configured_generation(&cluster),
        None,
        "one member more than the status lists"
    );
}

/// Each kd-global-config field the planner reads, set away from its default, shows in what it
/// builds (the admission-side fields have their own tests: requiredSecretPrefix in
/// admission::cluster, masterEncryptionKey's generation in tests/integration/admission.rs).
#[test]
fn every_kd_global_config_field_reaches_what_the_plan_builds() {
    use crate::api::config::KubeDirectorConfigSpec;
    let master = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let map = |k: &str, v: &str| Some(BTreeMap::from([(k.to_string(), v.to_string())]));
    let config = KubeDirectorConfigSpec {
        default_storage_class_name: Some("fast".into()),
        default_service_type: Some(crate::api::common::ServiceType::NodePort),
        default_naming_scheme: Some(crate::api::common::NamingScheme::CrNameRole),
        native_systemd_support: Some(true),
        cluster_svc_domain_base: Some(".corp.example".into()),
        master_encryption_key: Some(master.into()),
        pod_labels: map("team", "data"),
        pod_annotations: map("example.com/audit", "on"),
        service_labels: map("exposure", "internal"),
        service_annotations: map("lb.example.com/kind", "nlb"),
        ..Default::default()
    };
    let settings = Settings::from_config(Some(&config));
    let mut app = centos_app();
    app.systemd_required = true;
    for r in &mut app.roles {
        r.setup_package = Some(crate::api::app::SetupPackage {
            package_url: "file:///pkg.tgz".into(),
            use_new_setup_layout: None,
        });
    }
    let mut cluster = centos_cluster();
    let sealed = super::secretkeys::encrypt(master, [4; super::secretkeys::NONCE_LEN], "hunter2").expect("seal");
    let role = &mut cluster.spec.roles[0];
    role.storage = Some(serde_json::from_value(serde_json::json!({"size": "1Gi"})).expect("storage"));
    role.secret_keys =
        vec![serde_json::from_value(serde_json::json!({"name": "pw", "encryptedValue": sealed})).expect("key")];
    role.shared_memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("256Mi".into()));
    cluster.metadata.name = Some("centos-one".into());
    let connections = super::connections::empty();
    let plan_at = |prev, observed| plan_in(&cluster, &app, prev, observed, &connections, &settings);
    let empty = Observed::default();
    let p1 = plan_at(None, &empty);
    assert!(p1.errors.is_empty(), "{:?}", p1.errors);
    // defaultNamingScheme: CrNameRole names.
    let s = sts(&p1, "centos-one-vanilla-centos");
    // defaultStorageClassName: the claim's class.
    let claim = &s
        .spec
        .as_ref()
        .expect("spec")
        .volume_claim_templates
        .as_ref()
        .expect("claims")[0];
    assert_eq!(
        claim.spec.as_ref().and_then(|c| c.storage_class_name.as_deref()),
        Some("fast")
    );
    // podLabels, podAnnotations: on the pod template.
    let meta = s
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("template metadata");
    assert_eq!(
        meta.labels.as_ref().and_then(|l| l.get("team")).map(String::as_str),
        Some("data")
    );
    assert_eq!(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get("example.com/audit"))
            .map(String::as_str),
        Some("on")
    );
    // nativeSystemdSupport: a systemd app gets no host cgroup mount.
    let pod = s.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    let volumes: Vec<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert!(!volumes.contains(&"cgroupfs"), "{volumes:?}");
    // forceSharedMemorySizeSupport unset: sharedMemory is honoured all the same (a newer Kubernetes).
    let shm = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kd-shm")
        .expect("kd-shm");
    let dir = shm.empty_dir.as_ref().expect("emptyDir");
    assert_eq!(dir.medium.as_deref(), Some("Memory"));
    assert_eq!(dir.size_limit.as_ref().map(|q| q.0.as_str()), Some("256Mi"));
    // defaultServiceType, serviceLabels, serviceAnnotations: on the member Services.
    let running = all_running(&p1, "a");
    let p2 = plan_at(Some(&p1.status), &running);
    let svc = p2.member_services.first().expect("member service");
    assert_eq!(svc.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("NodePort"));
    assert_eq!(
        svc.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("exposure"))
            .map(String::as_str),
        Some("internal")
    );
    assert_eq!(
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("lb.example.com/kind"))
            .map(String::as_str),
        Some("nlb")
    );
    // clusterSvcDomainBase and masterEncryptionKey: in configmeta (the domain; the opened key).
    let running = all_running(&p2, "a");
    let p3 = plan_at(Some(&p2.status), &running);
    let work = p3
        .guest_work
        .iter()
        .find(|w| w.pod.contains("vanilla-centos"))
        .expect("setup work");
    let domain = work.configmeta["node"]["domain"].as_str().unwrap_or_default();
    assert!(domain.ends_with(".ns.corp.example"), "{domain}");
    let recorded = p3.status.roles.iter().find(|r| r.id == "vanilla_centos").expect("role");
    assert_eq!(
        recorded.encrypted_secret_keys.as_ref().and_then(|k| k.get("pw")),
        cluster.spec.roles[0].secret_keys[0].encrypted_value.as_ref(),
        "status.roles[].encryptedSecretKeys holds the sealed value, never the plaintext"
    );
    let secret = &work.configmeta["nodegroups"]["1"]["roles"]["vanilla_centos"]["secret_keys"]["pw"];
    assert_eq!(
        secret, "hunter2",
        "{}",
        work.configmeta["nodegroups"]["1"]["roles"]["vanilla_centos"]
    );
}

/// `lastKnownContainerState` and `memberStateRollup` with KubeDirector's meanings.
#[test]
fn container_states_and_rollup_as_kubedirector_reports_them() {
    use super::members::{ContainerPhase, container_state};
    let pod = |app, ready, init| PodFacts {
        running: true,
        app,
        ready_condition: ready,
        init_running: init,
        ..Default::default()
    };
    assert_eq!(container_state(None, false, false), "absent");
    assert_eq!(container_state(Some(&pod(None, None, false)), false, false), "absent");
    let running = pod(Some(ContainerPhase::Running), Some(true), false);
    assert_eq!(container_state(Some(&running), false, false), "running");
    assert_eq!(
        container_state(Some(&running), true, false),
        "unresponsive",
        "notifications queued"
    );
    assert_eq!(
        container_state(Some(&running), false, true),
        "unresponsive",
        "configmeta of an older spec"
    );
    let not_ready = pod(Some(ContainerPhase::Running), Some(false), false);
    assert_eq!(container_state(Some(&not_ready), false, false), "unresponsive");
    let no_condition = pod(Some(ContainerPhase::Running), None, false);
    assert_eq!(container_state(Some(&no_condition), false, false), "unknown");
    let init = pod(Some(ContainerPhase::Waiting), None, true);
    assert_eq!(container_state(Some(&init), false, false), "initializing");
    let waiting = pod(Some(ContainerPhase::Waiting), None, false);
    assert_eq!(container_state(Some(&waiting), false, false), "waiting");
    let ended = pod(Some(ContainerPhase::Terminated), None, false);
    assert_eq!(container_state(Some(&ended), false, false), "terminated");

    // Through the plan: pods whose init container runs are initializing; a configured member
    // whose container ended is down; a pending member without a pod is waiting.
    let cluster = centos_cluster();
    let app = without_setup_app();
    let first = plan(&cluster, &app, None, &Observed::default());
    let r = &first.status.member_state_rollup;
    assert!(r.membership_changing && r.members_waiting && !r.members_down, "{r:?}");
    let mut observed = all_running(&first, "a");
    let second = plan(&cluster, &app, Some(&first.status), &observed);
    assert_eq!(second.status.state, Some(ClusterState::Configured));
    assert_eq!(second.status.member_state_rollup, Default::default());
    let pods: Vec<String> = observed.pods.keys().cloned().collect();
    if let Some(p) = observed.pods.get_mut(&pods[0]) {
        p.app = Some(ContainerPhase::Terminated);
    }
    if let Some(p) = observed.pods.get_mut(&pods[1]) {
        p.app = Some(ContainerPhase::Waiting);
        p.init_running = true;
    }
    let third = plan(&cluster, &app, Some(&second.status), &observed);
    let r = &third.status.member_state_rollup;
    assert!(
        r.members_down && r.members_initializing && !r.membership_changing,
        "{r:?}"
    );
    let states: Vec<String> = third
        .status
        .roles
        .iter()
        .flat_map(|r| &r.members)
        .filter(|m| pods[..2].contains(&m.pod))
        .filter_map(|m| m.state_detail.last_known_container_state.clone())
        .collect();
    assert_eq!(states.len(), 2);
    assert!(states.contains(&"terminated".to_string()) && states.contains(&"initializing".to_string()));
}

#[test]
fn a_new_clusters_first_status_is_held_until_configured_only_while_nothing_must_be_recorded() {
    use std::time::Duration;
    let (grace, young) = (Duration::from_secs(60), Duration::from_secs(5));
    let cluster = centos_cluster();
    let app = without_setup_app();
    let first = plan(&cluster, &app, None, &Observed::default());
    assert_eq!(first.status.state, Some(ClusterState::Creating));
    assert_eq!(
        hold_first_status(None, &first, young, grace),
        Some(Duration::from_secs(55)),
        "creating, nothing to record: held for the rest of the grace"
    );
    assert_eq!(hold_first_status(None, &first, grace, grace), None, "the grace is over");
    assert_eq!(
        hold_first_status(None, &first, young, Duration::ZERO),
        None,
        "a zero grace writes at once"
    );
    assert_eq!(
        hold_first_status(Some(&first.status), &first, young, grace),
        None,
        "only the first status is held"
    );
    // Held, the next plan starts from no status again: it must want the same children, and reach
    // `configured` in one step once the pods run.
    let running = all_running(&first, "a");
    let again = plan(&cluster, &app, None, &running);
    assert_eq!(again.statefulsets, first.statefulsets);
    assert_eq!(again.member_services, first.member_services);
    assert_eq!(again.headless, first.headless);
    assert_eq!(again.status.state, Some(ClusterState::Configured));
    assert_eq!(
        hold_first_status(None, &again, young, grace),
        None,
        "configured: written"
    );

    // A setup package queues guest work once the pods run: that needs a recorded status.
    let (cluster, app) = (spark_cluster(), spark_app());
    let first = plan(&cluster, &app, None, &Observed::default());
    let running = all_running(&first, "a");
    let setup = plan(&cluster, &app, None, &running);
    assert!(!setup.guest_work.is_empty());
    assert_eq!(hold_first_status(None, &setup, young, grace), None);

    // Auth tokens are drawn per plan and go into the member Services: written at once.
    let mut tokened = plan(&centos_cluster(), &without_setup_app(), None, &Observed::default());
    tokened.status.roles[0].members[0].auth_token = Some("t".to_string());
    assert_eq!(hold_first_status(None, &tokened, young, grace), None);
}

#[test]
fn every_child_carries_the_clusters_bucket_but_no_selector_does() {
    let p = plan(&spark_cluster(), &spark_app(), None, &Observed::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let bucket = labels::shard_bucket("ns", "spark-one").to_string();
    assert!(labels::shard_bucket("ns", "spark-one") < labels::BUCKETS);
    assert_ne!(
        labels::shard_bucket("ns", "spark-one"),
        labels::shard_bucket("other", "spark-one"),
        "the namespace is part of the key"
    );
    let has = |l: Option<&BTreeMap<String, String>>| l.and_then(|l| l.get(labels::SHARD_BUCKET)) == Some(&bucket);
    let headless = p.headless.as_ref().expect("headless");
    assert!(has(headless.metadata.labels.as_ref()), "headless Service");
    assert!(!p.member_services.is_empty());
    for svc in &p.member_services {
        assert!(has(svc.metadata.labels.as_ref()), "{:?}", svc.metadata.name);
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
        assert!(!selector.is_some_and(|s| s.contains_key(labels::SHARD_BUCKET)));
    }
    let mut claims = 0;
    for s in &p.statefulsets {
        let spec = s.spec.as_ref().expect("spec");
        assert!(has(s.metadata.labels.as_ref()), "StatefulSet {:?}", s.metadata.name);
        assert!(
            has(spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref())),
            "pod template"
        );
        assert!(
            !spec
                .selector
                .match_labels
                .as_ref()
                .is_some_and(|m| m.contains_key(labels::SHARD_BUCKET)),
            "the selector stays KubeDirector's: StatefulSets made without the label keep theirs"
        );
        for c in spec.volume_claim_templates.iter().flatten() {
            assert!(has(c.metadata.labels.as_ref()), "claim template {:?}", c.metadata.name);
            claims += 1;
        }
    }
    assert!(claims >= 3, "storage and block claims were checked: {claims}");
    // A user's label of the same key does not move a child to another bucket.
    let mut c = spark_cluster();
    for r in &mut c.spec.roles {
        r.pod_labels = Some(BTreeMap::from([(labels::SHARD_BUCKET.to_string(), "7".to_string())]));
        r.service_labels = r.pod_labels.clone();
    }
    let p = plan(&c, &spark_app(), None, &Observed::default());
    assert!(p.statefulsets.iter().all(|s| {
        has(s
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref()))
    }));
    assert!(p.member_services.iter().all(|s| has(s.metadata.labels.as_ref())));
}
