//! Fails when `crds/` no longer matches what the Rust types generate: run `make crds` and commit.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = BTreeSet::new();
    for (file, crd) in kubedirector::api::crds() {
        expected_files.insert(file.to_string());
        let generated = kubedirector::api::crd_yaml(&crd).expect("CRD serialises to YAML");
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("crds/{file} is missing ({e}): run `make crds`"));
        assert!(
            committed == generated,
            "crds/{file} drifted from src/api: run `make crds` and commit the result"
        );
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| {
            e.expect("readable dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        on_disk, expected_files,
        "crds/ holds files the types do not generate (or lacks some)"
    );
}
