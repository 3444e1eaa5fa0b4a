//! kd-global-config's own upkeep (what to write: `model::globalconfig`), written as it is watched.
//! Writes are conditional on the version read; a conflict means another replica got there first.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use crate::api::KubeDirectorConfig;
use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::model::globalconfig::{status, upkeep};

use super::context::Ctx;

/// Runs until aborted: watches kd-global-config in the operator namespace and keeps it.
pub async fn keep(ctx: Arc<Ctx>) {
    let ar = ApiResource::erase::<KubeDirectorConfig>(&());
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.operator_namespace, &ar);
    let config = watcher::Config::default().fields(&format!("metadata.name={GLOBAL_CONFIG_NAME}"));
    let mut events = watcher(api.clone(), config).default_backoff().applied_objects().boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(obj) => obj,
            Err(e) => {
                debug!(context = %ctx.context, error = %e, "kd-global-config watch; retrying");
                continue;
            }
        };
        if let Some(patch) = upkeep(&obj) {
            write(
                &ctx,
                api.patch(GLOBAL_CONFIG_NAME, &PatchParams::default(), &Patch::Merge(patch))
                    .await,
            );
        } else if let Some(status) = status(&obj) {
            let patch = json!({"metadata": {"resourceVersion": obj.resource_version()}, "status": status});
            write(
                &ctx,
                api.patch_status(GLOBAL_CONFIG_NAME, &PatchParams::default(), &Patch::Merge(patch))
                    .await,
            );
        }
    }
}

fn write(ctx: &Ctx, result: Result<DynamicObject, kube::Error>) {
    match result {
        Ok(_) => ctx.metrics.write(&ctx.context, "patch", "ok"),
        // Another replica wrote it first, or it is gone: the next event says what is left to do.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) => {
            ctx.metrics.write(&ctx.context, "patch", "error");
            warn!(context = %ctx.context, error = %e, "cannot keep kd-global-config's finalizer or status");
        }
    }
}
