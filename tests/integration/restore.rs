//! Status backup and restore as a backup tool (Velero, say) exercises it: kd-global-config
//! `backupClusterStatus` on, a cluster with storage configured; its objects saved; everything but
//! the saved copies and the PVs deleted; then re-created in a tool's order (claims, the backup, the
//! cluster, and only then its StatefulSets and Services). The webhook marks the cluster
//! `restoring`, the operator waits for what it needs, takes the status back and resumes: the same
//! members on the same volumes, no second copy of any child.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admission::{bed, cases};
use crate::testbed;

const CLUSTER: &str = "kubedirector.hpe.com/kdcluster";

/// What a backup tool keeps of an object: its metadata without what the API server assigned, and
/// without owner references (the owner's uid changes on restore); no status.
fn saved<K: Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).expect("json");
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "generation",
            "finalizers",
        ] {
            meta.remove(k);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.retain(|k, _| !k.starts_with("pv.kubernetes.io/") && !k.starts_with("volume.kubernetes.io/"));
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

async fn all_of<K>(client: &Client, ns: &str, name: &str) -> Vec<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{CLUSTER}={name}")))
        .await
        .expect("list")
        .items
}

async fn recreate<K>(client: &Client, ns: &str, saved: &Value)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(saved.clone()).expect("saved object");
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("re-create {}: {e}", obj.name_any()));
}

fn status_of(c: &DynamicObject) -> &Value {
    &c.data["status"]
}

