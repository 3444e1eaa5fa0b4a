//! Sharded replicas as local processes: fair share, reconciles only by the shard's owner, failover
//! after SIGKILL within lease duration + 2 s, and never two replicas reconciling one key at once
//! (checked on the per-reconcile records of every replica).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use kubedirector::api::KubeDirectorCluster;
use kubedirector::shard::assign::shard_of;
use kubedirector::shard::lease;
use kubedirector::shard::record::{self, Reconcile, overlaps};

use crate::fleet::{create, members, prepare, small_cluster, sum_metric, wait_all_configured};
use crate::operator::Operator;
use crate::proxy::{FaultProxy, kubeconfig_with};
use crate::testbed;

const CONTEXTS: [&str; 3] = ["kwok-kd-1", "kwok-kd-2", "kwok-kd-3"];
const SHARDS: u32 = 32;
const LEASE: Duration = Duration::from_secs(4);

/// Every finished reconcile in the replicas' records.
fn records(paths: &[PathBuf]) -> Vec<Reconcile> {
    record::reconciles(&record::read(paths).expect("readable records"))
}

fn micros_now() -> u64 {
    record::micros(SystemTime::now())
}

struct Replicas {
    ops: Vec<Operator>,
    records: Vec<PathBuf>,
}

/// Arguments of sharded replica `id` (test timing: lease 4 s, renew deadline 3 s, retry 1 s) recording
/// its reconciles to `record`, with every test-bed cluster as a member.
fn replica_args<'a>(ns: &'a str, id: &'a str, record: &'a str) -> Vec<&'a str> {
    let mut args = members(&CONTEXTS, ns);
    args.extend(["--shards", "32", "--replica-id", id, "--reconcile-record", record]);
    args.extend([
        "--lease-duration-ms",
        "4000",
        "--renew-deadline-ms",
        "3000",
        "--retry-period-ms",
        "1000",
    ]);
    args
}

fn start_replica(i: usize, ns: &str, sys: &str) -> (Operator, PathBuf) {
    let record = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/{ns}-r{i}.jsonl"));
    let _ = std::fs::remove_file(&record);
    let (id, rec) = (format!("r{i}"), record.display().to_string());
    (
        Operator::start_with(&replica_args(ns, &id, &rec), &format!("{ns}-r{i}"), sys),
        record,
    )
}

fn start_replicas(n: usize, ns: &str, sys: &str) -> Replicas {
    let (ops, records) = (0..n).map(|i| start_replica(i, ns, sys)).unzip();
    Replicas { ops, records }
}

async fn holders(home: &Client, sys: &str) -> BTreeMap<u32, String> {
    let leases = Api::<Lease>::namespaced(home.clone(), sys)
        .list(&ListParams::default())
        .await
        .expect("leases");
    lease::holders(&leases.items)
}

/// Keeps resizing the clusters `s<i>-<n>` (n < per_cluster) every `every`, until aborted.
fn resize_load(clients: &[Client], ns: &str, per_cluster: usize, every: Duration) -> tokio::task::JoinHandle<()> {
    let (clients, ns) = (clients.to_vec(), ns.to_string());
    tokio::spawn(async move {
        for i in 0usize.. {
            let (which, n) = (i % 3, (i / 3) % per_cluster);
            let api = Api::<KubeDirectorCluster>::namespaced(clients[which].clone(), &ns);
            let patch = json!([{"op": "replace", "path": "/spec/roles/1/members", "value": 2 + (i % 2)}]);
            let patch = Patch::<()>::Json(serde_json::from_value(patch).expect("patch"));
            let _ = api
                .patch(&format!("s{which}-{n:03}"), &PatchParams::default(), &patch)
                .await;
            tokio::time::sleep(every).await;
        }
    })
}

async fn create_load(clients: &[Client], ns: &str, per_cluster: usize) {
    for (which, client) in clients.iter().enumerate() {
        for i in 0..per_cluster {
            create(client, ns, &small_cluster(&format!("s{which}-{i:03}"))).await;
        }
    }
}

