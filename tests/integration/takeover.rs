//! Takeover of clusters that KubeDirector itself built (`../shared/kubedirector/takeover/`): every
//! object is replayed onto the test bed as the fixture README describes, this operator starts, and
//! nothing KubeDirector made may be restarted, recreated, rewritten or forgotten. Then each cluster
//! is expanded by one member, shrunk back and deleted, continuing KubeDirector's names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use kubedirector::api::KubeDirectorCluster;
use kubedirector::api::cluster::{ClusterState, KubeDirectorClusterStatus, MemberState};

use crate::operator::Operator;
use crate::testbed;

/// Every fixture; `connected` names `uid-plain`, so it comes after it.
use crate::common::TAKEOVER_CLUSTERS as CLUSTERS;
const CLUSTER_LABEL: &str = "kubedirector.hpe.com/kdcluster";
/// A claim of `uid-storage` replayed without its owner.
const UNOWNED_PVC: &str = "p-kdss-jmn5w-1";

fn fixture(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../shared/kubedirector/takeover/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    list["items"].as_array().cloned().expect("a v1 List")
}

fn api<K: Resource<DynamicType = ()>>(client: &Client, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<K>(&());
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The metadata a create must not carry (README, "Rules for every object").
fn fresh(obj: &Value, ns: Option<&str>) -> Value {
    let mut o = obj.clone();
    let meta = o["metadata"].as_object_mut().expect("metadata");
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        meta.remove(k);
    }
    match ns {
        Some(ns) => meta.insert("namespace".to_string(), json!(ns)),
        None => meta.remove("namespace"),
    };
    o.as_object_mut().expect("object").remove("status");
    o
}

fn owned_by(obj: &mut Value, cr_uid: &str) {
    for r in obj["metadata"]["ownerReferences"].as_array_mut().into_iter().flatten() {
        if r["kind"] == "KubeDirectorCluster" {
            r["uid"] = json!(cr_uid);
        }
    }
}

fn drop_bind_annotations(obj: &mut Value) {
    if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
        a.retain(|k, _| !k.starts_with("pv.kubernetes.io/"));
    }
}

async fn create(api: &Api<DynamicObject>, obj: &Value) -> DynamicObject {
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
    let name = dynamic.name_any();
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(o) => o,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await.expect("existing object"),
        Err(e) => panic!("create {name}: {e}"),
    }
}

/// What a cluster was before the operator started, to compare with afterwards.
#[derive(Debug)]
struct Recorded {
    name: String,
    pod_uids: BTreeMap<String, String>,
    sts_generations: BTreeMap<String, i64>,
    services: BTreeSet<String>,
    pvcs: BTreeSet<String>,
    service_specs: BTreeMap<String, Value>,
    status: KubeDirectorClusterStatus,
}

