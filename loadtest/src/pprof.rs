//! CPU profiles of the bed's API servers, one per pass, when `KD_LOADTEST_PPROF_SECONDS` is set:
//! where each API server's CPU goes in the first that many seconds of each pass. Both sides of a
//! burst get the same window, so `go tool pprof -top -diff_base FLOOR OPERATOR` shows what the
//! operator pass costs the API server beyond the floor (docs/loadtest.md). Off by default: the
//! profiler itself costs the API server a little CPU.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use kube::Client;
use tokio::task::JoinHandle;

/// The profile length asked for, if any (a positive number of seconds).
fn seconds() -> Option<u64> {
    std::env::var("KD_LOADTEST_PPROF_SECONDS")
        .ok()?
        .parse()
        .ok()
        .filter(|s| *s > 0)
}

/// A file name from a pass's label: letters and digits kept, the rest made dashes.
fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Starts one profile per API server; each lands in `<dir>/pprof/<pass>-<cluster>.pb.gz`. Await
/// the handles before the next pass (a profile that fails says so and is skipped).
pub fn start(clients: &[Client], dir: &Path, label: &str) -> Vec<JoinHandle<()>> {
    let Some(secs) = seconds() else { return Vec::new() };
    clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, path) = (
                c.clone(),
                dir.join("pprof").join(format!("{}-{}.pb.gz", slug(label), i + 1)),
            );
            tokio::spawn(async move {
                if let Err(e) = fetch(&c, secs, &path).await {
                    eprintln!("[loadtest] API server profile {}: {e:#}", path.display());
                }
            })
        })
        .collect()
}

async fn fetch(c: &Client, secs: u64, path: &PathBuf) -> anyhow::Result<()> {
    let req = http::Request::get(format!("/debug/pprof/profile?seconds={secs}")).body(kube::client::Body::empty())?;
    let res = c.send(req).await.context("GET /debug/pprof/profile")?;
    anyhow::ensure!(res.status().is_success(), "the API server answered {}", res.status());
    let bytes = res
        .into_body()
        .collect()
        .await
        .context("reading the profile")?
        .to_bytes();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_label_makes_a_file_name() {
        assert_eq!(
            super::slug("floor burst, without FlowSchema"),
            "floor-burst--without-flowschema"
        );
    }
}
