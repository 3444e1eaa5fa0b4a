//! Errors of one reconcile. Each is retried by the work queue; none stops other clusters.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the object has no namespace")]
    MissingNamespace,
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {name} exists but belongs to another owner; rename or delete it")]
    NotOwned { kind: &'static str, name: String },
    #[error("the caches stopped before they were ready")]
    CacheGone,
}

impl Error {
    /// A conflict means our view was stale: retry soon, it is not a failure.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(kube::Error::Api(s)) if s.code == 409)
    }
}
