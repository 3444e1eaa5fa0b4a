//! Label and annotation keys KubeDirector puts on every child, and the label sets built from them.

use std::collections::BTreeMap;

use super::catalog::ResolvedApp;
use super::names::fnv1a64;

pub const CLUSTER: &str = "kubedirector.hpe.com/kdcluster";
pub const APP: &str = "kubedirector.hpe.com/kdapp";
pub const APP_CATALOG: &str = "kubedirector.hpe.com/appCatalog";
pub const ROLE: &str = "kubedirector.hpe.com/role";
pub const HEADLESS: &str = "kubedirector.hpe.com/headless";
pub const PRETTY_NAME: &str = "kubedirector.hpe.com/kdapp-prettyName";
/// Digest of the desired spec of a child: equal digest = nothing to write.
pub const SPEC_HASH: &str = "kubedirector.hpe.com/spec-hash";
/// On a StatefulSet: digest of the role inputs its pod template was built from (`model::rollout`).
pub const ROLE_INPUTS: &str = "kubedirector.hpe.com/role-inputs";
/// Set by the StatefulSet controller on every pod.
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// On every child this operator writes (and on the pods and PVCs of the StatefulSets it creates):
/// the cluster's bucket, `shard_bucket`. Not KubeDirector's: it is here so that a watch can select
/// a replica's share on the API server (docs/sharding.md, "Toward selection on the server").
pub const SHARD_BUCKET: &str = "kubedirector.hpe.com/shard-bucket";
/// The fixed bucket space. A bucket, unlike a shard number, does not change with `--shards` or a
/// kubeconfig context's name: a label that had to follow them would mean changing pod templates,
/// which rolls every pod. Fixed forever, like `names::fnv1a64`.
pub const BUCKETS: u32 = 4096;
pub const FINALIZER: &str = "kubedirector.hpe.com/cleanup";
/// On a cluster being restored (set by the admission webhook when a restore tool re-creates it):
/// nothing is built until its status is back from its KubeDirectorStatusBackup.
pub const RESTORING: &str = "kubedirector.hpe.com/restoring";
/// With `RESTORING`: the cluster may be deleted before its restore finished.
pub const ALLOW_DELETE_WHILE_RESTORING: &str = "kubedirector.hpe.com/allow-delete-while-restoring";
/// On a cluster: `"true"` while a KubeDirectorStatusBackup mirrors its status. Its presence on a
/// created cluster marks a restore.
pub const STATUS_BACKUP_EXISTS: &str = "kubedirector.hpe.com/status-backup-exists";
/// On a member's Service: the member's auth token (services with `hasAuthToken`).
pub const AUTH_TOKEN: &str = "kubedirector.hpe.com/kd-auth-token";

/// The bucket of cluster `namespace/name`, in `0..BUCKETS`: the member cluster's context plays no
/// part, so the label stays right whatever a replica calls the cluster it runs against.
pub fn shard_bucket(namespace: &str, name: &str) -> u32 {
    (fnv1a64(format!("{namespace}/{name}").as_bytes()) % u64::from(BUCKETS)) as u32
}

/// KubeDirector's labels of everything belonging to a cluster (the StatefulSet selector is made of
/// these); `role` is left out for the headless Service.
pub fn cluster_labels(cr_name: &str, app: &ResolvedApp, role: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (CLUSTER.to_string(), cr_name.to_string()),
        (APP.to_string(), app.name.clone()),
        (APP_CATALOG.to_string(), app.catalog.as_str().to_string()),
        (HEADLESS.to_string(), cr_name.to_string()),
    ]);
    if let Some(role) = role {
        labels.insert(ROLE.to_string(), role.to_string());
    }
    labels
}

/// Labels of a cluster's Services, as KubeDirector sets them: no `headless` label (Services are no
/// pods of the headless domain); `role` on member Services only.
pub fn service_labels(cr_name: &str, app: &ResolvedApp, role: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = cluster_labels(cr_name, app, role);
    labels.remove(HEADLESS);
    labels
}

/// `labels` with the cluster's bucket added (`SHARD_BUCKET`).
pub fn with_bucket(mut labels: BTreeMap<String, String>, namespace: &str, cr_name: &str) -> BTreeMap<String, String> {
    labels.insert(SHARD_BUCKET.to_string(), shard_bucket(namespace, cr_name).to_string());
    labels
}

pub fn app_annotations(app: &ResolvedApp) -> BTreeMap<String, String> {
    BTreeMap::from([(PRETTY_NAME.to_string(), app.pretty_name.clone())])
}

/// `base` with `extra` added; keys of `base` (KubeDirector's own) are never overridden by users.
pub fn merged(base: &BTreeMap<String, String>, extras: &[&BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for extra in extras {
        out.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out.extend(base.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}
