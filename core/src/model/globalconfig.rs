//! kd-global-config as KubeDirector's config controller keeps it: the cleanup finalizer while it
//! exists, and `status.state` `ready` with a `generationUID` (this operator's: the object's uid, so
//! every replica writes the same and none fights another).

use kube_core::DynamicObject;
use kube_core::ResourceExt;
use serde_json::json;

use super::labels::FINALIZER;

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
