//! The phases' writes: CRs created, resized and deleted; floor objects created; waits with a progress
//! bar (or, without a terminal, a line every 10 s).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::objects::{self, Placement};
use crate::prepare::kd_api;
use crate::track::{Key, Tracker};
use crate::workload::Workload;

/// Waits until `tracker` has nothing pending or `limit` passes; shows progress toward `total`.
pub async fn wait(tracker: &Tracker, what: &str, total: usize, limit: Duration) {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>24} [{elapsed_precise}] {wide_bar} {pos}/{len}") {
            b.set_style(style);
        }
        b.set_prefix(what.to_string());
        Some(b)
    } else {
        None
    };
    let mut last_line = Instant::now();
    loop {
        let done = tracker.done_count();
        if let Some(b) = &bar {
            b.set_position(done as u64);
        } else if last_line.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "[loadtest] {what}: {done}/{total} after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_line = Instant::now();
        }
        if tracker.pending() == 0 || start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(b) = bar {
        b.finish();
    }
    eprintln!(
        "[loadtest] {what}: {}/{total} in {:.1} s",
        tracker.done_count(),
        start.elapsed().as_secs_f64()
    );
}

/// The CRs of cluster `c`: global indices dealt round robin.
pub fn names_of(w: &Workload, c: usize) -> Vec<String> {
    (0..w.crs())
        .filter(|g| (*g % w.clusters) as usize == c)
        .map(objects::cr_name)
        .collect()
}

/// The CRs of one member cluster and when each arrives (offsets from `t0`, ascending).
#[derive(Clone, Debug)]
pub struct Arrivals {
    pub cluster: usize,
    pub items: Vec<(String, Duration)>,
    pub t0: Instant,
}

impl Arrivals {
    /// The names of cluster `c` (dealt round robin from the run's CRs) at `w.arrival`'s times.
    pub fn of(w: &Workload, c: usize, t0: Instant) -> Arrivals {
        let names = names_of(w, c);
        let offsets = w.arrival.offsets(names.len(), c);
        Arrivals {
            cluster: c,
            items: names.into_iter().zip(offsets).collect(),
            t0,
        }
    }
}

