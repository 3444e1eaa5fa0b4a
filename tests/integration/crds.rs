//! The generated CRDs on the real API server: KubeDirector-shaped objects round-trip without losing a
//! field, and invalid objects are rejected with the field named.

use kube::api::{DynamicObject, PostParams};
use serde::Deserialize;
use serde_json::Value;

use crate::{common, testbed};

fn dynamic(obj: &Value) -> DynamicObject {
    serde_json::from_value(obj.clone()).expect("fixture is a Kubernetes object")
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn kubedirector_shaped_objects_round_trip_without_losing_a_field() {
    let client = testbed::client().await;
    testbed::install_crds(&client).await;
    let ns = testbed::namespace(&client, "roundtrip").await;
    let fixtures = common::valid_fixtures();
    assert!(fixtures.len() >= 6);
    for (name, obj) in fixtures {
        let kind = obj["kind"].as_str().expect("kind");
        let api = testbed::kd_api(&client, &ns, kind);
        let created = api
            .create(&PostParams::default(), &dynamic(&obj))
            .await
            .unwrap_or_else(|e| panic!("{name}: API server rejected a valid object: {e}"));
        let fetched = api
            .get(&created.metadata.name.clone().expect("name"))
            .await
            .expect("get back");
        let back = serde_json::to_value(&fetched).expect("serialise");
        // Exact comparison of the whole spec: nothing pruned, nothing defaulted behind the user's back.
        assert_eq!(back["spec"], obj["spec"], "{name}: spec changed in the API server");
    }
}

#[derive(Deserialize)]
struct Rejection {
    file: String,
    expect: Vec<String>,
}

#[tokio::test]
#[ignore = "needs the test bed: make integration"]
async fn invalid_objects_are_rejected_naming_the_field() {
    let client = testbed::client().await;
    testbed::install_crds(&client).await;
    let ns = testbed::namespace(&client, "reject").await;
    let dir = common::fixtures_dir().join("invalid");
    let index: Vec<Rejection> =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("index.yaml")).expect("index")).expect("index.yaml");
    assert!(index.len() >= 10);
    let mut failures = Vec::new();
    for case in index {
        let obj = common::load_fixture(&dir.join(&case.file));
        let api = testbed::kd_api(&client, &ns, obj["kind"].as_str().expect("kind"));
        match api.create(&PostParams::default(), &dynamic(&obj)).await {
            Ok(_) => failures.push(format!("{}: accepted", case.file)),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<&String> = case
                    .expect
                    .iter()
                    .filter(|f| !status.message.contains(f.as_str()))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{}: code {} message {:?} lacks {missing:?}",
                        case.file, status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.file)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