/// Pod → the PV its member's claim is bound to.
async fn volumes_of(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    all_of::<PersistentVolumeClaim>(client, ns, name)
        .await
        .into_iter()
        .filter_map(|p| Some((p.name_any(), p.spec?.volume_name?)))
        .collect()
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_cluster_restored_from_its_status_backup_keeps_its_members_and_volumes() {
    let bed = bed("restore").await;
    let client = bed.client.clone();
    let (ns, sys) = (bed.managed.clone(), bed.sys.clone());
    let operator = bed.webhook_replica(&ns, &bed.ns);
    bed.wait_ready(&operator).await;
    // Volumes of this test only: a class of its own.
    let class = format!("kdr-{}", bed.ns);
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"
    }))
    .expect("class");
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
        .expect("storage class");
    testbed::volumes(&client, &class, &class, 3, "1Gi").await;
    let config = json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
                        "metadata": {"name": "kd-global-config"}, "spec": {"backupClusterStatus": true}});
    bed.create(&sys, &config).await.expect("kd-global-config");
    let mut cluster = cases::user_cluster("rs", "cassandra-like");
    for role in cluster["spec"]["roles"].as_array_mut().expect("roles") {
        role["storage"] = json!({"size": "1Gi", "storageClassName": class});
    }
    // The class must be in the webhook's cache before the cluster names it.
    testbed::wait_for("the cluster admitted", Duration::from_secs(30), async {
        while bed.create(&ns, &cluster).await.is_err() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let clusters = bed.api("KubeDirectorCluster", &ns);
    let backups = bed.api("KubeDirectorStatusBackup", &ns);
    let configured = |c: &DynamicObject| {
        let s = status_of(c);
        s["state"] == "configured"
            && s["roles"].as_array().is_some_and(|r| {
                r.iter()
                    .flat_map(|r| r["members"].as_array().into_iter().flatten())
                    .filter(|m| m["state"] == "configured")
                    .count()
                    == 3
            })
    };
    let wait_configured = || async {
        testbed::wait_for(
            &format!("rs configured (log: {})", operator.log.display()),
            Duration::from_secs(120),
            async {
                loop {
                    if let Ok(c) = clusters.get("rs").await
                        && configured(&c)
                        && !c.labels().contains_key("kubedirector.hpe.com/restoring")
                    {
                        return c;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            },
        )
        .await
    };
    let before = wait_configured().await;

    // Backed up: the backup mirrors the status, the cluster says so.
    testbed::wait_for("the status backup in step", Duration::from_secs(30), async {
        loop {
            let c = clusters.get("rs").await.expect("cluster");
            if let Ok(b) = backups.get("rs").await
                && b.data["spec"]["statusBackup"]["roles"] == status_of(&c)["roles"]
                && c.annotations()
                    .get("kubedirector.hpe.com/status-backup-exists")
                    .map(String::as_str)
                    == Some("true")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let pods_before: Vec<String> = all_of::<Pod>(&client, &ns, "rs")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let volumes_before = volumes_of(&client, &ns, "rs").await;
    assert_eq!(volumes_before.len(), 3, "{volumes_before:?}");

    // The backup tool's copy.
    let cr = clusters.get("rs").await.expect("cluster");
    let saved_cr = json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorCluster",
                          "metadata": {"name": "rs", "labels": cr.labels(), "annotations": cr.annotations()},
                          "spec": cr.data["spec"]});
    let saved_backup = saved(&backups.get("rs").await.expect("backup"));
    let saved_sets: Vec<Value> = all_of::<StatefulSet>(&client, &ns, "rs")
        .await
        .iter()
        .map(saved)
        .collect();
    let saved_services: Vec<Value> = all_of::<Service>(&client, &ns, "rs")
        .await
        .iter()
        .map(|s| {
            let mut v = saved(s);
            if v["spec"]["clusterIP"] != "None" {
                let spec = v["spec"].as_object_mut().expect("spec");
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            v
        })
        .collect();
    let saved_claims: Vec<Value> = all_of::<PersistentVolumeClaim>(&client, &ns, "rs")
        .await
        .iter()
        .map(saved)
        .collect();
    let names = |v: &[Value]| {
        let mut n: Vec<String> = v
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        n.sort();
        n
    };

    // Lost: the cluster and everything it owns (the claims go with their StatefulSets).
    clusters
        .delete("rs", &DeleteParams::default())
        .await
        .expect("delete cluster");
    testbed::wait_for("everything but the volumes gone", Duration::from_secs(120), async {
        loop {
            let gone = clusters.get_opt("rs").await.ok().flatten().is_none()
                && backups.get_opt("rs").await.ok().flatten().is_none()
                && all_of::<StatefulSet>(&client, &ns, "rs").await.is_empty()
                && all_of::<Service>(&client, &ns, "rs").await.is_empty()
                && all_of::<Pod>(&client, &ns, "rs").await.is_empty()
                && all_of::<PersistentVolumeClaim>(&client, &ns, "rs").await.is_empty();
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;

    // Restored in a tool's order: volumes made claimable for the same claims, the claims, the
    // backup, the cluster; its StatefulSets and Services last.
    let pvs = Api::<PersistentVolume>::all(client.clone());
    for pv in volumes_before.values() {
        let patch = json!({"spec": {"claimRef": {"uid": null, "resourceVersion": null}}});
        pvs.patch(pv, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("PV claimable");
    }
    for claim in &saved_claims {
        recreate::<PersistentVolumeClaim>(&client, &ns, claim).await;
    }
    let backup: DynamicObject = serde_json::from_value(saved_backup).expect("backup");
    backups
        .create(&PostParams::default(), &backup)
        .await
        .expect("re-create backup");
    let restored = bed.create(&ns, &saved_cr).await.expect("cluster re-created");
    assert!(
        restored.labels().contains_key("kubedirector.hpe.com/restoring"),
        "the webhook marks a restore: {:?}",
        restored.labels()
    );
    assert_ne!(restored.uid(), before.uid());
    // Waiting for its children, with the backup's status in place, nothing built meanwhile.
    testbed::wait_for("the restore waiting for the children", Duration::from_secs(60), async {
        loop {
            let c = clusters.get("rs").await.expect("cluster");
            let p = &status_of(&c)["restoreProgress"];
            if p["awaitingStatus"] == false && p["awaitingResources"] == true {
                assert_eq!(status_of(&c)["roles"], status_of(&before)["roles"]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    // An ordinary reconcile builds the children before it writes a status, and never writes
    // restoreProgress: what was waited for above rules it out.
    assert!(
        all_of::<StatefulSet>(&client, &ns, "rs").await.is_empty(),
        "built while restoring"
    );
    // A spec change and a delete are refused while restoring.
    let change = json!([{"op": "replace", "path": "/spec/roles/1/members", "value": 3}]);
    let refused = bed
        .patch("KubeDirectorCluster", &ns, "rs", change.as_array().expect("ops"))
        .await;
    assert!(refused.err().unwrap_or_default().contains("being restored"));
    let refused = bed.delete("KubeDirectorCluster", &ns, "rs", true).await;
    assert!(
        refused
            .err()
            .unwrap_or_default()
            .contains("allow-delete-while-restoring")
    );
    for set in &saved_sets {
        recreate::<StatefulSet>(&client, &ns, set).await;
    }
    for svc in &saved_services {
        recreate::<Service>(&client, &ns, svc).await;
    }

    // Configured again in the restored members' new containers.
    let containers = |c: &DynamicObject| -> Vec<String> {
        status_of(c)["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["members"].as_array().into_iter().flatten())
            .filter_map(|m| m["stateDetail"]["lastConfiguredContainer"].as_str().map(str::to_string))
            .collect()
    };
    let old_containers = containers(&before);
    let after = testbed::wait_for("configured in new containers", Duration::from_secs(120), async {
        loop {
            let c = wait_configured().await;
            let now = containers(&c);
            if now.len() == 3 && now.iter().all(|id| !old_containers.contains(id)) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert!(status_of(&after).get("restoreProgress").is_none_or(Value::is_null));
    let mut pods_after: Vec<String> = all_of::<Pod>(&client, &ns, "rs")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let mut pods_before = pods_before;
    pods_before.sort();
    pods_after.sort();
    assert_eq!(pods_after, pods_before, "the same members");
    assert_eq!(
        volumes_of(&client, &ns, "rs").await,
        volumes_before,
        "on the same volumes"
    );
    let sets_after: Vec<Value> = all_of::<StatefulSet>(&client, &ns, "rs")
        .await
        .iter()
        .map(saved)
        .collect();
    let services_after: Vec<Value> = all_of::<Service>(&client, &ns, "rs").await.iter().map(saved).collect();
    assert_eq!(names(&sets_after), names(&saved_sets), "no second StatefulSet");
    assert_eq!(names(&services_after), names(&saved_services), "no second Service");
    // Adopted: the restored children belong to the new cluster (so deleting it removes them).
    let uid = after.uid().unwrap_or_default();
    for s in all_of::<StatefulSet>(&client, &ns, "rs").await {
        assert!(
            s.owner_references().iter().any(|o| o.uid == uid),
            "{} not adopted",
            s.name_any()
        );
    }
    for s in all_of::<Service>(&client, &ns, "rs").await {
        assert!(
            s.owner_references().iter().any(|o| o.uid == uid),
            "{} not adopted",
            s.name_any()
        );
    }
    let b = backups.get("rs").await.expect("backup");
    assert!(
        b.owner_references().iter().any(|o| o.uid == uid),
        "the backup belongs to the new cluster"
    );

    let _ = clusters.delete("rs", &DeleteParams::default()).await;
    let _ = bed.delete("KubeDirectorConfig", &sys, "kd-global-config", false).await;
    bed.cleanup().await;
}
