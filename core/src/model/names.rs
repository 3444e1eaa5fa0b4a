//! Names of child objects. They are deterministic (derived from the CR's uid or name), so a restarted
//! operator or a second replica computes the same names and never creates a second StatefulSet for a
//! role. Names already recorded in status win, so clusters created by KubeDirector (random suffixes)
//! keep their objects.

use crate::api::common::NamingScheme;

/// Longest StatefulSet name under CrNameRole: pod names add `-<ordinal>` and member Services `s-`,
/// and both must stay valid DNS labels (63).
pub const MAX_CRNAMEROLE_LEN: usize = 46;

/// FNV-1a, 64 bit: tiny, fixed forever (names derived from it must never change between versions).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `len` lower-case base-36 characters of a hash.
fn base36(mut n: u64, len: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn uid_suffix(cr_uid: &str, salt: &str) -> String {
    base36(fnv1a64(format!("{cr_uid}/{salt}").as_bytes()), 5)
}

/// Lower case, `.`/`_` → `-`, anything else invalid dropped, at most `max` characters, no leading or
/// trailing `-`. Truncated names get a hash suffix so that two long role ids never collide.
pub fn mangle(raw: &str, max: usize) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c == '.' || c == '_' { '-' } else { c })
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.len() <= max {
        return trimmed.to_string();
    }
    let suffix = base36(fnv1a64(raw.as_bytes()), 5);
    let head = trimmed[..max - 6].trim_end_matches('-');
    format!("{head}-{suffix}")
}

/// Name of the cluster's headless Service.
pub fn headless_service(scheme: NamingScheme, cr_name: &str, cr_uid: &str, recorded: Option<&str>) -> String {
    if let Some(name) = recorded.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    match scheme {
        NamingScheme::Uid => format!("kdhs-{}", uid_suffix(cr_uid, "headless")),
        NamingScheme::CrNameRole => mangle(cr_name, MAX_CRNAMEROLE_LEN),
    }
}

/// Name of a role's StatefulSet.
pub fn statefulset(scheme: NamingScheme, cr_name: &str, cr_uid: &str, role_id: &str, recorded: Option<&str>) -> String {
    if let Some(name) = recorded.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    match scheme {
        NamingScheme::Uid => format!("kdss-{}", uid_suffix(cr_uid, &format!("role/{role_id}"))),
        NamingScheme::CrNameRole => mangle(&format!("{cr_name}-{role_id}"), MAX_CRNAMEROLE_LEN),
    }
}

pub fn pod(statefulset: &str, ordinal: usize) -> String {
    format!("{statefulset}-{ordinal}")
}

/// Ordinal of a pod of `statefulset`, if `pod` is one.
pub fn ordinal_of(statefulset: &str, pod: &str) -> Option<usize> {
    pod.strip_prefix(statefulset)?.strip_prefix('-')?.parse().ok()
}

/// A member's Service under the UID scheme: `s-<pod>`.
pub fn member_service(pod: &str) -> String {
    format!("s-{pod}")
}

/// A member's Service: `s-<pod>`, or the pod's own name (`bare`, KubeDirector's CrNameRole form).
pub fn member_service_named(bare: bool, pod: &str) -> String {
    if bare { pod.to_string() } else { member_service(pod) }
}

/// Whether new members of a role get bare Service names: as the role's recorded members have them
/// (a cluster keeps one form, whoever made it), else KubeDirector's rule for the scheme.
pub fn bare_member_services<'a>(scheme: NamingScheme, recorded: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    for (pod, service) in recorded {
        if service == pod {
            return true;
        }
        if service == member_service(pod) {
            return false;
        }
    }
    scheme == NamingScheme::CrNameRole
}

/// The volumeClaimTemplate holding the persisted directories; its PVCs are `p-<pod>`.
pub const STORAGE_CLAIM: &str = "p";

/// Block device claim templates `b0`, `b1`, …; PVCs `b<i>-<pod>`.
pub fn block_claim(index: usize) -> String {
    format!("b{index}")
}

pub fn pvc(claim: &str, pod: &str) -> String {
    format!("{claim}-{pod}")
}