/// Replays one fixture into `ns` (apps into `system_ns`), as the fixture README says.
async fn replay(client: &Client, name: &str, ns: &str, system_ns: &str) -> Recorded {
    let items = fixture(name);
    let of = |kind: &str| items.iter().filter(|o| o["kind"] == kind).cloned().collect::<Vec<_>>();
    testbed::kd_local_storage_class(client).await;
    for app in of("KubeDirectorApp") {
        create(
            &testbed::kd_api(client, system_ns, "KubeDirectorApp"),
            &fresh(&app, Some(system_ns)),
        )
        .await;
    }
    let cr_fixture = of("KubeDirectorCluster").pop().expect("the cluster");
    let crs = testbed::kd_api(client, ns, "KubeDirectorCluster");
    let cr = create(&crs, &fresh(&cr_fixture, Some(ns))).await;
    let uid = cr.uid().expect("cr uid");

    // PVCs first, then their PVs bound to the new claim uids (README step 3b); PVs are renamed per
    // namespace so that no other test's claims can take them.
    let pv_name = |old: &str| format!("{ns}-{old}");
    let pvc_api = api::<PersistentVolumeClaim>(client, Some(ns));
    let mut pvc_uids = BTreeMap::new();
    for pvc in of("PersistentVolumeClaim") {
        let mut p = fresh(&pvc, Some(ns));
        owned_by(&mut p, &uid);
        drop_bind_annotations(&mut p);
        // As if KubeDirector's PVC webhook (failurePolicy Ignore) had been down for this claim.
        if p["metadata"]["name"] == UNOWNED_PVC {
            p["metadata"].as_object_mut().expect("meta").remove("ownerReferences");
        }
        if let Some(v) = p["spec"]["volumeName"].as_str().map(pv_name) {
            p["spec"]["volumeName"] = json!(v);
        }
        let made = create(&pvc_api, &p).await;
        pvc_uids.insert(made.name_any(), made.uid().expect("pvc uid"));
    }
    for pv in of("PersistentVolume") {
        let mut p = fresh(&pv, None);
        drop_bind_annotations(&mut p);
        let old = pv["metadata"]["name"].as_str().expect("pv name");
        p["metadata"]["name"] = json!(pv_name(old));
        p["spec"]["hostPath"] = json!({"path": format!("/tmp/{}", pv_name(old))});
        let claim = pv["spec"]["claimRef"]["name"].as_str().expect("bound PV").to_string();
        p["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns,
            "name": claim, "uid": pvc_uids.get(&claim).expect("claim replayed first")});
        create(&api::<PersistentVolume>(client, None), &p).await;
    }

    // Services: the headless one keeps `None`; member Services get new addresses and node ports.
    let svc_api = api::<Service>(client, Some(ns));
    for svc in of("Service") {
        let mut s = fresh(&svc, Some(ns));
        owned_by(&mut s, &uid);
        if s["spec"]["clusterIP"] != "None" {
            let spec = s["spec"].as_object_mut().expect("spec");
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                p.as_object_mut().expect("port").remove("nodePort");
            }
        }
        create(&svc_api, &s).await;
    }

    // Pods before their StatefulSets, as orphans, with the captured status written at once.
    let pod_api = api::<Pod>(client, Some(ns));
    for pod in of("Pod") {
        let mut p = fresh(&pod, Some(ns));
        p["metadata"].as_object_mut().expect("meta").remove("ownerReferences");
        let made = create(&pod_api, &p).await;
        let status = json!({"status": pod["status"].clone()});
        pod_api
            .patch_status(&made.name_any(), &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("pod status");
    }
    let sts_api = api::<StatefulSet>(client, Some(ns));
    for sts in of("StatefulSet") {
        let mut s = fresh(&sts, Some(ns));
        owned_by(&mut s, &uid);
        create(&sts_api, &s).await;
    }

    // The members' recorded containers are the pods' app containers now running (kwok may have
    // given them ids of the new pod uids), then the status as KubeDirector wrote it.
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let mut status = cr_fixture["status"].clone();
    for role in status["roles"].as_array_mut().into_iter().flatten() {
        for m in role["members"].as_array_mut().into_iter().flatten() {
            let pod_name = m["pod"].as_str().expect("pod").to_string();
            let running = |p: Option<&Pod>| app_container(p).is_some();
            testbed::wait_for(&format!("pod {pod_name} running"), Duration::from_secs(30), async {
                await_condition(pods.clone(), &pod_name, running).await
            })
            .await
            .expect("watch pod");
            let pod = pods.get(&pod_name).await.expect("pod");
            if m["stateDetail"].get("lastConfiguredContainer").is_some() {
                m["stateDetail"]["lastConfiguredContainer"] = json!(app_container(Some(&pod)));
            }
        }
    }
    crs.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
        .await
        .expect("cluster status");

    // Settled: every StatefulSet has adopted its pods and seen its spec.
    let typed_sts = Api::<StatefulSet>::namespaced(client.clone(), ns);
    for sts in of("StatefulSet") {
        let sts_name = sts["metadata"]["name"].as_str().expect("name").to_string();
        let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        let settled = move |s: Option<&StatefulSet>| {
            s.is_some_and(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.observed_generation == s.metadata.generation && st.ready_replicas.unwrap_or(0) == replicas
                })
            })
        };
        testbed::wait_for(
            &format!("StatefulSet {sts_name} settled"),
            Duration::from_secs(30),
            async { await_condition(typed_sts.clone(), &sts_name, settled).await },
        )
        .await
        .expect("watch sts");
    }
    record(client, name, ns).await
}

