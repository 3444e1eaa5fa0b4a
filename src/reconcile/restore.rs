//! Status backup and restore (KubeDirector's `backupClusterStatus`): the I/O half. What a restore
//! step decides is in `model::restore`.

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::api::KubeDirectorStatusBackup;
use crate::api::cluster::KubeDirectorClusterStatus;
use crate::model::labels::{RESTORING, STATUS_BACKUP_EXISTS};
use crate::model::restore::{self, Mirror, RestoreFacts};
use crate::model::settings::Settings;
use crate::queue::Outcome;

use super::apply::{self, cluster_api, gone, take_budget, write};
use super::context::Ctx;
use super::error::Error;
use super::observe;

/// The backup object is not watched (only a restore reads it): while waiting for it, look again
/// this often.
const RESTORE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// One step of a cluster labelled `restoring`: nothing is built; the status is taken from the
/// backup and the wait recorded in `restoreProgress`; once nothing is awaited the label goes (the
/// next reconcile is an ordinary one, from the restored status).
pub async fn reconcile(
    ctx: &Ctx,
    obj: &DynamicObject,
    cluster: &crate::api::KubeDirectorCluster,
    settings: &Settings,
) -> Result<Outcome, Error> {
    let (ns, name) = (obj.namespace().ok_or(Error::MissingNamespace)?, obj.name_any());
    let app_found = observe::find_app(ctx, &ns, &cluster.spec.app, cluster.spec.app_catalog).is_ok();
    let backups: Api<KubeDirectorStatusBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let backup = backups.get_opt(&name).await?.and_then(|b| b.spec.status_backup);
    let (_, children) = observe::observe(&ctx.stores, &ns, &name);
    let services = children.services.keys().cloned().collect();
    let statefulsets = children.statefulsets.keys().cloned().collect();
    let (targets, _) = crate::model::connections::targets(cluster.spec.connections.as_ref(), &ctx.context, &ns);
    let (_, missing_connections) = ctx.hub.resolve(&targets, &settings.svc_domain_base);
    let (status, done) = restore::step(
        cluster.status.as_ref(),
        &RestoreFacts {
            app_found,
            backup: backup.as_ref(),
            services: &services,
            statefulsets: &statefulsets,
            missing_connections: &missing_connections,
            allow_without_connections: settings.allow_restore_without_connections,
        },
    );
    if cluster.status.as_ref() != Some(&status) {
        apply::replace_status(ctx, obj, &status).await?;
        // The label goes on the next step, from the status just written.
        return Ok(Outcome::Done);
    }
    if !done {
        return Ok(Outcome::RequeueAfter(RESTORE_POLL));
    }
    patch_metadata(ctx, obj, json!({"labels": {RESTORING: null}}), true).await?;
    info!(context = %ctx.context, cluster = %name, namespace = %ns, "restored from its status backup; reconciling");
    Ok(Outcome::Done)
}

/// A merge patch of the cluster's labels or annotations; `conditional` on the version read (an
/// annotation that only records a fact needs no such guard, and follows a status write).
async fn patch_metadata(
    ctx: &Ctx,
    obj: &DynamicObject,
    mut metadata: serde_json::Value,
    conditional: bool,
) -> Result<(), Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    if conditional {
        metadata["resourceVersion"] = json!(obj.resource_version());
    }
    take_budget(ctx)?;
    let (api, name) = (cluster_api(ctx, &ns), obj.name_any());
    let (params, patch) = (PatchParams::default(), Patch::Merge(json!({ "metadata": metadata })));
    let call = api.patch(&name, &params, &patch);
    write(ctx, "patch", "KubeDirectorCluster", &name, call)
        .await
        .map(|_| ())
        .map_err(gone)
}

/// Keeps the cluster's KubeDirectorStatusBackup as kd-global-config says: with
/// `backupClusterStatus`, a copy of every status written (and of the current one when the backup
/// is missing), owned by the cluster, and the annotation `status-backup-exists: "true"`; without,
/// a backup made earlier is deleted and the annotation says `"false"`.
pub async fn mirror(
    ctx: &Ctx,
    obj: &DynamicObject,
    status: &KubeDirectorClusterStatus,
    written: bool,
    owner: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    settings: &Settings,
) -> Result<(), Error> {
    let marked = obj.annotations().get(STATUS_BACKUP_EXISTS).map(String::as_str) == Some("true");
    let (ns, name) = (obj.namespace().ok_or(Error::MissingNamespace)?, obj.name_any());
    let backups: Api<KubeDirectorStatusBackup> = Api::namespaced(ctx.client.clone(), &ns);
    match restore::mirror(settings.backup_cluster_status, marked, written) {
        Mirror::Nothing => {}
        Mirror::Copy { mark } => {
            let backup = json!({
                "apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorStatusBackup",
                "metadata": {"name": name, "namespace": ns, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
                "spec": {"statusBackup": status},
            });
            take_budget(ctx)?;
            let (params, patch) = (PatchParams::apply(&ctx.field_manager).force(), Patch::Apply(&backup));
            let call = backups.patch(&name, &params, &patch);
            write(ctx, "apply", "KubeDirectorStatusBackup", &name, call).await?;
            if mark {
                patch_metadata(ctx, obj, json!({"annotations": {STATUS_BACKUP_EXISTS: "true"}}), false).await?;
            }
        }
        Mirror::Remove => {
            take_budget(ctx)?;
            let params = DeleteParams::default();
            let call = backups.delete(&name, &params);
            match write(ctx, "delete", "KubeDirectorStatusBackup", &name, call).await {
                Ok(_) => {}
                Err(Error::Api(kube::Error::Api(s))) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
            patch_metadata(ctx, obj, json!({"annotations": {STATUS_BACKUP_EXISTS: "false"}}), false).await?;
        }
    }
    Ok(())
}
