//! The CRDs committed for the Helm chart must be exactly what the types
//! generate. Run `cargo run -- crds > charts/ferrogate/crds/crds.yaml` after
//! changing the API.

#[test]
fn chart_crds_are_current() {
    let generated = crds::definitions_yaml().expect("render CRDs");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/ferrogate/crds/crds.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("charts/ferrogate/crds/crds.yaml exists");
    assert!(
        committed == generated,
        "charts/ferrogate/crds/crds.yaml is stale: run `cargo run -- crds > charts/ferrogate/crds/crds.yaml`"
    );
}

#[test]
fn every_schema_property_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let top =
                    path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                if !top && prop.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in crds::definitions() {
        let value = serde_json::to_value(&crd).expect("CRD as JSON");
        let kind = value["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(&kind, schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}
