//! What an admission decision may look at besides the object itself: the apps, clusters and
//! kd-global-config of the member cluster, its StorageClasses and which Secrets exist. Always read
//! from the API (the member's watch caches, see `caches.rs`, or asked for the one request, see
//! `lookups.rs`), never from what this process happened to reconcile, so that every replica decides
//! the same, also right after a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::api::DynamicObject;

use crate::api::config::GLOBAL_CONFIG_NAME;
use crate::api::{KubeDirectorConfig, KubeDirectorConfigSpec};
use crate::model::catalog::parse;
use crate::model::validate::StorageClasses;

pub trait World: Send + Sync {
    /// Namespace of the system app catalog and of kd-global-config.
    fn operator_namespace(&self) -> &str;
    /// The KubeDirectorApp `name` in namespace `ns`.
    fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>>;
    /// Names of the KubeDirectorApps in namespace `ns` (for "available: ..." in messages).
    fn apps_in(&self, ns: &str) -> Vec<String>;
    /// Every KubeDirectorCluster, in every namespace (an app may serve clusters anywhere).
    fn clusters(&self) -> Vec<Arc<DynamicObject>>;
    /// The clusters this operator manages (its watch namespace, if it has one): kd-global-config
    /// governs these.
    fn managed_clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.clusters()
    }
    /// Whether this operator reconciles KubeDirectorClusters of namespace `ns` (its watch namespace,
    /// if it has one).
    fn manages(&self, ns: &str) -> bool {
        let _ = ns;
        true
    }
    /// Every KubeDirectorConfig (only kd-global-config in the operator namespace counts).
    fn configs(&self) -> Vec<Arc<DynamicObject>>;
    fn storage_classes(&self) -> StorageClasses;
    /// Whether Secret `name` exists in `ns`; `None` where this world does not know (then the check
    /// is skipped, as the service accounts' and claims' are without lookups).
    fn secret_exists(&self, ns: &str, name: &str) -> Option<bool>;
    /// What was fetched from the API server for this request (`super::lookups`); `None` where
    /// nothing was (the checks that need it are then skipped: tests of pure rules, a webhook
    /// request that needs none).
    fn lookups(&self) -> Option<&super::lookups::Lookups> {
        None
    }
}

/// A world with what was fetched for this request: its lookups, and kd-global-config read live
/// (a config created a moment before the cluster may not be in the cache yet, and its key decides
/// whether secret keys can be sealed).
pub struct WithLookups<'a> {
    pub inner: &'a dyn World,
    pub lookups: Option<super::lookups::Lookups>,
    pub configs: Option<Vec<Arc<DynamicObject>>>,
    /// Apps read live because the caches did not have them (`lookups::app_missing`).
    pub apps: Vec<Arc<DynamicObject>>,
}

fn is(o: &DynamicObject, ns: &str, name: &str) -> bool {
    o.metadata.namespace.as_deref() == Some(ns) && o.metadata.name.as_deref() == Some(name)
}

impl World for WithLookups<'_> {
    fn operator_namespace(&self) -> &str {
        self.inner.operator_namespace()
    }
    fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.inner
            .app(ns, name)
            .or_else(|| self.apps.iter().find(|a| is(a, ns, name)).cloned())
    }
    fn apps_in(&self, ns: &str) -> Vec<String> {
        let mut names = self.inner.apps_in(ns);
        let live = self.apps.iter().filter(|a| a.metadata.namespace.as_deref() == Some(ns));
        names.extend(live.filter_map(|a| a.metadata.name.clone()));
        names.sort();
        names.dedup();
        names
    }
    fn clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.inner.clusters()
    }
    fn managed_clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.inner.managed_clusters()
    }
    fn manages(&self, ns: &str) -> bool {
        self.inner.manages(ns)
    }
    fn configs(&self) -> Vec<Arc<DynamicObject>> {
        self.configs.clone().unwrap_or_else(|| self.inner.configs())
    }
    fn storage_classes(&self) -> StorageClasses {
        self.inner.storage_classes()
    }
    fn secret_exists(&self, ns: &str, name: &str) -> Option<bool> {
        let key = (ns.to_string(), name.to_string());
        let asked = self.lookups.as_ref().and_then(|l| l.secrets.get(&key).copied());
        asked.or_else(|| self.inner.secret_exists(ns, name))
    }
    fn lookups(&self) -> Option<&super::lookups::Lookups> {
        self.lookups.as_ref()
    }
}

