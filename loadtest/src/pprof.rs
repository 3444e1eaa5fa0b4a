//! CPU profiles of the bed's API servers, one per pass, when `KD_LOADTEST_PPROF_SECONDS` is set:
//! where each API server's CPU goes in the first that many seconds of each pass. Both sides of a
//! burst get the same window, so `go tool pprof -top -diff_base FLOOR OPERATOR` shows what the
//! operator pass costs the API server beyond the floor (docs/loadtest.md). Off by default: the
//! profiler itself costs the API server a little CPU.

use std::path::Path;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use kube::Client;
use tokio::task::JoinHandle;

/// The profile length asked for, if any: unset or 0 means none; anything but a whole number of
/// seconds is refused, naming the variable (a typo must not silently measure nothing).
fn seconds() -> anyhow::Result<Option<u64>> {
    parse(std::env::var("KD_LOADTEST_PPROF_SECONDS").ok().as_deref())
}

fn parse(value: Option<&str>) -> anyhow::Result<Option<u64>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let secs: u64 = v.parse().map_err(|_| {
        anyhow::anyhow!("KD_LOADTEST_PPROF_SECONDS={v:?}: expected a whole number of seconds (0 = no profile)")
    })?;
    Ok((secs > 0).then_some(secs))
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
pub fn start(clients: &[Client], dir: &Path, label: &str) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let Some(secs) = seconds()? else { return Ok(Vec::new()) };
    Ok(clients
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
        .collect())
}

async fn fetch(c: &Client, secs: u64, path: &Path) -> anyhow::Result<()> {
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
    fn the_length_is_whole_seconds_or_none() {
        assert_eq!(super::parse(None).ok(), Some(None));
        assert_eq!(super::parse(Some("0")).ok(), Some(None));
        assert_eq!(super::parse(Some(" 40 ")).ok(), Some(Some(40)));
        let e = super::parse(Some("40s")).expect_err("a unit is refused");
        assert!(e.to_string().contains("KD_LOADTEST_PPROF_SECONDS"), "{e}");
    }

    #[test]
    fn a_label_makes_a_file_name() {
        assert_eq!(
            super::slug("floor burst, without FlowSchema"),
            "floor-burst--without-flowschema"
        );
    }
}