async fn all_configured(clients: &[Client], ns: &str, per_cluster: usize) {
    for client in clients {
        wait_all_configured(client, ns, per_cluster, Duration::from_secs(180)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn three_replicas_split_the_shards_and_reconcile_only_their_own() {
    let (ns, sys) = (testbed::unique("shard"), testbed::unique("shard-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    let replicas = start_replicas(3, &ns, &sys);
    let started = Instant::now();
    loop {
        let held: Vec<f64> = replicas
            .ops
            .iter()
            .map(|o| sum_metric(&o.metrics(), "kubedirector_shards_held", &[]))
            .collect();
        if held.iter().all(|h| *h == 10.0 || *h == 11.0) && held.iter().sum::<f64>() == 32.0 {
            eprintln!("shards held {held:?} after {:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shards held {held:?} 5 s after start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_load(&clients, &ns, 100).await;
    all_configured(&clients, &ns, 100).await;
    let owners = holders(&clients[0], &sys).await;
    let all = records(&replicas.records);
    assert!(all.len() >= 300, "only {} reconciles recorded", all.len());
    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &all {
        let mut parts = r.key.splitn(3, '/');
        let (c, n, name) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        assert_eq!(
            r.shard,
            shard_of(c, n, name, SHARDS),
            "{} recorded under the wrong shard",
            r.key
        );
        assert_eq!(
            owners.get(&r.shard).map(String::as_str),
            Some(r.replica.as_str()),
            "{} reconciled by {} but shard {} is held by {:?}",
            r.key,
            r.replica,
            r.shard,
            owners.get(&r.shard)
        );
        by_key.entry(&r.key).or_default().insert(&r.replica);
    }
    assert_eq!(by_key.len(), 300, "every cluster was reconciled");
    assert!(
        by_key.values().all(|rs| rs.len() == 1),
        "a key was reconciled by two replicas"
    );
    assert!(overlaps(&all).is_empty());
    caches_hold_the_children_once(&clients, &ns, &replicas).await;
    // Selected by the API server: the children were all made after the shards settled, so no replica
    // received an event of a child of a shard it does not hold (the client-side filter dropped none).
    let dropped: Vec<f64> = replicas
        .ops
        .iter()
        .map(|o| sum_metric(&o.metrics(), "kubedirector_child_events_dropped_total", &[]))
        .collect();
    eprintln!("child events dropped by each replica's own filter: {dropped:?}");
    assert!(
        dropped.iter().all(|d| *d == 0.0),
        "events of other shards reached a replica: {dropped:?}"
    );
    // What the loadtest reads from pods it cannot reach by file: the record over HTTP, and each
    // process's own CPU and memory figures.
    for (op, path) in replicas.ops.iter().zip(&replicas.records) {
        let (code, served) = op.get("/debug/reconcile-record").expect("endpoint answers");
        assert_eq!(code, 200);
        let on_disk = std::fs::read_to_string(path).expect("record file");
        let served_lines = served.lines().count();
        assert!(
            served_lines > 0 && on_disk.starts_with(&served),
            "served {served_lines} lines, a prefix of the file"
        );
        let metrics = op.metrics();
        assert!(sum_metric(&metrics, "kubedirector_process_max_resident_memory_bytes", &[]) > 1e6);
        assert!(sum_metric(&metrics, "kubedirector_process_cpu_seconds", &[]) > 0.0);
    }
}

/// How many objects of kind `K` in `ns` match `lp` (a metadata-only list).
async fn count<K>(client: &Client, ns: &str, lp: &ListParams) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(lp)
        .await
        .unwrap_or_else(|e| panic!("list {}: {e}", K::kind(&K::DynamicType::default())))
        .items
        .len()
}

/// The replicas' child caches are divided by shard: per member and kind, the objects cached over the
/// three replicas add up to the member's objects exactly once, and no replica holds them all.
async fn caches_hold_the_children_once(clients: &[Client], ns: &str, replicas: &Replicas) {
    let lp = ListParams::default().labels("kubedirector.hpe.com/kdcluster");
    for (context, client) in CONTEXTS.iter().zip(clients) {
        let want = [
            ("Pod", count::<Pod>(client, ns, &lp).await),
            ("Service", count::<Service>(client, ns, &lp).await),
            ("StatefulSet", count::<StatefulSet>(client, ns, &lp).await),
        ];
        for (kind, total) in want {
            assert!(total >= 100, "{context}: only {total} {kind}s");
            let started = Instant::now();
            loop {
                // The gauges are refreshed every 5 s.
                let each: Vec<f64> = replicas
                    .ops
                    .iter()
                    .map(|o| {
                        sum_metric(
                            &o.metrics(),
                            "kubedirector_cached_objects",
                            &[("context", context), ("kind", kind)],
                        )
                    })
                    .collect();
                let sum: f64 = each.iter().sum();
                if sum == total as f64 && each.iter().all(|n| *n < total as f64) {
                    eprintln!("{context} {kind}: {total} objects, cached {each:?}");
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{context} {kind}: {total} objects, cached by the replicas {each:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn sigkill_one_of_three_replicas_twenty_times() {
    let (ns, sys) = (testbed::unique("kill"), testbed::unique("kill-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    let mut replicas = start_replicas(3, &ns, &sys);
    create_load(&clients, &ns, 30).await;
    all_configured(&clients, &ns, 30).await;

    // Shards that hold at least one cluster (the others are never reconciled).
    let busy: BTreeSet<u32> = (0..CONTEXTS.len())
        .flat_map(|c| (0..30).map(move |i| (c, i)))
        .map(|(c, i)| shard_of(CONTEXTS[c], &ns, &format!("s{c}-{i:03}"), SHARDS))
        .collect();
    // Load: keep resizing clusters while replicas die.
    let load = resize_load(&clients, &ns, 30, Duration::from_millis(100));

    let mut failovers = Vec::new();
    for round in 0..20 {
        let victim = round % 3;
        let id = format!("r{victim}");
        let shards: Vec<u32> = holders(&clients[0], &sys)
            .await
            .into_iter()
            .filter(|(_, h)| *h == id)
            .map(|(s, _)| s)
            .collect();
        replicas.ops[victim].kill();
        let killed = micros_now();
        // Each of its shards must be reconciled by another replica within lease duration + 2 s.
        // A shard without clusters has nothing to reconcile: its Lease must be held elsewhere.
        let deadline = Instant::now() + LEASE + Duration::from_secs(2) + Duration::from_secs(3);
        let (mut pending, mut idle): (BTreeSet<u32>, BTreeSet<u32>) = shards.iter().partition(|s| busy.contains(s));
        let mut firsts = BTreeMap::new();
        while !(pending.is_empty() && idle.is_empty()) && Instant::now() < deadline {
            for r in records(&replicas.records) {
                if r.replica != id && r.start > killed && pending.contains(&r.shard) {
                    let first = firsts.entry(r.shard).or_insert(r.start);
                    *first = (*first).min(r.start);
                }
            }
            pending.retain(|s| !firsts.contains_key(s));
            let now_held = holders(&clients[0], &sys).await;
            idle.retain(|s| now_held.get(s).is_none_or(|h| *h == id));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            pending.is_empty(),
            "round {round}: shards {pending:?} of {id} not reconciled elsewhere in time"
        );
        assert!(
            idle.is_empty(),
            "round {round}: idle shards {idle:?} of {id} not taken over in time"
        );
        for first in firsts.values() {
            failovers.push((first - killed) as f64 / 1e6);
        }
        replicas.ops[victim].restart();
        // Let it rejoin (hold its share again) before the next kill.
        wait_balanced(&clients[0], &sys, &["r0", "r1", "r2"], Duration::from_secs(20)).await;
    }
    load.abort();
    all_configured(&clients, &ns, 30).await;

    failovers.sort_by(f64::total_cmp);
    let pct = |p: f64| failovers[((failovers.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let (p50, p99, max) = (pct(0.5), pct(0.99), failovers[failovers.len() - 1]);
    let all = records(&replicas.records);
    let bad = overlaps(&all);
    eprintln!(
        "20 SIGKILLs: {} shard failovers, p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s (lease {LEASE:?}); {} reconciles recorded, {} overlaps",
        failovers.len(),
        all.len(),
        bad.len()
    );
    assert!(
        max <= LEASE.as_secs_f64() + 2.0,
        "failover max {max:.2} s exceeds lease + 2 s"
    );
    assert!(bad.is_empty(), "overlapping reconciles: {bad:#?}");
    // No lost cluster (all configured above) and no duplicated child.
    for client in &clients {
        let clusters = Api::<KubeDirectorCluster>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("clusters");
        for c in clusters.items {
            let name = c.metadata.name.clone().unwrap_or_default();
            let lp = ListParams::default().labels(&format!("kubedirector.hpe.com/kdcluster={name}"));
            let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
                .expect("sts")
                .items
                .len();
            let members: usize = c
                .status
                .as_ref()
                .map(|s| s.roles.iter().map(|r| r.members.len()).sum())
                .unwrap_or(0);
            let svcs = Api::<Service>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
                .expect("svc")
                .items
                .len();
            assert_eq!(sts, 2, "{name}: StatefulSets");
            assert_eq!(svcs, members + 1, "{name}: Services");
        }
    }
}

fn releases(paths: &[PathBuf]) -> Vec<(String, u32, u64)> {
    let entries = record::read(paths).expect("readable records");
    record::releases(&entries)
        .into_iter()
        .map(|r| (r.replica, r.shard, r.at))
        .collect()
}

/// Waits until the Leases show every shard held by a live replica, each holding its balanced share.
async fn wait_balanced(home: &Client, sys: &str, live: &[&str], limit: Duration) {
    let start = Instant::now();
    loop {
        let h = holders(home, sys).await;
        let counts: Vec<usize> = live.iter().map(|r| h.values().filter(|x| x == r).count()).collect();
        let ok = h.len() == SHARDS as usize
            && h.values().all(|x| live.contains(&x.as_str()))
            && counts
                .iter()
                .all(|c| *c == 32 / live.len() || *c == 32usize.div_ceil(live.len()));
        if ok {
            eprintln!("balanced over {live:?}: {counts:?} after {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not balanced over {live:?} after {limit:?}: {counts:?}, {} shards held",
            h.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn scaling_three_to_four_to_two_hands_shards_over_gracefully() {
    let (ns, sys) = (testbed::unique("scale"), testbed::unique("scale-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    let mut replicas = start_replicas(3, &ns, &sys);
    create_load(&clients, &ns, 30).await;
    all_configured(&clients, &ns, 30).await;
    wait_balanced(&clients[0], &sys, &["r0", "r1", "r2"], Duration::from_secs(20)).await;
    // Only the handovers of the scaling below count: at start-up every replica grabs what is free
    // and gives it back as the others join, before their caches are even synced.
    let scaling_from = micros_now();

    let (op, record) = start_replica(3, &ns, &sys); // 3 → 4
    replicas.ops.push(op);
    replicas.records.push(record);
    wait_balanced(&clients[0], &sys, &["r0", "r1", "r2", "r3"], Duration::from_secs(20)).await;
    for i in [0, 1] {
        assert!(
            replicas.ops[i].terminate(Duration::from_secs(15)).await,
            "r{i} did not stop gracefully"
        ); // 4 → 2
    }
    wait_balanced(&clients[0], &sys, &["r2", "r3"], Duration::from_secs(20)).await;
    all_configured(&clients, &ns, 30).await;

    let all = records(&replicas.records);
    let mut gaps = Vec::new();
    for (from, shard, at) in releases(&replicas.records).into_iter().filter(|r| r.2 > scaling_from) {
        let next = all
            .iter()
            .filter(|r| r.shard == shard && r.replica != from && r.start > at)
            .map(|r| r.start)
            .min();
        if let Some(first) = next {
            gaps.push((first - at) as f64 / 1e6);
        }
    }
    assert!(!gaps.is_empty(), "no graceful handover recorded");
    gaps.sort_by(f64::total_cmp);
    let p99 = gaps[((gaps.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "{} graceful handovers: p50 {:.3} s, p99 {p99:.3} s, max {:.3} s",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
    assert!(p99 <= 3.0, "handover gap p99 {p99:.3} s");
    assert!(overlaps(&all).is_empty(), "overlapping reconciles");
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_replica_cut_off_from_home_stops_before_its_leases_expire() {
    let (ns, sys) = (testbed::unique("partition"), testbed::unique("partition-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    // r0 reaches the home cluster (kwok-kd-1, where the Leases live) only through the proxy.
    let proxy = FaultProxy::start(clients[0].clone(), 1).await;
    let path = kubeconfig_with(&proxy, "home-via-proxy", &[], &ns);
    let record0 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/{ns}-r0.jsonl"));
    let (path_text, rec0) = (path.display().to_string(), record0.display().to_string());
    let mut args = vec!["--kubeconfig", &path_text, "--home-context", "home-via-proxy"];
    args.extend(replica_args(&ns, "r0", &rec0));
    let r0 = Operator::start_with(&args, &format!("{ns}-r0"), &sys);
    let (r1, record1) = start_replica(1, &ns, &sys);
    let (r2, record2) = start_replica(2, &ns, &sys);
    let paths = vec![record0, record1, record2];
    wait_balanced(&clients[0], &sys, &["r0", "r1", "r2"], Duration::from_secs(20)).await;
    create_load(&clients, &ns, 20).await;
    all_configured(&clients, &ns, 20).await;
    let r0_shards: BTreeSet<u32> = holders(&clients[0], &sys)
        .await
        .into_iter()
        .filter(|(_, h)| h == "r0")
        .map(|(s, _)| s)
        .collect();

    // Keep every cluster busy, then cut r0 off from home.
    let load = resize_load(&clients, &ns, 20, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.reject(true);
    let cut = micros_now();
    // Well past the lease duration: the others must have taken r0's shards by now.
    tokio::time::sleep(Duration::from_secs(9)).await;
    load.abort();

    let all = records(&paths);
    let last_r0 = all
        .iter()
        .filter(|r| r.replica == "r0")
        .map(|r| r.end)
        .max()
        .unwrap_or(0);
    let taken: Vec<u64> = all
        .iter()
        .filter(|r| r.replica != "r0" && r0_shards.contains(&r.shard) && r.start > cut)
        .map(|r| r.start)
        .collect();
    let first_taken = taken.iter().min().copied().unwrap_or(u64::MAX);
    let stop_after = (last_r0.saturating_sub(cut)) as f64 / 1e6;
    let taken_after = (first_taken.saturating_sub(cut)) as f64 / 1e6;
    eprintln!(
        "cut off at t=0: r0's last reconcile ended at +{stop_after:.2} s (renew deadline 3 s); others first reconciled its shards at +{taken_after:.2} s (lease 4 s)"
    );
    assert!(!taken.is_empty(), "r0's shards were not taken over");
    assert!(last_r0 < first_taken, "r0 still acted after its shards were taken over");
    assert!(
        stop_after <= 3.0 + 0.2,
        "r0 acted {stop_after:.2} s after losing home, past its renew deadline"
    );
    assert!(overlaps(&all).is_empty(), "overlapping reconciles");
    drop((r0, r1, r2));
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn idle_replicas_write_one_lease_each_per_retry_period() {
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let (ns, sys) = (testbed::unique("quiet"), testbed::unique("quiet-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    let replicas = start_replicas(3, &ns, &sys);
    wait_balanced(&clients[0], &sys, &["r0", "r1", "r2"], Duration::from_secs(20)).await;
    // Settled: every shard acquired; from now on only renewals should be written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<Lease> = Api::namespaced(clients[0].clone(), &sys);
    let listed = api.list(&ListParams::default()).await.expect("leases");
    let from = listed.metadata.resource_version.unwrap_or_default();
    let window = Duration::from_secs(60);
    let params = WatchParams::default()
        .labels(&format!("{}=true", lease::LABEL))
        .timeout(75);
    let mut events = api.watch(&params, &from).await.expect("watch").boxed();
    let (mut writes, mut shard_writes) = (0u32, 0u32);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        match event.expect("watch event") {
            WatchEvent::Added(l) | WatchEvent::Modified(l) | WatchEvent::Deleted(l) => {
                writes += 1;
                if lease::shard_of_lease(l.metadata.name.as_deref().unwrap_or_default()).is_some() {
                    shard_writes += 1;
                }
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    let periods = window.as_secs_f64() / 1.0; // the tests' retry period is 1 s
    let per_period = f64::from(writes) / periods;
    eprintln!(
        "3 replicas, 32 shards, idle {window:?}: {writes} Lease writes ({shard_writes} of shard Leases), {per_period:.2} per retry period"
    );
    assert_eq!(shard_writes, 0, "a shard Lease was written while nothing changed");
    // One membership renewal per replica per period; the period is jittered by ±20 %.
    assert!(per_period <= 3.0 / 0.8, "{per_period:.2} Lease writes per retry period");
    assert!(
        per_period >= 3.0 / 1.2 * 0.8,
        "replicas stopped renewing: {per_period:.2}"
    );
    drop(replicas);
}

/// A membership Lease as a replica of shard protocol 1 wrote it (no protocol annotation).
fn old_membership(id: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": lease::replica_lease(id), "labels": {lease::LABEL: "true"}},
        "spec": {"holderIdentity": id, "leaseDurationSeconds": 4}
    }))
    .expect("a Lease")
}

async fn shards_held(op: &Operator) -> f64 {
    sum_metric(&op.metrics(), "kubedirector_shards_held", &[])
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_replica_holds_no_shard_while_one_of_another_protocol_lives() {
    let (ns, sys) = (testbed::unique("proto"), testbed::unique("proto-sys"));
    let clients = prepare(&CONTEXTS, &ns, &sys).await;
    let (r0, _record) = start_replica(0, &ns, &sys);
    wait_balanced(&clients[0], &sys, &["r0"], Duration::from_secs(20)).await;
    // A replica of protocol 1 joins (it puts clusters in other shards): r0 hands every shard over.
    let api: Api<Lease> = Api::namespaced(clients[0].clone(), &sys);
    api.create(&Default::default(), &old_membership("old"))
        .await
        .expect("old membership");
    let renewing = {
        let api = api.clone();
        tokio::spawn(async move {
            // Any change renews (others judge liveness by the resourceVersion).
            for i in 1.. {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let renew = json!({"spec": {"leaseTransitions": i}});
                let lease = lease::replica_lease("old");
                api.patch(&lease, &PatchParams::default(), &Patch::Merge(&renew))
                    .await
                    .expect("renewal of the old membership");
            }
        })
    };
    let started = Instant::now();
    while shards_held(&r0).await > 0.0 || holders(&clients[0], &sys).await.values().any(|h| h == "r0") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "r0 still holds shards beside a replica of another protocol"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "r0 handed every shard over {:?} after the old replica joined",
        started.elapsed()
    );
    // It stays that way while the old replica lives.
    tokio::time::sleep(LEASE).await;
    assert_eq!(shards_held(&r0).await, 0.0);
    assert!(!holders(&clients[0], &sys).await.values().any(|h| h == "r0"));
    // The old replica stops (its membership goes silent): r0 takes everything again.
    renewing.abort();
    wait_balanced(&clients[0], &sys, &["r0"], LEASE + Duration::from_secs(10)).await;
    drop(r0);
}

/// Arguments of a sharded replica `id` with one member, `kwok-kd-1` (which is also home).
fn one_member_args<'a>(ns: &'a str, id: &'a str, record: &'a str) -> Vec<&'a str> {
    let mut args = replica_args(ns, id, record);
    for c in &CONTEXTS[1..] {
        if let Some(i) = args.windows(2).position(|w| w == ["--context", c]) {
            args.drain(i..i + 2);
        }
    }
    args
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn a_shard_taken_over_waits_until_its_children_are_listed() {
    let (ns, sys) = (testbed::unique("divided"), testbed::unique("divided-sys"));
    let clients = prepare(&CONTEXTS[..1], &ns, &sys).await;
    // r1 reaches kwok-kd-1 only through the proxy, under the same context name (a key's shard
    // depends on it), so that its lists can be held there.
    let proxy = FaultProxy::start(clients[0].clone(), 1).await;
    let path = kubeconfig_with(&proxy, "kd1-proxied", &["kwok-kd-1"], &ns);
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    for c in &mut kubeconfig.contexts {
        if c.name == "kd1-proxied" {
            c.name = "kwok-kd-1".into();
        }
    }
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("yaml")).expect("write kubeconfig");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    let (rec0, rec1) = (dir.join(format!("{ns}-r0.jsonl")), dir.join(format!("{ns}-r1.jsonl")));
    let _ = (std::fs::remove_file(&rec0), std::fs::remove_file(&rec1));
    let (r0_rec, r1_rec, path_text) = (
        rec0.display().to_string(),
        rec1.display().to_string(),
        path.display().to_string(),
    );
    let mut r0 = Operator::start_with(&one_member_args(&ns, "r0", &r0_rec), &format!("{ns}-r0"), &sys);
    let mut args = vec!["--kubeconfig", &path_text];
    args.extend(one_member_args(&ns, "r1", &r1_rec));
    let r1 = Operator::start_with(&args, &format!("{ns}-r1"), &sys);
    wait_balanced(&clients[0], &sys, &["r0", "r1"], Duration::from_secs(20)).await;
    for i in 0..24 {
        create(&clients[0], &ns, &small_cluster(&format!("d-{i:02}"))).await;
    }
    wait_all_configured(&clients[0], &ns, 24, Duration::from_secs(120)).await;
    let sts = Api::<StatefulSet>::namespaced(clients[0].clone(), &ns);
    let uids = |l: Vec<StatefulSet>| -> BTreeSet<String> { l.into_iter().filter_map(|s| s.metadata.uid).collect() };
    let before = uids(sts.list(&ListParams::default()).await.expect("sts").items);
    let r0_shards: BTreeSet<u32> = holders(&clients[0], &sys)
        .await
        .into_iter()
        .filter(|(_, h)| h == "r0")
        .map(|(s, _)| s)
        .collect();
    let r0_keys = |records: &[Reconcile], after: u64| {
        records
            .iter()
            .filter(|r| r.replica == "r1" && r0_shards.contains(&r.shard) && r.start > after)
            .map(|r| r.key.clone())
            .collect::<BTreeSet<String>>()
    };
    let expected: BTreeSet<String> = (0..24)
        .map(|i| format!("kwok-kd-1/{ns}/d-{i:02}"))
        .filter(|k| {
            let mut p = k.splitn(3, '/');
            let (c, n, name) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
            r0_shards.contains(&shard_of(c, n, name, SHARDS))
        })
        .collect();
    assert!(!expected.is_empty(), "r0 holds none of the 24 clusters' shards");

    // r1's pod lists wait at the proxy; r0 hands its shards over.
    proxy.hold_lists(Some("/pods"));
    let held_at = micros_now();
    assert!(
        r0.terminate(Duration::from_secs(15)).await,
        "r0 did not stop gracefully"
    );
    wait_balanced(&clients[0], &sys, &["r1"], Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let early = r0_keys(&records(std::slice::from_ref(&rec1)), held_at);
    assert!(
        early.is_empty(),
        "reconciled before its shard's pods were listed: {early:?}"
    );

    proxy.hold_lists(None);
    let released = Instant::now();
    loop {
        let done = r0_keys(&records(std::slice::from_ref(&rec1)), held_at);
        if done.is_superset(&expected) {
            eprintln!(
                "{} keys of r0's shards reconciled {:?} after the list was let through",
                expected.len(),
                released.elapsed()
            );
            break;
        }
        assert!(
            released.elapsed() < Duration::from_secs(15),
            "after the list: {} of {} keys reconciled",
            done.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_all_configured(&clients[0], &ns, 24, Duration::from_secs(60)).await;
    let after = uids(sts.list(&ListParams::default()).await.expect("sts").items);
    assert_eq!(before, after, "no StatefulSet was made again");
    assert!(overlaps(&records(&[rec0, rec1])).is_empty());
    drop(r1);
}
