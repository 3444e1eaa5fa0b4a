//! Pure shard logic: which shard a key belongs to, each replica's fair share, and what one replica
//! should acquire or release given who holds what.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::labels::{self, BUCKETS, SHARD_BUCKET};
use crate::model::names::fnv1a64;

/// The version of the shard function and Lease protocol below. Replicas of different versions put a
/// cluster in different shards, so they must never act at once (`shard::manager`): every Lease we
/// write carries it, and a replica holds no shard while a live replica of another version exists.
/// Version 1 (no annotation) was `FNV-1a-64("<context>/<namespace>/<name>") mod shards`.
pub const PROTOCOL: &str = "2";

/// The shard of a KubeDirectorCluster: its bucket (`labels::shard_bucket`, which every child
/// written here carries as a label), turned by the member's rotation, modulo the shard count. So a
/// replica's share of a member is a set of buckets, which a label selector can ask the API server
/// for. The rotation (FNV-1a-64 of the context) spreads clusters of the same name in different
/// members over different shards.
pub fn shard_of(context: &str, namespace: &str, name: &str, shards: u32) -> u32 {
    shard_of_bucket(context, labels::shard_bucket(namespace, name), shards)
}

fn shard_of_bucket(context: &str, bucket: u32, shards: u32) -> u32 {
    Rotation::of(context, shards).shard(bucket)
}

/// A member's rotation for a shard count: hashed once, applied to any number of buckets.
struct Rotation {
    by: u64,
    shards: u64,
}

impl Rotation {
    fn of(context: &str, shards: u32) -> Self {
        let shards = u64::from(shards.max(1));
        Self {
            by: fnv1a64(context.as_bytes()) % shards,
            shards,
        }
    }

    fn shard(&self, bucket: u32) -> u32 {
        ((u64::from(bucket) + self.by) % self.shards) as u32
    }
}

/// The buckets of `held` shards in member `context`, as a label selector asks for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Buckets {
    /// No shard held: nothing to watch.
    None,
    /// Every shard held: every labelled child.
    All,
    /// These buckets (when they are at most half of them).
    In(Vec<u32>),
    /// Every bucket but these (the shorter selector when more than half are held).
    NotIn(Vec<u32>),
}

impl Buckets {
    pub fn of(context: &str, held: &BTreeSet<u32>, shards: u32) -> Buckets {
        let rotation = Rotation::of(context, shards);
        let (inside, outside): (Vec<u32>, Vec<u32>) = (0..BUCKETS).partition(|b| held.contains(&rotation.shard(*b)));
        if inside.is_empty() {
            Buckets::None
        } else if outside.is_empty() {
            Buckets::All
        } else if inside.len() <= outside.len() {
            Buckets::In(inside)
        } else {
            Buckets::NotIn(outside)
        }
    }

    /// Whether a child labelled with `bucket` is selected.
    pub fn contains(&self, bucket: u32) -> bool {
        match self {
            Buckets::None => false,
            Buckets::All => true,
            Buckets::In(b) => b.binary_search(&bucket).is_ok(),
            Buckets::NotIn(b) => b.binary_search(&bucket).is_err(),
        }
    }

    /// The label selector requirements (comma-joined, ANDed with others); `None` selects nothing.
    pub fn selector(&self) -> Option<String> {
        let list = |b: &[u32]| b.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        match self {
            Buckets::None => None,
            Buckets::All => Some(SHARD_BUCKET.to_string()),
            Buckets::In(b) => Some(format!("{SHARD_BUCKET} in ({})", list(b))),
            // `notin` alone also matches children without the label: those are watched apart.
            Buckets::NotIn(b) => Some(format!("{SHARD_BUCKET},{SHARD_BUCKET} notin ({})", list(b))),
        }
    }
}

/// Most shards one replica may hold: ceil(shards / live replicas).
pub fn fair_share(shards: u32, live: usize) -> u32 {
    let live = live.max(1) as u32;
    shards.div_ceil(live)
}

