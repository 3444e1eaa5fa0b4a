//! Start and finish times of every CR (and floor group), fed by the harness's writes and by watches.
//! A CR is done when a watch shows it `configured` at (at least) the generation the harness wrote.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::watcher;
use kube::{Api, Client};

use kubedirector::api::KubeDirectorCluster;
use kubedirector::model::status::configured_generation;

/// (cluster index, name)
pub type Key = (usize, String);

#[derive(Clone, Debug)]
struct Pending {
    since: Instant,
    /// None while the write that starts it is in flight.
    generation: Option<i64>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Key, Pending>,
    /// Latest generation seen configured, and when it was first seen so.
    configured: HashMap<Key, (i64, Instant)>,
    done: Vec<(Key, Instant, Instant)>,
}

/// One phase's tracker.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call just before the write that starts `key`'s clock.
    pub fn start(&self, key: Key) {
        self.lock().pending.insert(
            key,
            Pending {
                since: Instant::now(),
                generation: None,
            },
        );
    }

    /// The clock of `key` starts at its scheduled arrival `at` (open loop: also when the harness
    /// sends the write later than that).
    pub fn start_at(&self, key: Key, at: Instant) {
        self.lock().pending.insert(
            key,
            Pending {
                since: at,
                generation: None,
            },
        );
    }

    /// The generation the write produced (for a create, 1).
    pub fn written(&self, key: &Key, generation: i64) {
        let mut g = self.lock();
        if let Some(p) = g.pending.get_mut(key) {
            p.generation = Some(generation);
        }
        g.settle(key);
    }

    /// A watch saw `key` configured at `generation` (for floor groups: ready, generation 1).
    pub fn configured(&self, key: Key, generation: i64, at: Instant) {
        let mut g = self.lock();
        let newer = g.configured.get(&key).is_none_or(|(gen_, _)| generation > *gen_);
        if newer {
            g.configured.insert(key.clone(), (generation, at));
        }
        g.settle(&key);
    }

    pub fn forget(&self, key: &Key) {
        self.lock().pending.remove(key);
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn done_count(&self) -> usize {
        self.lock().done.len()
    }

    /// (key, start, finish) of every finished one.
    #[cfg(test)]
    pub fn done(&self) -> Vec<(Key, Instant, Instant)> {
        self.lock().done.clone()
    }

    /// Takes the finished ones out (the end of a phase).
    pub fn take_done(&self) -> Vec<(Key, Instant, Instant)> {
        std::mem::take(&mut self.lock().done)
    }

    pub fn pending_keys(&self) -> Vec<Key> {
        self.lock().pending.keys().cloned().collect()
    }
}

impl Inner {
    fn settle(&mut self, key: &Key) {
        let Some(p) = self.pending.get(key) else { return };
        let Some(want) = p.generation else { return };
        if let Some((seen, at)) = self.configured.get(key)
            && *seen >= want
        {
            // A configured status can only be seen after the write was sent.
            let finish = (*at).max(p.since);
            self.done.push((key.clone(), p.since, finish));
            self.pending.remove(key);
        }
    }
}

/// Feeds `tracker` from a watch of the CRs in `ns` of cluster `index` until the task is aborted.
pub fn watch_clusters(
    client: Client,
    ns: &str,
    index: usize,
    tracker: std::sync::Arc<Tracker>,
) -> tokio::task::JoinHandle<()> {
    let api = Api::<KubeDirectorCluster>::namespaced(client, ns);
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = events.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => vec![c],
                Ok(_) => continue,
                Err(e) => {
                    tracing_warn(&format!("cluster watch {index}: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            let now = Instant::now();
            for c in objs {
                if let (Some(name), Some(generation)) = (c.metadata.name.clone(), configured_generation(&c)) {
                    tracker.configured((index, name), generation, now);
                }
            }
        }
    })
}

/// Feeds `tracker` from a watch of the floor's pods: a group is done when `members` of its pods are
/// Ready.
pub fn watch_floor(
    client: Client,
    ns: &str,
    index: usize,
    members: usize,
    tracker: std::sync::Arc<Tracker>,
) -> tokio::task::JoinHandle<()> {
    watch_ready_groups(
        client,
        ns,
        crate::objects::FLOOR_GROUP,
        index,
        members,
        move |group, at| tracker.configured((index, group), 1, at),
    )
}

/// When every member pod of each operator CR was first seen Ready (the last pod's Ready): the start
/// of the status lag, which ends when the CR is seen `configured`.
#[derive(Default)]
pub struct ReadyTimes {
    at: Mutex<HashMap<Key, Instant>>,
}

impl ReadyTimes {
    fn note(&self, key: Key, at: Instant) {
        self.at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(at);
    }

    /// Seconds from all pods Ready to configured, for every done CR whose pods were all seen Ready.
    pub fn lags(&self, done: &[(Key, Instant, Instant)]) -> Vec<f64> {
        self.lags_after(&ReadyTimes::default(), done)
    }

    /// Seconds from the later of this and `other` (for example: all pods Ready, all Services seen)
    /// to configured, for every done CR seen in this; a CR missing from `other` counts from this.
    pub fn lags_after(&self, other: &ReadyTimes, done: &[(Key, Instant, Instant)]) -> Vec<f64> {
        let at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        let also = other.at.lock().unwrap_or_else(|p| p.into_inner());
        done.iter()
            .filter_map(|(k, _, configured)| {
                let ready = at.get(k).map(|r| also.get(k).map_or(*r, |s| (*r).max(*s)))?;
                Some(configured.saturating_duration_since(ready).as_secs_f64())
            })
            .collect()
    }
}

