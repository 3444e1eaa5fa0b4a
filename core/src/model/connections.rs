//! Connections between a KubeDirectorCluster and other objects (`spec.connections`): references,
//! the reverse index that tells which clusters a changed object concerns, the content hash that
//! detects a change, and the `--reconnect` notifications it queues. Pure.
//!
//! A reference is `name` (the cluster's own namespace, as in KubeDirector), `namespace/name`, or
//! `context/namespace/name` (another member cluster of this operator).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::api::cluster::{Connections, MemberState, NotificationDesc, RoleStatus};

use super::catalog::ResolvedApp;
use super::names;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    ConfigMap,
    Secret,
}

impl Kind {
    /// The field of `spec.connections` that lists this kind.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }
}

/// An object somewhere in the fleet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub kind: Kind,
    pub context: String,
    pub namespace: String,
    pub name: String,
}

/// A connecting cluster: its member cluster and key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub context: String,
    pub namespace: String,
    pub name: String,
}

/// A DNS-1123 subdomain-ish part (names, namespaces); contexts may hold anything but `/`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Parses one reference; the error says what is allowed (the caller names the field,
/// `spec.connections.<kind.field()>[index]`).
pub fn parse_ref(raw: &str, kind: Kind, context: &str, namespace: &str) -> Result<Target, String> {
    let parts: Vec<&str> = raw.split('/').collect();
    let (ctx, ns, name) = match parts.as_slice() {
        [name] => (context, namespace, *name),
        [ns, name] => (context, *ns, *name),
        [ctx, ns, name] if !ctx.is_empty() => (*ctx, *ns, *name),
        _ => ("", "", ""),
    };
    if !valid_name(ns) || !valid_name(name) {
        return Err(format!(
            "{raw:?} is not a reference; allowed: \"name\", \"namespace/name\" or \"context/namespace/name\" (lower-case DNS names)"
        ));
    }
    Ok(Target {
        kind,
        context: ctx.to_string(),
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// Every reference of a cluster's connections, and the errors of those that do not parse.
pub fn targets(spec: Option<&Connections>, context: &str, namespace: &str) -> (Vec<Target>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let Some(c) = spec else {
        return (out, errors);
    };
    for (kind, list) in [
        (Kind::Cluster, &c.clusters),
        (Kind::ConfigMap, &c.configmaps),
        (Kind::Secret, &c.secrets),
    ] {
        for (i, raw) in list.iter().enumerate() {
            match parse_ref(raw, kind, context, namespace) {
                Ok(t) => out.push(t),
                Err(e) => errors.push(format!("spec.connections.{}[{i}]: {e}", kind.field())),
            }
        }
    }
    (out, errors)
}

/// Which clusters connect to which objects, both ways.
#[derive(Debug, Default)]
pub struct Index {
    by_target: BTreeMap<Target, BTreeSet<Source>>,
    by_source: BTreeMap<Source, Vec<Target>>,
}

impl Index {
    /// Records `source`'s references (replacing what it had).
    pub fn set(&mut self, source: Source, targets: Vec<Target>) {
        self.remove(&source);
        if targets.is_empty() {
            return;
        }
        for t in &targets {
            self.by_target.entry(t.clone()).or_default().insert(source.clone());
        }
        self.by_source.insert(source, targets);
    }

    pub fn remove(&mut self, source: &Source) {
        for t in self.by_source.remove(source).unwrap_or_default() {
            if let Some(set) = self.by_target.get_mut(&t) {
                set.remove(source);
                if set.is_empty() {
                    self.by_target.remove(&t);
                }
            }
        }
    }

    /// The clusters connected to `target`.
    pub fn sources_of(&self, target: &Target) -> Vec<Source> {
        self.by_target
            .get(target)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Connections' configmeta when nothing is connected.
pub fn empty() -> Value {
    super::configmeta::connections([])
}

/// The hash of the connected content (`status.lastConnectionHash`): FNV-1a of its canonical JSON
/// (object keys sorted, lists sorted), so only a change of content counts: not a no-op update, and
/// not the reordering of a connected cluster's members as their states change (configmeta lists
/// them by state, as KubeDirector does).
pub fn content_hash(connections: &Value) -> String {
    format!("{:016x}", names::fnv1a64(canonical(connections).to_string().as_bytes()))
}

/// Whether `hash` is one `content_hash` made (16 hex digits; KubeDirector's md5 has 32).
pub fn is_our_hash(hash: &str) -> bool {
    hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
        other => other.clone(),
    }
}

/// The `startscript` arguments of a connection change.
pub fn reconnect() -> NotificationDesc {
    NotificationDesc {
        arguments: vec!["--reconnect".to_string()],
    }
}

/// Queues `--reconnect` on every member whose role runs a setup package and that has seen the old
/// content: configured, or `creating` (its setup may have started with it; the notification waits
/// until it is configured). Once: not when one is already waiting.
pub fn queue_reconnect(roles: &mut [RoleStatus], app: &ResolvedApp) {
    let note = reconnect();
    for role in roles.iter_mut() {
        if app.role(&role.id).is_none_or(|r| r.setup_package.is_none()) {
            continue;
        }
        for m in &mut role.members {
            let queue = &mut m.state_detail.pending_notify_cmds;
            let seen = matches!(m.state, MemberState::Configured | MemberState::Creating);
            if seen && !queue.contains(&note) {
                queue.push(note.clone());
            }
        }
    }
}

/// Whether a member still has to hear of a connection change (the cluster is `updating` until then).
pub fn reconnect_pending(roles: &[RoleStatus]) -> bool {
    let note = reconnect();
    roles
        .iter()
        .flat_map(|r| &r.members)
        .any(|m| m.state_detail.pending_notify_cmds.contains(&note))
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn the_hash_ignores_order_but_not_content() {
        let a = serde_json::json!({"clusters": {"c": {"fqdns": ["x", "y"]}}});
        let b = serde_json::json!({"clusters": {"c": {"fqdns": ["y", "x"]}}});
        let c = serde_json::json!({"clusters": {"c": {"fqdns": ["y"]}}});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_three_forms_and_bad_ones_name_the_field() {
        let t = parse_ref("db", Kind::Cluster, "kwok-a", "ns1").expect("plain name");
        assert_eq!(
            (t.context.as_str(), t.namespace.as_str(), t.name.as_str()),
            ("kwok-a", "ns1", "db")
        );
        let t = parse_ref("other/db", Kind::ConfigMap, "kwok-a", "ns1").expect("namespace/name");
        assert_eq!((t.context.as_str(), t.namespace.as_str()), ("kwok-a", "other"));
        let t = parse_ref("kwok-b/other/db", Kind::Secret, "kwok-a", "ns1").expect("context/namespace/name");
        assert_eq!((t.context.as_str(), t.kind), ("kwok-b", Kind::Secret));
        for bad in ["", "a/b/c/d", "/db", "Upper", "ns/", "-x"] {
            let e = parse_ref(bad, Kind::ConfigMap, "kwok-a", "ns1").expect_err(bad);
            assert!(e.contains("is not a reference") && e.contains("namespace/name"), "{e}");
        }
        let spec = Connections {
            clusters: vec!["ok".into()],
            configmaps: vec!["ok".into(), "Bad Name".into()],
            secrets: vec![],
        };
        let (targets, errors) = targets(Some(&spec), "kwok-a", "ns1");
        assert_eq!(targets.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("spec.connections.configmaps[1]: \"Bad Name\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_index_finds_connected_clusters_and_forgets_them() {
        let src = |n: &str| Source {
            context: "a".into(),
            namespace: "ns".into(),
            name: n.into(),
        };
        let cm = Target {
            kind: Kind::ConfigMap,
            context: "a".into(),
            namespace: "ns".into(),
            name: "cfg".into(),
        };
        let remote = Target {
            kind: Kind::Cluster,
            context: "b".into(),
            namespace: "ns".into(),
            name: "db".into(),
        };
        let mut index = Index::default();
        index.set(src("x"), vec![cm.clone(), remote.clone()]);
        index.set(src("y"), vec![cm.clone()]);
        assert_eq!(index.sources_of(&cm), vec![src("x"), src("y")]);
        assert_eq!(index.sources_of(&remote), vec![src("x")]);
        // x drops the remote cluster.
        index.set(src("x"), vec![cm.clone()]);
        assert!(index.sources_of(&remote).is_empty());
        index.remove(&src("y"));
        index.set(src("x"), Vec::new());
        assert!(index.sources_of(&cm).is_empty());
        assert!(index.by_source.is_empty() && index.by_target.is_empty());
    }

    #[test]
    fn the_hash_follows_content_not_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"configmaps": {"t": [{"data": {"k": "1", "j": "2"}}]}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{"configmaps": {"t": [{"data": {"j": "2", "k": "1"}}]}}"#).expect("json");
        let c: Value =
            serde_json::from_str(r#"{"configmaps": {"t": [{"data": {"j": "2", "k": "3"}}]}}"#).expect("json");
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }
}
