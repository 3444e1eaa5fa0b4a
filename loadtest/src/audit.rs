//! The operator's writes as the API server saw them: its audit log, where a policy keeps only the
//! mutating requests of the operator's ServiceAccount. Exact, also for replicas killed mid-run
//! (their own counters die with them).

use std::collections::BTreeMap;

/// The operator's identity in the test bed (its kubeconfig carries a token of this ServiceAccount).
pub const OPERATOR_NAMESPACE: &str = "kubedirector";
pub const OPERATOR_SA: &str = "kubedirector";

pub fn operator_user() -> String {
    format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}")
}

/// The audit policy handed to the API servers.
pub fn policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\n# Only the operator's writes, once each (when the response is sent).\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n  users: [\"{}\"]\n  verbs: [\"create\", \"update\", \"patch\", \"delete\", \"deletecollection\"]\n- level: None\n",
        operator_user()
    )
}

#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// Unix microseconds of the response.
    pub at: u64,
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    /// "" for cluster-scoped objects.
    pub namespace: String,
    pub code: u16,
}

pub fn parse(line: &str, user: &str) -> Option<Write> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["stage"] != "ResponseComplete" || v["user"]["username"] != user {
        return None;
    }
    let at: jiff::Timestamp = v["stageTimestamp"].as_str()?.parse().ok()?;
    let obj = &v["objectRef"];
    let mut resource = obj["resource"].as_str().unwrap_or("?").to_string();
    if let Some(sub) = obj["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    Some(Write {
        at: u64::try_from(at.as_microsecond()).ok()?,
        verb: v["verb"].as_str()?.to_string(),
        resource,
        namespace: obj["namespace"].as_str().unwrap_or("").to_string(),
        code: u16::try_from(v["responseStatus"]["code"].as_u64().unwrap_or(0)).unwrap_or(0),
    })
}

pub fn read(path: &std::path::Path) -> std::io::Result<Vec<Write>> {
    let user = operator_user();
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| parse(l, &user))
        .collect())
}

/// The operator's writes in every log (one per API server).
pub fn read_all(logs: &[std::path::PathBuf]) -> anyhow::Result<Vec<Write>> {
    use anyhow::Context as _;
    let mut all = Vec::new();
    for l in logs {
        all.extend(read(l).with_context(|| format!("audit log {}", l.display()))?);
    }
    Ok(all)
}

/// Writes within [from, to) (unix µs), and their split by `verb resource`.
pub fn window(writes: &[Write], from: u64, to: u64) -> (u64, BTreeMap<String, u64>) {
    let mut by = BTreeMap::new();
    let mut n = 0;
    for w in writes.iter().filter(|w| w.at >= from && w.at < to) {
        n += 1;
        *by.entry(format!("{} {}", w.verb, w.resource)).or_insert(0) += 1;
    }
    (n, by)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"kind":"Event","level":"Metadata","stage":"ResponseComplete","verb":"patch","user":{"username":"system:serviceaccount:kubedirector:kubedirector"},"objectRef":{"resource":"kubedirectorclusters","subresource":"status","namespace":"lt","name":"a"},"responseStatus":{"code":200},"stageTimestamp":"2026-11-21T08:32:33.931636Z"}"#;

    #[test]
    fn parses_only_the_operators_completed_writes() {
        let w = parse(LINE, &operator_user()).expect("write");
        assert_eq!(w.verb, "patch");
        assert_eq!(w.resource, "kubedirectorclusters/status");
        assert_eq!(w.code, 200);
        assert_eq!(w.namespace, "lt");
        assert_eq!(w.at % 1_000_000, 931_636);
        assert_eq!(parse(LINE, "admin"), None);
        assert_eq!(
            parse(&LINE.replace("ResponseComplete", "Panic"), &operator_user()),
            None
        );
        assert_eq!(parse("not json", &operator_user()), None);
    }

    #[test]
    fn windows_count_and_split() {
        let w = parse(LINE, &operator_user()).expect("write");
        let all = vec![
            w.clone(),
            Write {
                at: w.at + 10,
                ..w.clone()
            },
        ];
        let (n, by) = window(&all, w.at, w.at + 10);
        assert_eq!(n, 1);
        assert_eq!(by.get("patch kubedirectorclusters/status"), Some(&1));
        assert_eq!(window(&all, 0, u64::MAX).0, 2);
    }

    #[test]
    fn the_policy_names_the_operator() {
        assert!(policy().contains("system:serviceaccount:kubedirector:kubedirector"));
        let v: serde_json::Value = serde_yaml::from_str(&policy()).expect("yaml");
        assert_eq!(v["rules"][1]["level"], "None");
    }
}