fn app_container(p: Option<&Pod>) -> Option<String> {
    p?.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "app" && c.ready)?
        .container_id
        .clone()
}

async fn labelled<K>(client: &Client, ns: &str, cluster: &str) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let selector = format!("{CLUSTER_LABEL}={cluster}");
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list children")
        .items
}

/// Service spec without what the API server allocates.
fn service_spec(s: &Service) -> Value {
    let mut v = serde_json::to_value(&s.spec).expect("spec");
    if let Some(o) = v.as_object_mut() {
        o.remove("clusterIP");
        o.remove("clusterIPs");
    }
    for p in v["ports"].as_array_mut().into_iter().flatten() {
        p.as_object_mut().expect("port").remove("nodePort");
    }
    v
}

async fn record(client: &Client, name: &str, ns: &str) -> Recorded {
    let pods = labelled::<Pod>(client, ns, name).await;
    let sts = labelled::<StatefulSet>(client, ns, name).await;
    let svcs = labelled::<Service>(client, ns, name).await;
    let pvcs = labelled::<PersistentVolumeClaim>(client, ns, name).await;
    let cr = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("cluster");
    Recorded {
        name: name.to_string(),
        pod_uids: pods.iter().map(|p| (p.name_any(), p.uid().expect("uid"))).collect(),
        sts_generations: sts
            .iter()
            .map(|s| (s.name_any(), s.metadata.generation.expect("generation")))
            .collect(),
        services: svcs.iter().map(|s| s.name_any()).collect(),
        pvcs: pvcs.iter().map(|p| p.name_any()).collect(),
        service_specs: svcs.iter().map(|s| (s.name_any(), service_spec(s))).collect(),
        status: cr.status.expect("status"),
    }
}

/// Processed by this operator at the current generation: state `configured`, every member settled.
fn settled(c: &KubeDirectorCluster, members: usize) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.state == Some(ClusterState::Configured)
            && s.observed_generation == c.metadata.generation
            && s.roles.iter().map(|r| r.members.len()).sum::<usize>() == members
            && s.roles
                .iter()
                .flat_map(|r| &r.members)
                .all(|m| matches!(m.state, MemberState::Configured | MemberState::ConfigError))
    })
}

async fn wait_settled(client: &Client, ns: &str, name: &str, members: usize, log: &std::path::Path) {
    let api = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns);
    let what = format!("{name} configured with {members} members (log: {})", log.display());
    testbed::wait_for(
        &what,
        Duration::from_secs(60),
        testbed::cluster_until(&api, name, move |c| settled(c, members)),
    )
    .await;
}

/// One member as status records it: pod, Service, PVC, node id, state.
type MemberIdentity = (String, String, Option<String>, i64, MemberState);

/// Member identity as status records it, by role and StatefulSet: what a takeover must keep.
fn identity(s: &KubeDirectorClusterStatus) -> Vec<(String, String, Vec<MemberIdentity>)> {
    s.roles
        .iter()
        .map(|r| {
            let members = r
                .members
                .iter()
                .map(|m| (m.pod.clone(), m.service.clone(), m.pvc.clone(), m.node_id, m.state))
                .collect();
            (r.id.clone(), r.stateful_set.clone(), members)
        })
        .collect()
}

