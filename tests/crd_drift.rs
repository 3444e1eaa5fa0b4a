//! Fails when `crds/` or the Helm chart's copy (`deploy/helm/kubedirector/crds/`) no longer matches
//! what the Rust types generate: run `make crds` and commit.

use std::collections::BTreeSet;
use std::path::Path;

const DIRS: [&str; 2] = ["crds", "deploy/helm/kubedirector/crds"];

#[test]
fn committed_crds_match_the_types() {
    for rel in DIRS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let mut expected_files = BTreeSet::new();
        for (file, crd) in kubedirector::api::crds() {
            expected_files.insert(file.to_string());
            let generated = kubedirector::api::crd_yaml(&crd).expect("CRD serialises to YAML");
            let committed = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{rel}/{file} is missing ({e}): run `make crds`"));
            assert!(
                committed == generated,
                "{rel}/{file} drifted from core/src/api: run `make crds` and commit the result"
            );
        }
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{rel}/ is missing ({e}): run `make crds`"))
            .map(|e| {
                e.expect("readable dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            on_disk, expected_files,
            "{rel}/ holds files the types do not generate (or lacks some)"
        );
    }
}
