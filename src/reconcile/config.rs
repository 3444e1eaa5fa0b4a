//! kd-global-config's own upkeep, as KubeDirector's config controller keeps it: the cleanup
//! finalizer while it exists, and `status.state` `ready` with a `generationUID` (this
//! operator's: the object's uid, so every replica writes the same and none fights another).
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
use crate::model::labels::FINALIZER;

use super::context::Ctx;

/// What kd-global-config needs written now, as a merge patch (`None`: nothing).
pub fn upkeep(obj: &DynamicObject) -> Option<serde_json::Value> {
    let finalizers = obj.finalizers();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    if obj.metadata.deletion_timestamp.is_some() {
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        return has.then(|| json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}}));
    }
    if !has {
        let mut all: Vec<String> = finalizers.to_vec();
        all.push(FINALIZER.to_string());
        return Some(json!({"metadata": {"finalizers": all, "resourceVersion": obj.resource_version()}}));
    }
    None
}

/// The status kd-global-config should have, if it has not.
pub fn status(obj: &DynamicObject) -> Option<serde_json::Value> {
    let want = json!({"generationUID": obj.uid().unwrap_or_default(), "state": "ready"});
    let current = obj.data.get("status");
    let same =
        current.is_some_and(|s| s["state"] == want["state"] && !s["generationUID"].as_str().unwrap_or("").is_empty());
    (!same && obj.metadata.deletion_timestamp.is_none()).then_some(want)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn finalizer_then_status_then_nothing_and_the_finalizer_goes_on_delete() {
        let base = json!({"apiVersion": "kubedirector.hpe.com/v1beta1", "kind": "KubeDirectorConfig",
            "metadata": {"name": "kd-global-config", "namespace": "kd", "uid": "u-1", "resourceVersion": "5"}, "spec": {}});
        let new = config(base.clone());
        assert_eq!(
            upkeep(&new),
            Some(json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "5"}}))
        );
        let mut with = base.clone();
        with["metadata"]["finalizers"] = json!(["other", FINALIZER]);
        let with = config(with);
        assert_eq!(upkeep(&with), None);
        assert_eq!(status(&with), Some(json!({"generationUID": "u-1", "state": "ready"})));
        let mut ready = serde_json::to_value(&with).expect("json");
        ready["status"] = json!({"generationUID": "kd-made", "state": "ready"});
        assert_eq!(
            status(&config(ready.clone())),
            None,
            "a generationUID KubeDirector made is kept"
        );
        ready["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            upkeep(&config(ready)),
            Some(json!({"metadata": {"finalizers": ["other"], "resourceVersion": "5"}}))
        );
    }
}