/// Feeds `times` from a watch of the Services carrying `label` (the operator's: their CR; the
/// floor's: their group): a group's time is when `services` distinct Services of it have been seen.
pub fn watch_services(
    client: Client,
    ns: &str,
    label: &'static str,
    index: usize,
    services: usize,
    times: std::sync::Arc<ReadyTimes>,
) -> tokio::task::JoinHandle<()> {
    watch_groups::<Service>(
        client,
        ns,
        label,
        index,
        services,
        |_| true,
        move |cr, at| times.note((index, cr), at),
    )
}

/// Feeds `times` from a watch of the operator's member pods (labelled with their CR).
pub fn watch_member_pods(
    client: Client,
    ns: &str,
    index: usize,
    members: usize,
    times: std::sync::Arc<ReadyTimes>,
) -> tokio::task::JoinHandle<()> {
    watch_ready_groups(
        client,
        ns,
        kubedirector::model::labels::CLUSTER,
        index,
        members,
        move |cr, at| times.note((index, cr), at),
    )
}

/// Watches the pods carrying `label` in `ns`, grouped by its value; calls `all_ready` when `members`
/// pods of a group have been seen Ready.
fn watch_ready_groups(
    client: Client,
    ns: &str,
    label: &'static str,
    index: usize,
    members: usize,
    all_ready: impl Fn(String, Instant) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    watch_groups::<Pod>(client, ns, label, index, members, pod_ready, all_ready)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the objects of kind `K` carrying `label`, grouped by its value, and calls `complete` the
/// first time `size` distinct objects of a group have been seen `counting`.
fn watch_groups<K>(
    client: Client,
    ns: &str,
    label: &'static str,
    index: usize,
    size: usize,
    counting: fn(&K) -> bool,
    complete: impl Fn(String, Instant) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api = Api::<K>::namespaced(client, ns);
    let kind = K::kind(&());
    tokio::spawn(async move {
        let mut seen: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        let mut events = watcher(api, watcher::Config::default().labels(label)).boxed();
        while let Some(ev) = events.next().await {
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(_) => continue,
                Err(e) => {
                    tracing_warn(&format!("{kind} watch {index} ({label}): {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            let meta = obj.meta();
            let group = meta.labels.as_ref().and_then(|l| l.get(label)).cloned();
            let (Some(group), Some(name)) = (group, meta.name.clone()) else {
                continue;
            };
            if counting(&obj) {
                let set = seen.entry(group.clone()).or_default();
                if set.insert(name) && set.len() == size {
                    complete(group, Instant::now());
                }
            }
        }
    })
}

fn tracing_warn(msg: &str) {
    eprintln!("warning: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn done_only_at_the_written_generation() {
        let t = Tracker::default();
        let k: Key = (0, "a".into());
        t.start(k.clone());
        let t0 = Instant::now();
        // configured at gen 1 seen while the patch to gen 2 is in flight: not done
        t.configured(k.clone(), 1, t0);
        t.written(&k, 2);
        assert_eq!(t.done_count(), 0);
        let later = t0 + Duration::from_millis(5);
        t.configured(k.clone(), 2, later);
        assert_eq!(t.done_count(), 1);
        assert_eq!(t.done()[0].2, later);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn status_lag_runs_from_the_first_time_all_pods_were_ready() {
        let times = ReadyTimes::default();
        let t0 = Instant::now();
        let (a, b): (Key, Key) = ((0, "a".into()), (0, "b".into()));
        times.note(a.clone(), t0);
        // Seen all Ready again later (a pod update): the first time counts.
        times.note(a.clone(), t0 + Duration::from_secs(5));
        let done = vec![
            (a, t0, t0 + Duration::from_millis(300)),
            // Pods never all seen Ready: no lag to report.
            (b, t0, t0 + Duration::from_secs(1)),
        ];
        let lags = times.lags(&done);
        assert_eq!(lags.len(), 1);
        assert!((lags[0] - 0.3).abs() < 1e-6, "{lags:?}");
        // Services seen 0.2 s after the pods were Ready: the lag counts from them.
        let services = ReadyTimes::default();
        services.note((0, "a".into()), t0 + Duration::from_millis(200));
        let after = times.lags_after(&services, &done);
        assert!((after[0] - 0.1).abs() < 1e-6, "{after:?}");
        // Seen before the pods: the pods' time.
        let early = ReadyTimes::default();
        early.note((0, "a".into()), t0 - Duration::from_secs(1));
        assert!((times.lags_after(&early, &done)[0] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn a_watch_faster_than_the_write_response_still_counts() {
        let t = Tracker::default();
        let k: Key = (1, "b".into());
        t.start(k.clone());
        let seen = Instant::now();
        t.configured(k.clone(), 3, seen);
        assert_eq!(t.done_count(), 0, "generation not known yet");
        t.written(&k, 3);
        assert_eq!(t.done_count(), 1);
        assert!(t.done()[0].2 >= t.done()[0].1);
    }
}
