//! Helpers shared by test binaries: fixtures, JSON comparison, quantiles of timings.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The clusters of `../shared/kubedirector/takeover/` (objects KubeDirector built), in replay order:
/// `connected` names `uid-plain`.
pub const TAKEOVER_CLUSTERS: [&str; 7] = [
    "uid-plain",
    "uid-storage",
    "shrunk",
    "mid-expand",
    "with-package",
    "connected",
    "ubuntu18.04",
];

/// Every object of `kind` in the takeover captures (`TAKEOVER_CLUSTERS`), as the API server sent it.
pub fn takeover_items(kind: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/kubedirector/takeover");
    let mut out = Vec::new();
    for name in TAKEOVER_CLUSTERS {
        let list = load_fixture(&dir.join(format!("{name}.json")));
        let items = list["items"].as_array().into_iter().flatten();
        out.extend(items.filter(|o| o["kind"] == kind).cloned());
    }
    out
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads a JSON or YAML fixture (by extension) into a JSON value.
pub fn load_fixture(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Some("yaml") | Some("yml") => serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        other => panic!("{}: unknown fixture extension {other:?}", path.display()),
    }
}

/// Every valid fixture, sorted by file name.
pub fn valid_fixtures() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(fixtures_dir().join("valid"))
        .expect("tests/fixtures/valid exists")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            (
                p.file_name().expect("file name").to_string_lossy().into_owned(),
                load_fixture(&p),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Paths in `want` whose value is missing or different in `got`. Numbers and their decimal string
/// form are equal (a Quantity written as `1` comes back as `"1"` from typed code).
pub fn lost_fields(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => lost_fields(wv, gv, &p, out),
                    None => out.push(format!("{p}: missing")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!("{path}: {} items became {}", w.len(), g.len()));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                lost_fields(wv, gv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) if n.to_string() == *s => {}
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{path}: {w} became {g}")),
    }
}

/// Nearest-rank quantile (`q` in 0..=1) of samples in any order; NaN when there are none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (v.len() as f64 * q).ceil() as usize;
    v.get(rank.clamp(1, v.len().max(1)) - 1).copied().unwrap_or(f64::NAN)
}

/// A stand-in for KubeDirector's configcli.tgz: `configcli-1.0/install` records how it was called
/// and puts a `configcli` command where a real one would go (under the simulated guest's root).
pub fn fake_configcli_package(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join("configcli-1.0");
    std::fs::create_dir_all(&src).expect("dir");
    let install = r#"#!/bin/sh
R="${KD_GUEST_ROOT:-}"
base=/usr; [ "$1" = --user ] && base="$PYTHONUSERBASE"
echo "args=$* PYTHONUSERBASE=$PYTHONUSERBASE" >> "$R/configcli-install.calls"
mkdir -p "$R$base/bin"
printf '#!/bin/sh\necho "kubedirector configcli $*"\n' > "$R$base/bin/configcli"
chmod 755 "$R$base/bin/configcli"
"#;
    std::fs::write(src.join("install"), install).expect("install");
    // Not executable in the tarball: KubeDirector makes it so before running it.
    std::fs::set_permissions(src.join("install"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let tgz = dir.join("configcli.tgz");
    let ok = std::process::Command::new("tar")
        .args([
            "-czf",
            &tgz.display().to_string(),
            "-C",
            &dir.display().to_string(),
            "configcli-1.0",
        ])
        .status()
        .expect("tar");
    assert!(ok.success());
    tgz
}