fn check_untouched(before: &Recorded, after: &Recorded) {
    let name = &before.name;
    assert_eq!(before.pod_uids, after.pod_uids, "{name}: every pod kept (same uids)");
    assert_eq!(
        before.sts_generations, after.sts_generations,
        "{name}: no StatefulSet created, deleted or changed (generations)"
    );
    assert_eq!(before.services, after.services, "{name}: no Service created or deleted");
    assert_eq!(before.pvcs, after.pvcs, "{name}: no PVC created or deleted");
    assert_eq!(
        before.service_specs, after.service_specs,
        "{name}: no Service spec rewritten"
    );
    assert_eq!(
        identity(&before.status),
        identity(&after.status),
        "{name}: roles and members as recorded"
    );
    assert_eq!(
        before.status.last_node_id, after.status.last_node_id,
        "{name}: lastNodeID"
    );
    assert_eq!(
        before.status.cluster_service, after.status.cluster_service,
        "{name}: headless Service"
    );
    assert_eq!(
        before.status.spec_generation_to_process, after.status.spec_generation_to_process,
        "{name}: specGenerationToProcess kept"
    );
    for (b, a) in before.status.roles.iter().zip(&after.status.roles) {
        for (bm, am) in b.members.iter().zip(&a.members) {
            assert_eq!(
                bm.state_detail.last_configured_container, am.state_detail.last_configured_container,
                "{name}: {} not set up again",
                bm.pod
            );
        }
    }
}

async fn set_members(client: &Client, ns: &str, name: &str, role: usize, members: i64) {
    let api = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns);
    crate::reconcile::set_role_members(&api, name, role, members as i32).await;
}

