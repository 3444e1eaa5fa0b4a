//! Lease operations with resourceVersion-conditional writes, and expiry judged by observation.
//!
//! Why not kube-leader-election: it takes over an expired Lease with a merge patch that carries no
//! resourceVersion, so two replicas that both see the Lease expired can both "acquire" it and both
//! act on the shard. Here every create and update is conditional (create fails with 409 if the Lease
//! exists, replace fails with 409 if it changed since we read it): exactly one contender wins.
//!
//! Expiry never compares clocks of different machines: a Lease is expired when *we* have seen no
//! change to it (same resourceVersion) for `lease_duration` on our own monotonic clock.
//!
//! Shard Leases are written only when they change hands (acquire, release, take over); their
//! holder keeps them by renewing its one membership Lease (see `shard_holder`, `end_membership`
//! and docs/sharding.md for the safety argument).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

pub const LABEL: &str = "kubedirector.hpe.com/lease";
pub const RELEASED_AT: &str = "kubedirector.hpe.com/released-at";
/// On every Lease we write: the shard protocol of the writer (`assign::PROTOCOL`). On a membership
/// Lease, written by its holder alone, it is the holder's.
pub const PROTOCOL: &str = "kubedirector.hpe.com/shard-protocol";

const REPLICA_PREFIX: &str = "kubedirector-replica-";

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
    format!("{REPLICA_PREFIX}{replica}")
}

/// Whether a Lease is a replica's membership Lease (written by that replica alone).
pub fn is_membership(lease: &Lease) -> bool {
    lease
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with(REPLICA_PREFIX))
}

/// Live replicas (other than `me`) that speak another shard protocol (none written: version 1).
/// They put clusters in other shards, so while one lives this replica must hold no shard.
pub fn foreign_replicas<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    me: &str,
    observer: &Observer,
    duration: Duration,
    now: Instant,
) -> Vec<String> {
    leases
        .into_iter()
        .filter(|l| is_membership(l))
        .filter(|l| protocol(l) != Some(crate::shard::assign::PROTOCOL))
        .filter_map(|l| observer.live_holder(l, duration, now))
        .filter(|h| *h != me)
        .map(str::to_string)
        .collect()
}

fn protocol(lease: &Lease) -> Option<&str> {
    lease.metadata.annotations.as_ref()?.get(PROTOCOL).map(String::as_str)
}

fn ours() -> BTreeMap<String, String> {
    BTreeMap::from([(PROTOCOL.to_string(), crate::shard::assign::PROTOCOL.to_string())])
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

/// The live holder of a shard Lease. Holders renew only their membership Lease (one write per
/// replica per retry period, whatever it holds), so a shard's holder is live while its membership
/// is. A holder whose membership we have not seen (yet) counts as live while the shard Lease itself
/// is fresh by our observation; taking its shard then still goes through `end_membership`.
pub fn shard_holder<'a>(
    shard: &'a Lease,
    membership: Option<&Lease>,
    observer: &Observer,
    duration: Duration,
    now: Instant,
) -> Option<&'a str> {
    let h = holder(shard)?;
    match membership {
        Some(m) => (observer.live_holder(m, duration, now) == Some(h)).then_some(h),
        None => observer.live_holder(shard, duration, now),
    }
}

