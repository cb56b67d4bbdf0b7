//! Test support: loading manifests (the snapshot crate cannot use the root
//! crate's loader, so this is a small one over serde_yaml).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use snapshot::Resources;
use std::path::{Path, PathBuf};

/// Parses every document of `yaml` into `resources` by kind.
pub fn add_yaml(resources: &mut Resources, yaml: &str) {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = serde_yaml::Value::deserialize(doc).expect("valid YAML");
        if value.is_null() {
            continue;
        }
        // The defaults `ferrogate serve` applies (src/manifests.rs).
        let meta = &mut value["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        if meta.get("namespace").is_none() {
            meta["namespace"] = "default".into();
        }
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
        if meta.get("generation").is_none() {
            meta["generation"] = 1.into();
        }
        if meta.get("uid").is_none() {
            meta["uid"] = format!("{namespace}/{name}").into();
        }
        let kind = value["kind"].as_str().expect("a kind").to_owned();
        let r = &mut *resources;
        match kind.as_str() {
            "ApiRoute" => r.api_routes.push(serde_yaml::from_value(value).unwrap()),
            "AuthPolicy" => r.auth_policies.push(serde_yaml::from_value(value).unwrap()),
            "RateLimitPolicy" => r
                .rate_limit_policies
                .push(serde_yaml::from_value(value).unwrap()),
            "TlsCertificate" => r
                .tls_certificates
                .push(serde_yaml::from_value(value).unwrap()),
            "Service" => r.services.push(serde_yaml::from_value(value).unwrap()),
            "EndpointSlice" => r
                .endpoint_slices
                .push(serde_yaml::from_value(value).unwrap()),
            "Endpoints" => r.endpoints.push(serde_yaml::from_value(value).unwrap()),
            "Secret" => r.secrets.push(serde_yaml::from_value(value).unwrap()),
            other => panic!("unexpected kind {other}"),
        }
    }
}

/// The repository's `examples/` folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Loads every `.yaml` file of a folder, in name order.
pub fn load_dir(dir: &Path) -> Resources {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut resources = Resources::default();
    for f in files {
        add_yaml(&mut resources, &std::fs::read_to_string(&f).unwrap());
    }
    resources
}