/// Expand the cluster's first role by one (a new member named KubeDirector's way, node id
/// lastNodeID + 1), shrink it back, delete the cluster: nothing left.
async fn expand_shrink_delete(client: &Client, ns: &str, before: &Recorded, log: &std::path::Path) {
    let name = before.name.as_str();
    let crs = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns);
    let cr = crs.get(name).await.expect("cluster");
    let spec_members = cr.spec.roles[0].members.unwrap_or(0) as usize;
    let total: usize = cr.spec.roles.iter().map(|r| r.members.unwrap_or(0) as usize).sum();
    let status = cr.status.expect("status");
    let role = status
        .roles
        .iter()
        .find(|r| r.id == cr.spec.roles[0].id)
        .expect("first role in status");
    let sts = role.stateful_set.clone();
    let new_pod = format!("{sts}-{spec_members}");
    let expected_service = if role.members.first().is_some_and(|m| m.service == m.pod) {
        new_pod.clone()
    } else {
        format!("s-{new_pod}")
    };
    set_members(client, ns, name, 0, spec_members as i64 + 1).await;
    wait_settled(client, ns, name, total + 1, log).await;
    let grown = crs.get(name).await.expect("cluster").status.expect("status");
    let added: Vec<_> = grown
        .roles
        .iter()
        .flat_map(|r| &r.members)
        .filter(|m| !status.roles.iter().flat_map(|r| &r.members).any(|o| o.pod == m.pod))
        .collect();
    assert_eq!(added.len(), 1, "{name}: exactly one new member: {added:?}");
    assert_eq!(added[0].pod, new_pod, "{name}: the next ordinal of {sts}");
    assert_eq!(
        added[0].node_id,
        status.last_node_id + 1,
        "{name}: node id lastNodeID+1"
    );
    assert_eq!(
        added[0].service, expected_service,
        "{name}: member Service of the cluster's scheme"
    );
    assert_eq!(grown.last_node_id, status.last_node_id + 1);
    let pods_now: BTreeMap<String, String> = labelled::<Pod>(client, ns, name)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().expect("uid")))
        .collect();
    for (pod, uid) in &before.pod_uids {
        assert_eq!(pods_now.get(pod), Some(uid), "{name}: {pod} untouched by the expand");
    }

    set_members(client, ns, name, 0, spec_members as i64).await;
    wait_settled(client, ns, name, total, log).await;
    let gone = |what: &str, names: &BTreeSet<String>| {
        assert!(
            !names.contains(&new_pod),
            "{name}: the removed member's {what} is gone: {names:?}"
        );
    };
    let pods: BTreeSet<String> = labelled::<Pod>(client, ns, name)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    gone("pod", &pods);
    let svcs: BTreeSet<String> = labelled::<Service>(client, ns, name)
        .await
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(svcs, before.services, "{name}: Services back to KubeDirector's");

    crs.delete(name, &DeleteParams::default())
        .await
        .expect("delete cluster");
    let what = format!("{name} and every child gone (log: {})", log.display());
    testbed::wait_for(&what, Duration::from_secs(60), async {
        loop {
            let cr_left = crs.get_opt(name).await.expect("get").is_some();
            let left = labelled::<StatefulSet>(client, ns, name).await.len()
                + labelled::<Service>(client, ns, name).await.len()
                + labelled::<Pod>(client, ns, name).await.len()
                + labelled::<PersistentVolumeClaim>(client, ns, name).await.len();
            if !cr_left && left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
}

/// `uid-plain` loses its `worker` role (its StatefulSet, Services and members go, the other role is
/// untouched), then gets it back: a new StatefulSet, members numbered on from lastNodeID.
async fn remove_and_add_a_role(client: &Client, ns: &str, before: &Recorded, log: &std::path::Path) {
    let name = before.name.as_str();
    assert_eq!(name, "uid-plain");
    let crs = Api::<KubeDirectorCluster>::namespaced(client.clone(), ns);
    let cr = crs.get(name).await.expect("cluster");
    let worker = cr
        .spec
        .roles
        .iter()
        .find(|r| r.id == "worker")
        .cloned()
        .expect("worker role");
    let old_sts = before
        .status
        .roles
        .iter()
        .find(|r| r.id == "worker")
        .expect("worker status")
        .stateful_set
        .clone();
    let remove = json!([{"op": "remove", "path": "/spec/roles/1"}]);
    crs.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(remove).expect("patch")),
    )
    .await
    .expect("remove the role");
    wait_settled(client, ns, name, 1, log).await;
    let sts: BTreeSet<String> = labelled::<StatefulSet>(client, ns, name)
        .await
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert!(
        !sts.contains(&old_sts),
        "the removed role's StatefulSet is gone: {sts:?}"
    );
    let pods: BTreeMap<String, String> = labelled::<Pod>(client, ns, name)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().expect("uid")))
        .collect();
    let controller_pod = &before.status.roles[0].members[0].pod;
    assert_eq!(
        pods.get(controller_pod),
        before.pod_uids.get(controller_pod),
        "the other role's pod kept"
    );
    assert_eq!(pods.len(), 1);

    let add = json!([{"op": "add", "path": "/spec/roles/-", "value": worker}]);
    crs.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(add).expect("patch")),
    )
    .await
    .expect("add the role back");
    wait_settled(client, ns, name, 3, log).await;
    let status = crs.get(name).await.expect("cluster").status.expect("status");
    let role = status.roles.iter().find(|r| r.id == "worker").expect("worker again");
    assert!(role.stateful_set.starts_with("kdss-") && role.stateful_set != old_sts);
    let ids: Vec<i64> = role.members.iter().map(|m| m.node_id).collect();
    let last = before.status.last_node_id;
    assert_eq!(ids, [last + 1, last + 2], "numbered on from lastNodeID");
    assert!(role.members.iter().all(|m| m.service == format!("s-{}", m.pod)));
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn clusters_built_by_kubedirector_are_taken_over_without_restarting_a_pod() {
    let client = testbed::client().await;
    testbed::install_crds(&client).await;
    let ns = testbed::namespace(&client, "takeover").await;
    let system_ns = testbed::namespace(&client, "takeover-sys").await;
    // kwok runs the operator's execs locally, so the setup package of `with-package`'s new member
    // runs (and fails: its package is not there), as it would in a real member.
    let _guests = crate::guest::Guests::start(&client, &ns, Vec::new());
    // One spare volume for the expand of `uid-storage` (the pool of kd-local volumes is shared).
    testbed::volumes(&client, "kd-local", &format!("{ns}-spare"), 1, "10Gi").await;
    let mut recorded = Vec::new();
    for name in CLUSTERS {
        recorded.push(replay(&client, name, &ns, &system_ns).await);
    }
    // Sharded, as the chart runs it: KubeDirector's pods and claims carry no shard bucket, so they
    // come from the watch of unlabelled children, and the new role's from the selected one.
    let selection = ["--context", "kwok-kd-1", "--watch-namespace", &ns, "--shards", "4"];
    let operator = Operator::start_with(&selection, &ns, &system_ns);
    let log = operator.log.clone();
    for before in &recorded {
        let members: usize = before.status.roles.iter().map(|r| r.members.len()).sum();
        let cr = Api::<KubeDirectorCluster>::namespaced(client.clone(), &ns)
            .get(&before.name)
            .await
            .expect("cluster");
        // mid-expand's spec is ahead of its status: it grows to what the spec asks for.
        let wanted: usize = cr.spec.roles.iter().map(|r| r.members.unwrap_or(0) as usize).sum();
        wait_settled(&client, &ns, &before.name, wanted.max(members), &log).await;
    }
    for before in &recorded {
        let after = record(&client, &before.name, &ns).await;
        if before.name == "mid-expand" {
            // Expanded from 1 to 3: kdss-hm88b-0 kept, -1 and -2 added with node ids 2 and 3.
            let role = &after.status.roles[0];
            let pods: Vec<(&str, i64)> = role.members.iter().map(|m| (m.pod.as_str(), m.node_id)).collect();
            assert_eq!(pods, [("kdss-hm88b-0", 1), ("kdss-hm88b-1", 2), ("kdss-hm88b-2", 3)]);
            for (pod, uid) in &before.pod_uids {
                assert_eq!(after.pod_uids.get(pod), Some(uid), "mid-expand: {pod} kept");
            }
            assert_eq!(
                before.sts_generations.keys().collect::<Vec<_>>(),
                after.sts_generations.keys().collect::<Vec<_>>()
            );
            continue;
        }
        check_untouched(before, &after);
    }
    // Every claim of `uid-storage` is the cluster's now, also the one nothing owned.
    let cr_uid = Api::<KubeDirectorCluster>::namespaced(client.clone(), &ns)
        .get("uid-storage")
        .await
        .expect("uid-storage")
        .metadata
        .uid;
    let owned_by_cluster = |p: &PersistentVolumeClaim| {
        p.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == cr_uid.as_ref())
    };
    let claims_owned = || async {
        loop {
            let claims = labelled::<PersistentVolumeClaim>(&client, &ns, "uid-storage").await;
            if claims.len() == 2 && claims.iter().all(owned_by_cluster) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    testbed::wait_for(
        "uid-storage's claims owned by the cluster",
        Duration::from_secs(30),
        claims_owned(),
    )
    .await;

    // The config error of `with-package` stays: its container did not change.
    let with_package = record(&client, "with-package", &ns).await;
    assert_eq!(with_package.status.roles[0].members[0].state, MemberState::ConfigError);

    remove_and_add_a_role(&client, &ns, &recorded[0], &log).await;
    // Its worker role is new now, and mid-expand has grown: the expand below compares with that.
    recorded[0] = record(&client, "uid-plain", &ns).await;
    let grown = recorded
        .iter()
        .position(|r| r.name == "mid-expand")
        .expect("mid-expand");
    recorded[grown] = record(&client, "mid-expand", &ns).await;

    let mut work = Vec::new();
    for before in recorded.iter().rev() {
        work.push(expand_shrink_delete(&client, &ns, before, &log));
    }
    futures::future::join_all(work).await;
}
