//! Which kubeconfig contexts become member clusters. Pure.

use std::collections::BTreeMap;

use kube::config::Kubeconfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("--context {missing}: not in the kubeconfig (available: {available})")]
    Unknown { missing: String, available: String },
    #[error(
        "the kubeconfig has no current-context: pass --context NAME (repeatable) or --all-contexts (available: {available})"
    )]
    NoCurrent { available: String },
    #[error("the kubeconfig has no contexts")]
    Empty,
}

/// `requested` contexts (all must exist), or every context with `all`, or the current one.
pub fn select_contexts(
    available: &[String],
    current: Option<&str>,
    requested: &[String],
    all: bool,
) -> Result<Vec<String>, SelectError> {
    if available.is_empty() {
        return Err(SelectError::Empty);
    }
    let list = || available.join(", ");
    let mut chosen: Vec<String> = if all {
        available.to_vec()
    } else if !requested.is_empty() {
        for r in requested {
            if !available.contains(r) {
                return Err(SelectError::Unknown {
                    missing: r.clone(),
                    available: list(),
                });
            }
        }
        requested.to_vec()
    } else {
        match current.filter(|c| available.iter().any(|a| a == c)) {
            Some(c) => vec![c.to_string()],
            None => return Err(SelectError::NoCurrent { available: list() }),
        }
    };
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}

/// The running members to stop: those no longer wanted, and those whose context was edited (its
/// fingerprint differs). `running` and `wanted` map a context to its fingerprint.
pub fn to_stop(running: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> Vec<String> {
    running
        .iter()
        .filter(|(name, print)| wanted.get(*name) != Some(*print))
        .map(|(name, _)| name.clone())
        .collect()
}

/// A fingerprint of everything that defines a context's connection (its cluster and user entries), so
/// that an edited context is restarted while untouched ones keep running.
pub fn fingerprints(kubeconfig: &Kubeconfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for named in &kubeconfig.contexts {
        let Some(ctx) = &named.context else { continue };
        let cluster = kubeconfig.clusters.iter().find(|c| c.name == ctx.cluster);
        let user = ctx
            .user
            .as_ref()
            .and_then(|u| kubeconfig.auth_infos.iter().find(|a| &a.name == u));
        let text = format!(
            "{}|{}|{}",
            serde_json::to_string(ctx).unwrap_or_default(),
            serde_json::to_string(&cluster).unwrap_or_default(),
            serde_json::to_string(&user).unwrap_or_default()
        );
        out.insert(
            named.name.clone(),
            format!("{:016x}", crate::model::names::fnv1a64(text.as_bytes())),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn members_gone_or_edited_are_stopped_and_the_others_keep_running() {
        let map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect()
        };
        let running = map(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "")]);
        // b edited, c no longer wanted, d (no fingerprint, as in-cluster) unchanged, e new.
        let wanted = map(&[("a", "1"), ("b", "9"), ("d", ""), ("e", "5")]);
        assert_eq!(to_stop(&running, &wanted), names(&["b", "c"]));
        assert!(to_stop(&running, &running).is_empty());
    }

    #[test]
    fn selects_current_requested_or_all() {
        let available = names(&["kwok-kd-2", "kwok-kd-1", "kind-a"]);
        assert_eq!(
            select_contexts(&available, Some("kind-a"), &[], false),
            Ok(names(&["kind-a"]))
        );
        assert_eq!(
            select_contexts(
                &available,
                None,
                &names(&["kwok-kd-2", "kwok-kd-1", "kwok-kd-2"]),
                false
            ),
            Ok(names(&["kwok-kd-1", "kwok-kd-2"]))
        );
        assert_eq!(
            select_contexts(&available, None, &[], true),
            Ok(names(&["kind-a", "kwok-kd-1", "kwok-kd-2"]))
        );
    }

    #[test]
    fn errors_name_the_context_and_what_exists() {
        let available = names(&["a", "b"]);
        let err = select_contexts(&available, None, &names(&["c"]), false).expect_err("unknown");
        assert_eq!(err.to_string(), "--context c: not in the kubeconfig (available: a, b)");
        let err = select_contexts(&available, Some("gone"), &[], false).expect_err("no current");
        assert!(err.to_string().contains("--all-contexts"));
        assert_eq!(select_contexts(&[], None, &[], true), Err(SelectError::Empty));
    }
}
