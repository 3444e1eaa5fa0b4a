//! Resolved apps, parsed once per version of their spec. Every reconcile of every cluster reads its
//! app; parsing the app's JSON and resolving its roles each time costs the same work again for an
//! object that changes a few times in its life. An entry is keyed by the app object (namespace,
//! name) and holds the uid and generation it was resolved from: a new generation (a spec change)
//! or a re-created app (a new uid) is resolved anew. Only the spec is resolved, so a metadata
//! change (new generation not bumped) rightly keeps the entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::DynamicObject;

use crate::api::cluster::AppCatalog;
use crate::model::catalog::{ResolvedApp, resolve_object};

type Resolved = Result<Arc<ResolvedApp>, String>;

struct Entry {
    uid: String,
    generation: i64,
    catalog: AppCatalog,
    resolved: Resolved,
}

#[derive(Default)]
pub struct ResolvedApps {
    by_object: Mutex<HashMap<(String, String), Entry>>,
}

impl ResolvedApps {
    /// `obj` (the app `app`, chosen from `catalog`) resolved: from the entry of its uid and
    /// generation, or parsed now (and remembered). An object without a uid or generation (never
    /// so from the API server) is parsed every time.
    pub fn resolve(&self, app: &str, catalog: AppCatalog, obj: &DynamicObject) -> Resolved {
        let meta = &obj.metadata;
        let (Some(uid), Some(generation)) = (meta.uid.clone(), meta.generation) else {
            return resolve_object(app, catalog, obj).map(Arc::new);
        };
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        if let Ok(map) = self.by_object.lock()
            && let Some(e) = map.get(&key)
            && e.uid == uid
            && e.generation == generation
            && e.catalog == catalog
        {
            return e.resolved.clone();
        }
        let resolved = resolve_object(app, catalog, obj).map(Arc::new);
        if let Ok(mut map) = self.by_object.lock() {
            let entry = Entry {
                uid,
                generation,
                catalog,
                resolved: resolved.clone(),
            };
            map.insert(key, entry);
        }
        resolved
    }

    /// How many app versions are remembered (tests).
    pub fn len(&self) -> usize {
        self.by_object.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example app (deploy/examples), at `generation` with `uid`, its first role's image `image`.
    fn app(generation: i64, uid: &str, image: &str) -> DynamicObject {
        let text = include_str!("../../deploy/examples/app-cassandra-like.yaml");
        let mut v: serde_json::Value = serde_yaml::from_str(text).expect("example app");
        v["metadata"] = json!({"name": "web", "namespace": "kd", "uid": uid, "generation": generation});
        v["spec"]["roles"][0]["imageRepoTag"] = json!(image);
        serde_json::from_value(v).expect("app")
    }

    fn image(r: &Resolved) -> String {
        let app = r.as_ref().expect("resolved");
        format!("{:?}", app.roles.first().map(|r| &r.image))
    }

    #[test]
    fn an_app_is_resolved_once_per_generation_and_again_when_its_spec_or_uid_changes() {
        let cache = ResolvedApps::default();
        let first = cache.resolve("web", AppCatalog::System, &app(1, "u1", "img:1"));
        // The same generation: the remembered answer, even if the object carried other content
        // (which the API server never sends for one generation: shown here by the old image).
        let again = cache.resolve("web", AppCatalog::System, &app(1, "u1", "img:2"));
        assert!(Arc::ptr_eq(
            first.as_ref().expect("first"),
            again.as_ref().expect("again")
        ));
        assert_eq!(image(&again), image(&first));
        // A new generation is resolved anew.
        let changed = cache.resolve("web", AppCatalog::System, &app(2, "u1", "img:2"));
        assert_ne!(image(&changed), image(&first));
        // Re-created (a new uid) at generation 1 again: resolved anew, not taken for the first.
        let recreated = cache.resolve("web", AppCatalog::System, &app(1, "u2", "img:3"));
        assert_ne!(image(&recreated), image(&changed));
        // Chosen from the other catalog: resolved anew (the catalog is part of the answer).
        let local = cache.resolve("web", AppCatalog::Local, &app(1, "u2", "img:3"));
        assert_eq!(local.as_ref().expect("local").catalog, AppCatalog::Local);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_unreadable_app_is_remembered_as_unreadable_until_it_changes() {
        let cache = ResolvedApps::default();
        let mut bad = app(1, "u1", "img:1");
        bad.data["spec"]["roles"] = json!("not a list");
        let e = cache.resolve("web", AppCatalog::System, &bad).expect_err("unreadable");
        assert!(e.starts_with("spec.app: KubeDirectorApp \"web\" cannot be read"), "{e}");
        assert!(cache.resolve("web", AppCatalog::System, &app(2, "u1", "img:1")).is_ok());
    }
}