/// Sends each item's write when it arrives, at most `in_flight` at once; each clock starts at the
/// scheduled arrival. Returns the refusals.
async fn send_on_schedule<F, Fut>(a: &Arrivals, in_flight: u32, tracker: &Arc<Tracker>, write: F) -> Vec<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<i64, String>>,
{
    let c = a.cluster;
    let results: Vec<Option<String>> = stream::iter(a.items.iter().cloned())
        .map(|(name, offset)| {
            let (tracker, at) = (tracker.clone(), a.t0 + offset);
            let fut = write(name.clone());
            async move {
                tokio::time::sleep_until(at.into()).await;
                let key: Key = (c, name.clone());
                tracker.start_at(key.clone(), at);
                match fut.await {
                    Ok(generation) => {
                        tracker.written(&key, generation);
                        None
                    }
                    Err(e) => {
                        tracker.forget(&key);
                        Some(format!("{name}: {e}"))
                    }
                }
            }
        })
        .buffer_unordered(in_flight as usize)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Creates the CRs of `a` at their arrival times; returns the ones the API server refused, with why.
pub async fn create_crs(
    client: &Client,
    ns: &str,
    a: &Arrivals,
    w: &Workload,
    placement: Placement,
    tracker: &Arc<Tracker>,
) -> Vec<String> {
    let api = kd_api(client, ns, "KubeDirectorCluster");
    send_on_schedule(a, w.create_concurrency, tracker, |name| {
        let api = api.clone();
        let obj = objects::cluster(&name, &w.roles, placement);
        async move {
            let dynamic: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
            match api.create(&PostParams::default(), &dynamic).await {
                Ok(created) => Ok(created.metadata.generation.unwrap_or(1)),
                Err(e) => Err(format!("create refused: {e}")),
            }
        }
    })
    .await
}

/// The CRs resized by churn, as (cluster, name, new members of the last role), in order.
pub fn churn_plan(w: &Workload) -> Vec<(usize, String, u32)> {
    let (n, total) = (w.churned(), w.crs());
    let last = w.roles.last().map(|r| r.members).unwrap_or(0);
    (0..n)
        .map(|j| {
            let g = (u64::from(j) * u64::from(total) / u64::from(n.max(1))) as u32;
            let members = if j % 2 == 0 {
                last + w.churn.delta
            } else {
                last - w.churn.delta
            };
            ((g % w.clusters) as usize, objects::cr_name(g), members)
        })
        .collect()
}

/// Resizes the churned CRs, evenly over `churn.seconds`; returns refused patches.
pub async fn churn(clients: &[Client], ns: &str, w: &Workload, tracker: &Arc<Tracker>) -> Vec<String> {
    let plan = churn_plan(w);
    let step = Duration::from_secs(w.churn.seconds).div_f64(plan.len().max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (j, (c, name, members)) in plan.into_iter().enumerate() {
        tokio::time::sleep_until(start + step.mul_f64(j as f64)).await;
        let api = kd_api(&clients[c], ns, "KubeDirectorCluster");
        let tracker = tracker.clone();
        let last = w.roles.len().saturating_sub(1);
        // Only the last role's members change (its affinity and everything else stay as created).
        let patch = json!([{"op": "replace", "path": format!("/spec/roles/{last}/members"), "value": members}]);
        tasks.push(tokio::spawn(async move {
            let key: Key = (c, name.clone());
            let patch = match serde_json::from_value(patch) {
                Ok(p) => Patch::<()>::Json(p),
                Err(e) => return Some(format!("{name}: {e}")),
            };
            tracker.start(key.clone());
            match api.patch(&name, &PatchParams::default(), &patch).await {
                Ok(o) => {
                    tracker.written(&key, o.metadata.generation.unwrap_or(0));
                    None
                }
                Err(e) => {
                    tracker.forget(&key);
                    Some(format!("{name}: resize refused: {e}"))
                }
            }
        }));
    }
    let mut refused = Vec::new();
    for t in tasks {
        if let Ok(Some(e)) = t.await {
            refused.push(e);
        }
    }
    refused
}

/// Deletes every CR in `ns`, then waits until the CRs and their children are gone (or `limit`).
/// Returns what is left: CRs first, then children.
///
/// One DELETE per CR, a few at a time, rather than one collection delete: a busy API server deletes a
/// collection one item after another and cut 250 CRs off at its 60 s request timeout (standard runs
/// std2–std5), after which that client's DELETEs kept failing at once while its lists worked. So the
/// phase also starts from a `fresh` client (built anew by the caller), and a round with failures builds
/// another one.
pub async fn delete_all<F, Fut>(fresh: F, ns: &str, limit: Duration) -> anyhow::Result<Vec<String>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Client>>,
{
    let start = Instant::now();
    let mut client = fresh().await?;
    let mut requested = false;
    loop {
        if !requested {
            match delete_each(&kd_api(&client, ns, "KubeDirectorCluster")).await {
                Ok(()) => requested = true,
                Err(e) if start.elapsed() > limit => {
                    anyhow::bail!("deleting every KubeDirectorCluster in {ns} failed for {limit:?}: {e}")
                }
                Err(e) => {
                    eprintln!("[loadtest] deleting the CRs in {ns}: {e}; again with a new client");
                    client = fresh().await?;
                }
            }
        }
        match leftovers(&client, ns).await {
            Ok(left) if requested && (left.is_empty() || start.elapsed() > limit) => return Ok(left),
            Ok(_) => {}
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(e) => eprintln!("[loadtest] listing what is left in {ns} failed ({e}); retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many DELETEs per cluster are in flight at once.
const DELETES_IN_FLIGHT: usize = 8;

/// Deletes every object `api` lists, one request each; Err names the first failure and how many failed.
async fn delete_each<K>(api: &Api<K>) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await?;
    let names = list.items.into_iter().filter_map(|o| o.meta().name.clone());
    let failures: Vec<String> = stream::iter(names)
        .map(|name| async move {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => None,
                Err(kube::Error::Api(s)) if s.code == 404 => None,
                Err(e) => Some(format!("{name}: {e}")),
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    match failures.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!("{} deletes failed, first {first}", failures.len()),
    }
}

/// Deletes the floor's StatefulSets and Services in `ns` (their pods go with them) and waits until
/// nothing is left or `limit` passes; returns what is left.
pub async fn delete_floor(client: &Client, ns: &str, limit: Duration) -> anyhow::Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let sent = async {
            delete_each(&Api::<StatefulSet>::namespaced(client.clone(), ns)).await?;
            delete_each(&Api::<Service>::namespaced(client.clone(), ns)).await
        };
        if let Err(e) = sent.await {
            eprintln!("[loadtest] deleting the floor in {ns}: {e}; again");
        }
        let left = leftovers(client, ns).await?;
        if left.is_empty() || start.elapsed() > limit {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn leftovers(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let lp = ListParams::default();
    let mut left: Vec<String> = kd_api(client, ns, "KubeDirectorCluster")
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|o| format!("KubeDirectorCluster {ns}/{}", o.metadata.name.unwrap_or_default()))
        .collect();
    macro_rules! children {
        ($t:ty, $kind:expr) => {
            for o in Api::<$t>::namespaced(client.clone(), ns).list(&lp).await?.items {
                left.push(format!("{} {ns}/{}", $kind, o.metadata.name.unwrap_or_default()));
            }
        };
    }
    children!(StatefulSet, "StatefulSet");
    children!(Service, "Service");
    children!(PersistentVolumeClaim, "PersistentVolumeClaim");
    children!(Pod, "Pod");
    Ok(left)
}

/// Creates the floor's objects for the groups of `a` in `ns` at their arrival times; returns refusals.
/// A group is written as the floor would be by hand: its Services, then its StatefulSets.
pub async fn create_floor(
    client: &Client,
    ns: &str,
    a: &Arrivals,
    w: &Workload,
    placement: Placement,
    tracker: &Arc<Tracker>,
) -> Vec<String> {
    let (svc, sts) = (
        Api::<Service>::namespaced(client.clone(), ns),
        Api::<StatefulSet>::namespaced(client.clone(), ns),
    );
    send_on_schedule(a, w.create_concurrency, tracker, |name| {
        let (svc, sts) = (svc.clone(), sts.clone());
        let group = objects::floor_group(&name, ns, w, placement);
        async move {
            let group = group.map_err(|e| e.to_string())?;
            for s in &group.services {
                svc.create(&PostParams::default(), s)
                    .await
                    .map_err(|e| format!("floor Service refused: {e}"))?;
            }
            for s in &group.statefulsets {
                sts.create(&PostParams::default(), s)
                    .await
                    .map_err(|e| format!("floor StatefulSet refused: {e}"))?;
            }
            Ok(1)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_alternates_and_spreads_over_the_crs() {
        let w = Workload::small(); // 40 CRs, 25 % → 10, over 2 clusters
        let plan = churn_plan(&w);
        assert_eq!(plan.len(), 10);
        assert_eq!(plan[0], (0, "lt-00000".into(), 5));
        assert_eq!(plan[1], (0, "lt-00004".into(), 3));
        let names: std::collections::BTreeSet<_> = plan.iter().map(|p| p.1.clone()).collect();
        assert_eq!(names.len(), 10, "distinct CRs");
    }

    #[test]
    fn names_are_dealt_round_robin() {
        let w = Workload::small();
        let a = names_of(&w, 0);
        let b = names_of(&w, 1);
        assert_eq!((a.len(), b.len()), (20, 20));
        assert_eq!(a[1], "lt-00002");
        assert_eq!(b[0], "lt-00001");
    }
}