/// Ends `replica`'s membership so that its shards may be taken. Conditional on the version we saw:
/// `Ok(false)` if it changed since (the replica renewed: it is alive and still acting). Where we saw
/// none, a tombstone is created in its place (`Ok(false)` if one exists after all). Either way the
/// replica's next renewal fails with a conflict, so it learns that its shards are gone; and it had
/// stopped acting a renew deadline after its last successful renewal, before we saw that renewal
/// go stale for a whole lease duration.
pub async fn end_membership(
    api: &Api<Lease>,
    seen: Option<&Lease>,
    replica: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    match seen {
        Some(l) if holder(l).is_none() => Ok(true),
        Some(l) => Ok(replace(api, l, None, duration, false).await?.is_some()),
        None => Ok(create(api, &replica_lease(replica), None, duration).await?.is_some()),
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

/// Creates the Lease held by `holder` (none: a tombstone); `Ok(None)` if someone else created it first.
pub async fn create(
    api: &Api<Lease>,
    name: &str,
    holder: Option<&str>,
    duration: Duration,
) -> Result<Option<Lease>, kube::Error> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(LABEL.to_string(), "true".to_string())])),
            annotations: Some(ours()),
            ..Default::default()
        },
        spec: Some(spec(holder, duration, 0, holder.is_some(), None)),
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
    annotations.extend(ours());
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

    fn versioned(mut l: Lease, rv: &str) -> Lease {
        l.metadata.resource_version = Some(rv.to_string());
        l
    }

    #[test]
    fn a_shard_is_held_while_its_holders_membership_is_renewed() {
        let d = Duration::from_secs(10);
        let t0 = Instant::now();
        let shard = versioned(lease(&shard_lease(1), Some("r0")), "5");
        let member = versioned(lease(&replica_lease("r0"), Some("r0")), "7");
        let mut o = Observer::default();
        o.observe(&shard, t0);
        o.observe(&member, t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(shard_holder(&shard, Some(&member), &o, d, at(5)), Some("r0"));
        // The shard Lease is never renewed; the membership is: still held at 15 s.
        let renewed = versioned(lease(&replica_lease("r0"), Some("r0")), "9");
        o.observe(&renewed, at(8));
        assert_eq!(shard_holder(&shard, Some(&renewed), &o, d, at(15)), Some("r0"));
        // Membership unrenewed for a lease duration: free.
        assert_eq!(shard_holder(&shard, Some(&renewed), &o, d, at(18)), None);
        // A membership ended (tombstone, or released) frees its shards at once.
        let ended = versioned(lease(&replica_lease("r0"), None), "10");
        o.observe(&ended, at(9));
        assert_eq!(shard_holder(&shard, Some(&ended), &o, d, at(9)), None);
        // Another replica's membership does not hold r0's shard.
        let other = versioned(lease(&replica_lease("r0"), Some("r1")), "11");
        o.observe(&other, at(9));
        assert_eq!(shard_holder(&shard, Some(&other), &o, d, at(9)), None);
        // No membership seen: the shard Lease's own freshness decides.
        assert_eq!(shard_holder(&shard, None, &o, d, at(9)), Some("r0"));
        assert_eq!(shard_holder(&shard, None, &o, d, at(10)), None);
        // A released shard has no holder, whatever the membership.
        let released = versioned(lease(&shard_lease(1), Some("")), "12");
        assert_eq!(shard_holder(&released, Some(&renewed), &o, d, at(9)), None);
    }

    #[test]
    fn replicas_of_another_protocol_are_found_while_live() {
        let d = Duration::from_secs(10);
        let t0 = Instant::now();
        let with = |mut l: Lease, p: Option<&str>| {
            l.metadata.annotations = p.map(|p| BTreeMap::from([(PROTOCOL.to_string(), p.to_string())]));
            l
        };
        let leases = [
            with(versioned(lease(&replica_lease("v1"), Some("v1")), "1"), None),
            with(versioned(lease(&replica_lease("v3"), Some("v3")), "2"), Some("3")),
            with(
                versioned(lease(&replica_lease("same"), Some("same")), "3"),
                Some(crate::shard::assign::PROTOCOL),
            ),
            with(versioned(lease(&replica_lease("gone"), None), "4"), None),
            with(versioned(lease(&shard_lease(0), Some("v1")), "5"), None),
            with(versioned(lease(&replica_lease("me"), Some("me")), "6"), None),
        ];
        let mut o = Observer::default();
        leases.iter().for_each(|l| o.observe(l, t0));
        assert_eq!(
            foreign_replicas(&leases, "me", &o, d, t0),
            vec!["v1".to_string(), "v3".to_string()]
        );
        assert!(
            foreign_replicas(&leases, "me", &o, d, t0 + d).is_empty(),
            "silent for a lease duration: not live"
        );
        assert_eq!(
            ours().get(PROTOCOL).map(String::as_str),
            Some(crate::shard::assign::PROTOCOL)
        );
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
