//! Lease operations with resourceVersion-conditional writes, and expiry judged by observation.
//!
//! Why not kube-leader-election: it takes over an expired Lease with a merge patch that carries no
//! resourceVersion, so two replicas that both see the Lease expired can both "acquire" it and both
//! act on the shard. Here every create and update is conditional (create fails with 409 if the Lease
//! exists, replace fails with 409 if it changed since we read it): exactly one contender wins.
//!
//! Expiry never compares clocks of different machines: a Lease is expired when *we* have seen no
//! change to it (same resourceVersion) for `lease_duration` on our own monotonic clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

pub const LABEL: &str = "kubedirector.hpe.com/lease";
pub const RELEASED_AT: &str = "kubedirector.hpe.com/released-at";

const SHARD_PREFIX: &str = "kubedirector-shard-";

pub fn shard_lease(shard: u32) -> String {
    format!("{SHARD_PREFIX}{shard}")
}

/// The shard a Lease name stands for (`None` for membership and other Leases).
pub fn shard_of_lease(name: &str) -> Option<u32> {
    name.strip_prefix(SHARD_PREFIX)?.parse().ok()
}

/// Who holds each held shard, from a list of Leases (what tests and the loadtest read from the API;
/// the manager keeps its own view).
pub fn holders(leases: &[Lease]) -> BTreeMap<u32, String> {
    leases
        .iter()
        .filter_map(|l| Some((shard_of_lease(l.metadata.name.as_deref()?)?, holder(l)?.to_string())))
        .collect()
}

pub fn replica_lease(replica: &str) -> String {
    format!("kubedirector-replica-{replica}")
}

pub fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// When each Lease last changed, by our clock.
#[derive(Default, Debug)]
pub struct Observer {
    seen: BTreeMap<String, (String, Instant)>,
}

impl Observer {
    pub fn observe(&mut self, lease: &Lease, now: Instant) {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        match self.seen.get(&name) {
            Some((old, _)) if *old == rv => {}
            _ => {
                self.seen.insert(name, (rv, now));
            }
        }
    }

    /// When a held Lease will count as expired unless it changes again.
    pub fn expires_at(&self, lease: &Lease, duration: Duration) -> Option<Instant> {
        holder(lease)?;
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        self.seen.get(name).map(|(_, at)| *at + duration)
    }

    /// Held, and changed within `duration` (renewals change the resourceVersion).
    pub fn live_holder<'a>(&self, lease: &'a Lease, duration: Duration, now: Instant) -> Option<&'a str> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        let fresh = self
            .seen
            .get(name)
            .is_some_and(|(_, at)| now.duration_since(*at) < duration);
        holder(lease).filter(|_| fresh)
    }
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn spec(me: Option<&str>, duration: Duration, transitions: i32, acquire: bool, prev: Option<&LeaseSpec>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: me.map(str::to_string),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if acquire {
            Some(now_micro())
        } else {
            prev.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(now_micro()),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Creates the Lease held by `me`; `Ok(None)` if someone else created it first.
pub async fn create(api: &Api<Lease>, name: &str, me: &str, duration: Duration) -> Result<Option<Lease>, kube::Error> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(LABEL.to_string(), "true".to_string())])),
            ..Default::default()
        },
        spec: Some(spec(Some(me), duration, 0, true, None)),
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(l) => Ok(Some(l)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `current` (as we read it) with one held by `holder`; `Ok(None)` if it changed meanwhile.
pub async fn replace(
    api: &Api<Lease>,
    current: &Lease,
    holder: Option<&str>,
    duration: Duration,
    released: bool,
) -> Result<Option<Lease>, kube::Error> {
    let prev = current.spec.as_ref();
    let same_holder = prev.and_then(|p| p.holder_identity.as_deref()) == holder;
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0) + i32::from(!same_holder && holder.is_some());
    let mut next = current.clone();
    next.spec = Some(spec(holder, duration, transitions, !same_holder, prev));
    let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if released {
        annotations.insert(RELEASED_AT.to_string(), jiff::Timestamp::now().to_string());
    } else if !same_holder {
        annotations.remove(RELEASED_AT);
    }
    let name = current.metadata.name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &next).await {
        Ok(l) => Ok(Some(l)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn holders_only_of_held_shard_leases() {
        let leases = [
            lease(&shard_lease(3), Some("r0")),
            lease(&shard_lease(4), Some("")),
            lease(&shard_lease(5), None),
            lease(&replica_lease("r0"), Some("r0")),
            lease("kubedirector-shard-x", Some("r1")),
        ];
        assert_eq!(holders(&leases), BTreeMap::from([(3, "r0".to_string())]));
        assert_eq!(shard_of_lease("kubedirector-shard-31"), Some(31));
        assert_eq!(shard_of_lease(&replica_lease("r0")), None);
    }
}