/// This replica's share: floor(shards / live), plus one for the first `shards mod live` replicas in
/// id order. Never above `fair_share`, and the shares add up to exactly `shards`, so a cap of
/// ceil alone (which can leave 50 shards over 6 replicas as 9,9,9,9,9,5) never happens.
pub fn target(me: &str, live: &[String], shards: u32) -> u32 {
    let mut sorted: Vec<&String> = live.iter().collect();
    sorted.sort();
    let n = sorted.len().max(1) as u32;
    let rank = sorted.iter().position(|r| r.as_str() == me).unwrap_or(sorted.len()) as u32;
    shards / n + u32::from(rank < shards % n)
}

/// What one replica should do this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    pub acquire: Vec<u32>,
    pub release: Vec<u32>,
}

/// `holders[s]` is the live holder of shard `s` (absent = free or expired). `live` includes `me`.
/// A replica above its fair share releases its highest shards; below it, it takes free shards in an
/// order that differs per replica (so that replicas starting together do not all race for shard 0).
pub fn plan_moves(me: &str, live: &[String], holders: &BTreeMap<u32, String>, shards: u32) -> Moves {
    let share = target(me, live, shards) as usize;
    let mine: Vec<u32> = (0..shards)
        .filter(|s| holders.get(s).map(String::as_str) == Some(me))
        .collect();
    let mut moves = Moves::default();
    if mine.len() > share {
        moves.release = mine[share..].to_vec();
        return moves;
    }
    let want = share - mine.len();
    let mut free: Vec<u32> = (0..shards).filter(|s| !holders.contains_key(s)).collect();
    let offset = (fnv1a64(me.as_bytes()) % u64::from(shards.max(1))) as u32;
    free.sort_by_key(|s| (s + shards - offset) % shards.max(1));
    moves.acquire = free.into_iter().take(want).collect();
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    /// Runs rounds of `plan_moves` for every live replica (in the given order) until nothing moves;
    /// returns the final holders and how many shards each replica gained or lost on the way.
    fn settle(
        live: &[String],
        mut holders: BTreeMap<u32, String>,
        shards: u32,
        order: &[usize],
    ) -> (BTreeMap<u32, String>, BTreeMap<String, usize>) {
        let mut moved: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..50 {
            let mut changed = false;
            for &i in order {
                let me = &live[i % live.len()];
                let m = plan_moves(me, live, &holders, shards);
                for s in &m.release {
                    holders.remove(s);
                    *moved.entry(me.clone()).or_default() += 1;
                    changed = true;
                }
                for s in m.acquire {
                    // A conditional write: only one replica wins a free shard.
                    if let std::collections::btree_map::Entry::Vacant(e) = holders.entry(s) {
                        e.insert(me.clone());
                        *moved.entry(me.clone()).or_default() += 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        (holders, moved)
    }

    #[test]
    fn three_replicas_take_ten_or_eleven_of_32() {
        let live = ids(3);
        let (holders, _) = settle(&live, BTreeMap::new(), 32, &[0, 1, 2]);
        assert_eq!(holders.len(), 32);
        for r in &live {
            let n = holders.values().filter(|h| *h == r).count();
            assert!(n == 10 || n == 11, "{r} holds {n}");
        }
    }

    #[test]
    fn shard_function_is_fixed() {
        // Pinned values: a change here moves every cluster to another shard on upgrade, and needs a
        // new PROTOCOL.
        let rotation = fnv1a64(b"kwok-kd-1") % 32;
        let bucket = fnv1a64(b"default/spark") % u64::from(BUCKETS);
        assert_eq!(
            u64::from(shard_of("kwok-kd-1", "default", "spark", 32)),
            (bucket + rotation) % 32
        );
        assert_eq!(shard_of("kwok-kd-1", "default", "spark", 32), 25);
        assert_eq!(shard_of("kwok-kd-2", "default", "spark", 32), 0);
        assert_eq!(shard_of("kwok-kd-1", "default", "spark", 1), 0);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bucket_selectors_take_the_shorter_form() {
        let held = |s: &[u32]| s.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(Buckets::of("c", &held(&[]), 32), Buckets::None);
        assert_eq!(Buckets::None.selector(), None);
        let all = Buckets::of("c", &held(&(0..32).collect::<Vec<_>>()), 32);
        assert_eq!(all, Buckets::All);
        assert_eq!(all.selector().as_deref(), Some(SHARD_BUCKET));
        let few = Buckets::of("c", &held(&[0, 1]), 32);
        assert!(matches!(&few, Buckets::In(b) if b.len() == 256));
        assert!(
            few.selector()
                .is_some_and(|s| s.starts_with(&format!("{SHARD_BUCKET} in (")))
        );
        let most = Buckets::of("c", &held(&(0..20).collect::<Vec<_>>()), 32);
        assert!(matches!(&most, Buckets::NotIn(b) if b.len() == 12 * 128));
        assert!(
            most.selector()
                .is_some_and(|s| s.starts_with(&format!("{SHARD_BUCKET},{SHARD_BUCKET} notin (")))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A cluster's children are selected by a replica's buckets exactly when the replica holds
        /// the cluster's shard: what the API server sends is what the shard gate lets through.
        #[test]
        fn buckets_select_exactly_the_held_shards(shards in 1u32..70, held in proptest::collection::btree_set(0u32..70, 0..70), context in "[a-z0-9-]{1,12}", names in proptest::collection::vec("[a-z0-9-]{1,20}", 1..40)) {
            let held: BTreeSet<u32> = held.into_iter().filter(|s| *s < shards).collect();
            let buckets = Buckets::of(&context, &held, shards);
            for name in &names {
                let bucket = labels::shard_bucket("ns", name);
                prop_assert_eq!(
                    buckets.contains(bucket),
                    held.contains(&shard_of(&context, "ns", name, shards))
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// From any starting ownership, every shard ends up owned exactly once and nobody exceeds
        /// the fair share.
        #[test]
        fn every_shard_owned_once(shards in 1u32..64, n in 1usize..8, seed in any::<u64>(), order in proptest::collection::vec(0usize..8, 1..20)) {
            let live = ids(n);
            let mut holders = BTreeMap::new();
            let mut x = seed | 1;
            for s in 0..shards {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if x % 3 != 0 {
                    holders.insert(s, live[(x as usize) % n].clone());
                }
            }
            let mut full_order = order.clone();
            full_order.extend(0..n);
            let (end, _) = settle(&live, holders, shards, &full_order);
            prop_assert_eq!(end.len() as u32, shards);
            let share = fair_share(shards, n) as usize;
            for r in &live {
                prop_assert!(end.values().filter(|h| *h == r).count() <= share);
            }
        }

        /// When a replica joins or leaves a settled fleet, each replica gains or loses at most the
        /// ideal difference of its share plus one.
        #[test]
        fn joins_and_leaves_move_little(shards in 4u32..64, n in 2usize..7, join in any::<bool>()) {
            let before = ids(n);
            let (settled, _) = settle(&before, BTreeMap::new(), shards, &(0..n).collect::<Vec<_>>());
            let after: Vec<String> = if join { ids(n + 1) } else { ids(n - 1) };
            let mut holders = settled.clone();
            if !join {
                let gone = &before[n - 1];
                holders.retain(|_, h| h != gone); // its leases expire
            }
            let order: Vec<usize> = (0..after.len()).collect();
            let (end, moved) = settle(&after, holders, shards, &order);
            prop_assert_eq!(end.len() as u32, shards);
            let ideal = fair_share(shards, n).abs_diff(fair_share(shards, after.len())) as usize;
            for r in &after {
                let held = end.values().filter(|h| *h == r).count() as u32;
                prop_assert!(held == shards / after.len() as u32 || held == fair_share(shards, after.len()), "{} holds {}", r, held);
            }
            for r in &after {
                let m = moved.get(r).copied().unwrap_or(0);
                let held_before = settled.values().filter(|h| *h == r).count();
                // A newcomer takes its whole share; everyone else moves at most ideal + 1.
                let bound = if held_before == 0 { fair_share(shards, after.len()) as usize } else { ideal + 1 };
                prop_assert!(m <= bound, "{} moved {} shards (bound {})", r, m, bound);
            }
        }
    }
}