/// kd-global-config's spec, if it exists and can be read.
pub fn global_config(world: &dyn World) -> Option<KubeDirectorConfigSpec> {
    world
        .configs()
        .into_iter()
        .find(|c| {
            c.metadata.name.as_deref() == Some(GLOBAL_CONFIG_NAME)
                && c.metadata.namespace.as_deref() == Some(world.operator_namespace())
        })
        .and_then(|c| parse::<KubeDirectorConfig>(&c).ok())
        .map(|c| c.spec)
}

/// A fixed world: tests, the fuzz test and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub operator_namespace: String,
    pub apps: Vec<Arc<DynamicObject>>,
    pub clusters: Vec<Arc<DynamicObject>>,
    pub configs: Vec<Arc<DynamicObject>>,
    pub storage_classes: StorageClasses,
    /// (namespace, name) of existing Secrets.
    pub secrets: BTreeSet<(String, String)>,
    /// The operator's watch namespace; `None` = every namespace.
    pub watch_namespace: Option<String>,
}

impl World for Snapshot {
    fn manages(&self, ns: &str) -> bool {
        self.watch_namespace.as_deref().is_none_or(|w| w == ns)
    }
    fn operator_namespace(&self) -> &str {
        &self.operator_namespace
    }
    fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.apps
            .iter()
            .find(|a| a.metadata.namespace.as_deref() == Some(ns) && a.metadata.name.as_deref() == Some(name))
            .cloned()
    }
    fn apps_in(&self, ns: &str) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|a| a.metadata.name.clone())
            .collect()
    }
    fn clusters(&self) -> Vec<Arc<DynamicObject>> {
        self.clusters.clone()
    }
    fn configs(&self) -> Vec<Arc<DynamicObject>> {
        self.configs.clone()
    }
    fn storage_classes(&self) -> StorageClasses {
        self.storage_classes.clone()
    }
    fn secret_exists(&self, ns: &str, name: &str) -> Option<bool> {
        Some(self.secrets.contains(&(ns.to_string(), name.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world that knows no Secrets (as the member caches: Secrets are asked per request).
    struct Unknowing(Snapshot);

    impl World for Unknowing {
        fn operator_namespace(&self) -> &str {
            self.0.operator_namespace()
        }
        fn app(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
            self.0.app(ns, name)
        }
        fn apps_in(&self, ns: &str) -> Vec<String> {
            self.0.apps_in(ns)
        }
        fn clusters(&self) -> Vec<Arc<DynamicObject>> {
            self.0.clusters()
        }
        fn configs(&self) -> Vec<Arc<DynamicObject>> {
            self.0.configs()
        }
        fn storage_classes(&self) -> StorageClasses {
            self.0.storage_classes()
        }
        fn secret_exists(&self, _ns: &str, _name: &str) -> Option<bool> {
            None
        }
    }

    #[test]
    fn a_secret_is_judged_from_the_lookups_where_the_caches_do_not_know() {
        let inner = Unknowing(Snapshot::default());
        let mut lookups = super::super::lookups::Lookups::default();
        lookups.secrets.insert(("ns".into(), "there".into()), true);
        lookups.secrets.insert(("ns".into(), "gone".into()), false);
        let world = WithLookups {
            inner: &inner,
            lookups: Some(lookups),
            configs: None,
            apps: Vec::new(),
        };
        assert_eq!(world.secret_exists("ns", "there"), Some(true));
        assert_eq!(world.secret_exists("ns", "gone"), Some(false));
        // Not asked: not judged (the check is skipped), never taken for missing.
        assert_eq!(world.secret_exists("ns", "other"), None);
    }
}
