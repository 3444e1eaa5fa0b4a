//! Rules on a cluster role's pass-through fields, checked at admission and before every plan:
//! label and annotation syntax (Kubernetes' own rules, as KubeDirector checks them),
//! `volumeProjections`, `sharedMemory` and `fileInjections`. Each error names its field and what
//! is allowed.

use crate::api::cluster::RoleSpec;

use super::validate::{FieldError, parse_quantity};

/// Total size Kubernetes allows for one object's annotations.
const MAX_ANNOTATIONS: usize = 256 * 1024;

/// Paths the member's own volumes use: a projection there (or above one) would hide them.
const SYSTEM_PATHS: [&str; 10] = [
    "/",
    "/etc",
    "/etc/guestconfig",
    "/opt/guestconfig",
    "/sys/fs/cgroup",
    "/dev/shm",
    "/run",
    "/run/lock",
    "/tmp",
    "/var/log/guestconfig",
];
/// Runtime filesystems nothing is projected into.
const RUNTIME_TREES: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

fn err(field: String, message: String) -> FieldError {
    FieldError { field, message }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters (a label name or value).
fn qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lower-case labels of `[a-z0-9-]` joined by dots, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(|c| *c != b'-')
                && b.last().is_some_and(|c| *c != b'-')
        })
}

/// Why `key` is not a label or annotation key (`[prefix/]name`), if it is not.
fn key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) {
        return Some("its prefix must be a DNS subdomain (lower case, e.g. example.com/)");
    }
    if !qualified_part(name) {
        return Some("its name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric");
    }
    None
}

fn labels(field: &str, map: Option<&std::collections::BTreeMap<String, String>>, errors: &mut Vec<FieldError>) {
    for (k, v) in map.into_iter().flatten() {
        if let Some(why) = key_problem(k) {
            errors.push(err(
                format!("{field}.{k}"),
                format!("{k:?} is not a valid label key: {why}"),
            ));
        } else if !v.is_empty() && !qualified_part(v) {
            errors.push(err(
                format!("{field}.{k}"),
                format!("{v:?} is not a valid label value: at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric (or empty)"),
            ));
        }
    }
}

fn annotations(field: &str, map: Option<&std::collections::BTreeMap<String, String>>, errors: &mut Vec<FieldError>) {
    let mut total = 0;
    for (k, v) in map.into_iter().flatten() {
        total += k.len() + v.len();
        if let Some(why) = key_problem(k) {
            errors.push(err(
                format!("{field}.{k}"),
                format!("{k:?} is not a valid annotation key: {why}"),
            ));
        }
    }
    if total > MAX_ANNOTATIONS {
        errors.push(err(
            field.to_string(),
            format!("{total} bytes of annotations; at most {MAX_ANNOTATIONS} are allowed"),
        ));
    }
}

/// Whether `a` is `b` or lies below it.
fn inside(a: &str, b: &str) -> bool {
    b == "/" || a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
}

/// Whether `a` is `b` or a directory above or below it.
fn overlaps(a: &str, b: &str) -> bool {
    inside(a, b) || inside(b, a)
}

fn projections(at: &dyn Fn(&str) -> String, role: &RoleSpec, errors: &mut Vec<FieldError>) {
    for (j, p) in role.volume_projections.iter().enumerate() {
        let field = at(&format!(".volumeProjections[{j}].mountPath"));
        let path = p.mount_path.as_str();
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            errors.push(err(
                field,
                format!("{path:?} must be an absolute path without a trailing slash (e.g. \"/data/shared\")"),
            ));
            continue;
        }
        if role.volume_projections[..j]
            .iter()
            .any(|q| q.mount_path == p.mount_path)
        {
            errors.push(err(field, format!("{path:?} is mounted more than once in this role")));
            continue;
        }
        // Not a system path nor above one (that would hide it); below one (a tree beside /etc's
        // persisted files, say) is fine, except in the runtime filesystems.
        let system = SYSTEM_PATHS.iter().find(|s| inside(s, path));
        let runtime = RUNTIME_TREES.iter().find(|t| overlaps(path, t));
        if let Some(clash) = system.or(runtime) {
            errors.push(err(
                field,
                format!("{path:?} clashes with {clash:?}, which the member's own volumes or runtime use"),
            ));
        }
        if p.pvc_name.is_empty() {
            errors.push(err(
                at(&format!(".volumeProjections[{j}].pvcName")),
                "is required".to_string(),
            ));
        }
    }
}

