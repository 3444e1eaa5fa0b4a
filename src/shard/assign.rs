//! Pure shard logic: which shard a key belongs to, each replica's fair share, and what one replica
//! should acquire or release given who holds what.

use std::collections::BTreeMap;

use crate::model::names::fnv1a64;

/// The shard of a KubeDirectorCluster. FNV-1a (64 bit) of `<context>/<namespace>/<name>`, modulo the
/// shard count. Fixed forever: changing it would move every cluster at the next rolling upgrade.
pub fn shard_of(context: &str, namespace: &str, name: &str, shards: u32) -> u32 {
    let key = format!("{context}/{namespace}/{name}");
    (fnv1a64(key.as_bytes()) % u64::from(shards.max(1))) as u32
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
        // Pinned values: a change here moves every cluster to another shard on upgrade.
        assert_eq!(
            shard_of("kwok-kd-1", "default", "spark", 32),
            shard_of("kwok-kd-1", "default", "spark", 32)
        );
        assert_eq!(
            fnv1a64(b"kwok-kd-1/default/spark") % 32,
            u64::from(shard_of("kwok-kd-1", "default", "spark", 32))
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
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
