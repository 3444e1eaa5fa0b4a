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
    /// The cluster was deleted after we read it: nothing is left to reconcile, and its deletion
    /// event follows on the watch.
    #[error("the cluster was deleted while it was being reconciled")]
    ClusterGone,
    #[error("the caches stopped before they were ready")]
    CacheGone,
    /// The member cluster's write budget is spent; not a failure, the key waits for it.
    #[error("write budget spent for {0:?}")]
    Throttled(std::time::Duration),
}

impl Error {
    /// An answer of the API server with HTTP status `code` and nothing else (unit tests).
    #[cfg(test)]
    pub fn status(code: u16) -> Error {
        Error::Api(kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        })))
    }

    /// A conflict means our view was stale: retry soon, it is not a failure.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(kube::Error::Api(s)) if s.code == 409)
    }

    /// HTTP status of an API error (0 when there was no response at all).
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api(kube::Error::Api(s)) => Some(s.code),
            Error::Api(_) => Some(0),
            _ => None,
        }
    }

    /// The server's Retry-After (429 and some 5xx carry it in the Status details).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Api(kube::Error::Api(s)) => s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|secs| *secs > 0)
                .map(|secs| std::time::Duration::from_secs(u64::from(secs))),
            _ => None,
        }
    }
}