fn shared_memory(at: &dyn Fn(&str) -> String, role: &RoleSpec, errors: &mut Vec<FieldError>) {
    let Some(q) = &role.shared_memory else {
        return;
    };
    let Some(size) = parse_quantity(q) else {
        errors.push(err(
            at(".sharedMemory"),
            format!("{:?} is not a quantity (e.g. \"1Gi\")", q.0),
        ));
        return;
    };
    if size <= 0.0 {
        errors.push(err(at(".sharedMemory"), format!("{:?} must be above 0", q.0)));
        return;
    }
    // /dev/shm is memory-backed: it counts against the container's memory limit.
    let limit = role
        .resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .and_then(parse_quantity);
    if let Some(limit) = limit.filter(|l| size > *l) {
        errors.push(err(
            at(".sharedMemory"),
            format!(
                "{:?} is above the role's memory limit ({limit} bytes): /dev/shm counts against it",
                q.0
            ),
        ));
    }
}

fn injections(at: &dyn Fn(&str) -> String, role: &RoleSpec, errors: &mut Vec<FieldError>) {
    for (j, f) in role.file_injections.iter().enumerate() {
        let scheme_ok = ["file://", "http://", "https://"]
            .iter()
            .any(|s| f.src_url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
        if !scheme_ok {
            errors.push(err(
                at(&format!(".fileInjections[{j}].srcURL")),
                format!("{:?} is not a file://, http:// or https:// URL", f.src_url),
            ));
        }
        if !f.dest_dir.starts_with('/') {
            errors.push(err(
                at(&format!(".fileInjections[{j}].destDir")),
                format!("{:?} must be an absolute path (e.g. \"/etc/app\")", f.dest_dir),
            ));
        }
    }
}

/// Every rule of this module for role `i`.
pub fn check(i: usize, role: &RoleSpec) -> Vec<FieldError> {
    let at = |field: &str| format!("spec.roles[{i}]{field}");
    let mut errors = Vec::new();
    labels(&at(".podLabels"), role.pod_labels.as_ref(), &mut errors);
    labels(&at(".serviceLabels"), role.service_labels.as_ref(), &mut errors);
    annotations(&at(".podAnnotations"), role.pod_annotations.as_ref(), &mut errors);
    annotations(
        &at(".serviceAnnotations"),
        role.service_annotations.as_ref(),
        &mut errors,
    );
    projections(&at, role, &mut errors);
    shared_memory(&at, role, &mut errors);
    injections(&at, role, &mut errors);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_paths_follow_kubernetes_rules() {
        assert!(key_problem("app").is_none() && key_problem("example.com/app-1.x_y").is_none());
        assert!(key_problem("Example.com/app").is_some());
        assert!(key_problem("-app").is_some() && key_problem("").is_some() && key_problem("a/").is_some());
        assert!(key_problem(&"a".repeat(64)).is_some());
        assert!(qualified_part("v1.2_x") && !qualified_part("v1 2") && !qualified_part("x-"));
        assert!(overlaps("/opt", "/opt/guestconfig") && overlaps("/run/x", "/run") && !overlaps("/runner", "/run"));
    }

    #[test]
    fn projections_clash_with_the_members_own_paths_only() {
        let role = |paths: &[&str]| {
            let mut r: RoleSpec =
                serde_json::from_value(serde_json::json!({"id": "r", "resources": {}})).expect("role");
            r.volume_projections = paths
                .iter()
                .map(|p| crate::api::cluster::VolumeProjection {
                    pvc_name: "shared".into(),
                    mount_path: p.to_string(),
                    read_only: None,
                })
                .collect();
            r
        };
        assert!(check(0, &role(&["/data/shared", "/srv"])).is_empty());
        for bad in ["/opt", "/tmp", "/proc/x", "/", "data", "/data/"] {
            assert_eq!(check(0, &role(&[bad])).len(), 1, "{bad}");
        }
        let dup = check(0, &role(&["/data", "/data"]));
        assert!(dup.len() == 1 && dup[0].message.contains("more than once"), "{dup:?}");
        // Inside /etc is allowed (a file tree beside the persisted one), /etc itself is not.
        assert!(check(0, &role(&["/etc/app-shared"])).is_empty());
        assert_eq!(check(0, &role(&["/etc"])).len(), 1);
    }
}
