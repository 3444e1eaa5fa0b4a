//! The Rust types read every valid fixture and write it back without losing a field
//! (the operator and admission re-serialise these objects, so a dropped field would be lost data).

mod common;

use kubedirector::api::{KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig, Tristate};
use serde_json::Value;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str, obj: &Value) -> Value {
    let typed: T = serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{name}: does not deserialise: {e}"));
    serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{name}: does not serialise: {e}"))
}

#[test]
fn every_valid_fixture_round_trips_through_the_types() {
    let fixtures = common::valid_fixtures();
    assert!(
        fixtures.len() >= 6,
        "expected the valid fixtures, found {}",
        fixtures.len()
    );
    for (name, obj) in fixtures {
        let back = match obj["kind"].as_str() {
            Some("KubeDirectorApp") => round_trip::<KubeDirectorApp>(&name, &obj),
            Some("KubeDirectorCluster") => round_trip::<KubeDirectorCluster>(&name, &obj),
            Some("KubeDirectorConfig") => round_trip::<KubeDirectorConfig>(&name, &obj),
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        let mut lost = Vec::new();
        common::lost_fields(&obj["spec"], &back["spec"], "spec", &mut lost);
        assert!(lost.is_empty(), "{name}: fields lost by the Rust types: {lost:#?}");
    }
}

#[test]
fn config_package_absent_null_and_set_stay_distinct() {
    let dir = common::fixtures_dir().join("valid");
    let spark: KubeDirectorApp =
        serde_json::from_value(common::load_fixture(&dir.join("app-spark-like.json"))).expect("spark app");
    assert!(matches!(spark.spec.default_config_package, Tristate::Set(_)));
    let by_id = |id: &str| {
        spark
            .spec
            .roles
            .iter()
            .find(|r| r.id == id)
            .expect("role")
            .config_package
            .clone()
    };
    assert_eq!(by_id("controller"), Tristate::Absent);
    assert_eq!(by_id("jupyter"), Tristate::Null);

    let centos: KubeDirectorApp =
        serde_json::from_value(common::load_fixture(&dir.join("app-centos-like.yaml"))).expect("centos app");
    assert_eq!(centos.spec.default_config_package, Tristate::Null);
    assert!(matches!(centos.spec.roles[1].config_package, Tristate::Set(_)));

    let minimal: KubeDirectorApp =
        serde_json::from_value(common::load_fixture(&dir.join("app-minimal.json"))).expect("minimal app");
    assert_eq!(minimal.spec.default_config_package, Tristate::Absent);
}

#[test]
fn unknown_fields_are_kept_where_kubedirector_keeps_them() {
    let app: KubeDirectorApp = serde_json::from_value(common::load_fixture(
        &common::fixtures_dir().join("valid/app-spark-like.json"),
    ))
    .expect("spark app");
    assert!(app.spec.extra.contains_key("vendor_extension"));
    assert!(app.spec.label.extra.contains_key("icon_hint"));
    assert!(app.spec.services[2].extra.contains_key("monitoring"));
    assert_eq!(app.spec.services[1].exported_service.as_deref(), Some("spark"));
}