/// The pod a member PVC belongs to (`p-<pod>` or `b<i>-<pod>`).
pub fn pod_of_pvc(pvc: &str) -> Option<&str> {
    if let Some(pod) = pvc.strip_prefix("p-") {
        return Some(pod);
    }
    let rest = pvc.strip_prefix('b')?;
    let (digits, pod) = rest.split_once('-')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_names_are_deterministic_and_short() {
        let a = statefulset(NamingScheme::Uid, "c", "0f1e-uid", "worker", None);
        assert_eq!(a, statefulset(NamingScheme::Uid, "c", "0f1e-uid", "worker", None));
        assert_ne!(a, statefulset(NamingScheme::Uid, "c", "0f1e-uid", "controller", None));
        assert_ne!(a, statefulset(NamingScheme::Uid, "c", "other-uid", "worker", None));
        assert!(a.starts_with("kdss-") && a.len() == 10, "{a}");
        assert!(headless_service(NamingScheme::Uid, "c", "u", None).starts_with("kdhs-"));
    }

    #[test]
    fn recorded_names_win() {
        assert_eq!(
            statefulset(NamingScheme::Uid, "c", "u", "r", Some("kdss-legacy")),
            "kdss-legacy"
        );
        assert_eq!(
            headless_service(NamingScheme::CrNameRole, "c", "u", Some("kdhs-old")),
            "kdhs-old"
        );
    }

    #[test]
    fn crnamerole_mangles_upper_case_dots_and_underscores() {
        assert_eq!(
            statefulset(NamingScheme::CrNameRole, "Spark", "u", "vanilla_centos", None),
            "spark-vanilla-centos"
        );
        assert_eq!(
            statefulset(NamingScheme::CrNameRole, "c", "u", "v1.node", None),
            "c-v1-node"
        );
        assert_eq!(
            statefulset(NamingScheme::CrNameRole, "c", "u", "LoadBalancer", None),
            "c-loadbalancer"
        );
    }

    #[test]
    fn long_names_are_cut_with_a_distinguishing_suffix() {
        let cr = "a-really-long-cluster-name-for-analytics";
        let one = statefulset(NamingScheme::CrNameRole, cr, "u", "worker_role_number_one", None);
        let two = statefulset(NamingScheme::CrNameRole, cr, "u", "worker_role_number_two", None);
        assert!(one.len() <= MAX_CRNAMEROLE_LEN && two.len() <= MAX_CRNAMEROLE_LEN);
        assert_ne!(one, two);
        assert!(!one.ends_with('-') && !one.starts_with('-'));
    }

    #[test]
    fn member_services_keep_the_form_their_role_has() {
        assert!(!bare_member_services(NamingScheme::Uid, []));
        assert!(bare_member_services(NamingScheme::CrNameRole, []));
        // A CrNameRole cluster made by an earlier version of this operator keeps `s-`.
        assert!(!bare_member_services(NamingScheme::CrNameRole, [("c-w-0", "s-c-w-0")]));
        assert!(bare_member_services(NamingScheme::Uid, [("c-w-0", "c-w-0")]));
        // Members without a Service ("n/a") say nothing.
        assert!(bare_member_services(NamingScheme::CrNameRole, [("c-w-0", "n/a")]));
    }

    #[test]
    fn ordinals_round_trip() {
        assert_eq!(ordinal_of("kdss-abcde", &pod("kdss-abcde", 12)), Some(12));
        assert_eq!(ordinal_of("kdss-abcde", "kdss-abcdef-1"), None);
        assert_eq!(pvc(STORAGE_CLAIM, "kdss-abcde-0"), "p-kdss-abcde-0");
        assert_eq!(member_service("kdss-abcde-0"), "s-kdss-abcde-0");
        assert_eq!(member_service_named(true, "c-worker-0"), "c-worker-0");
        assert_eq!(pod_of_pvc("p-kdss-abcde-0"), Some("kdss-abcde-0"));
        assert_eq!(pod_of_pvc("b12-kdss-abcde-3"), Some("kdss-abcde-3"));
        assert_eq!(pod_of_pvc("data-x-0"), None);
    }
}
