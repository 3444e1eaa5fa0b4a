//! Writes the plan: children by server-side apply only when their spec digest differs from the
//! cache, deletions that tolerate "already gone", and conditional status and finalizer writes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::model::labels;

use super::context::Ctx;
use super::crashpoint;
use super::error::Error;
use super::observe::ChildState;

/// Counts of what one reconcile wrote, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub applied: u32,
    pub skipped: u32,
    pub deleted: u32,
}

/// Applies `desired` unless the cache shows the same digest. Refuses to touch an object that another
/// owner controls (a name collision must not hijack someone else's StatefulSet).
pub async fn ensure<K>(
    ctx: &Ctx,
    ns: &str,
    desired: &K,
    current: Option<&ChildState>,
    owner_uid: &str,
    writes: &mut Writes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = desired.name_any();
    if let Some(current) = current {
        if current
            .owner_uid
            .as_deref()
            .is_some_and(|uid| uid != owner_uid)
        {
            return Err(Error::NotOwned {
                kind: kind_of::<K>(),
                name,
            });
        }
        let want = desired
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::SPEC_HASH));
        if current.spec_hash.as_ref() == want {
            writes.skipped += 1;
            return Ok(());
        }
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(&ctx.field_manager).force(),
        &Patch::Apply(desired),
    )
    .await?;
    crashpoint::after_write();
    writes.applied += 1;
    Ok(())
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "StatefulSet" => "StatefulSet",
        "Service" => "Service",
        _ => "object",
    }
}

async fn delete<K>(ctx: &Ctx, ns: &str, name: &str, writes: &mut Writes) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            crashpoint::after_write();
            writes.deleted += 1;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete_statefulset(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    writes: &mut Writes,
) -> Result<(), Error> {
    delete::<StatefulSet>(ctx, ns, name, writes).await
}

pub async fn delete_service(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    writes: &mut Writes,
) -> Result<(), Error> {
    delete::<Service>(ctx, ns, name, writes).await
}

pub async fn delete_pvc(ctx: &Ctx, ns: &str, name: &str, writes: &mut Writes) -> Result<(), Error> {
    delete::<PersistentVolumeClaim>(ctx, ns, name, writes).await
}

fn cluster_api(ctx: &Ctx, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &ctx.cluster_resource)
}

/// Replaces the status through the status subresource. The object carries the resourceVersion we
/// read, so a stale view fails with a conflict instead of overwriting a newer status.
pub async fn replace_status(
    ctx: &Ctx,
    obj: &DynamicObject,
    status: &impl Serialize,
) -> Result<(), Error> {
    let mut updated = obj.clone();
    updated.data["status"] = serde_json::to_value(status).map_err(|source| Error::Serialize {
        what: "status",
        source,
    })?;
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    cluster_api(ctx, &ns)
        .replace_status(&obj.name_any(), &PostParams::default(), &updated)
        .await?;
    crashpoint::after_write();
    Ok(())
}

/// Sets the finalizer list, conditional on the resourceVersion we read.
pub async fn set_finalizers(
    ctx: &Ctx,
    obj: &DynamicObject,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    cluster_api(ctx, &ns)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    crashpoint::after_write();
    Ok(())
}
