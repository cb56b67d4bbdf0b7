//! Golden file: the compile output of `examples/`. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p snapshot --test golden`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

/// 2027-01-01T00:00:00Z: inside the example certificate's validity.
const NOW: i64 = 1_798_761_600;

#[test]
fn examples_compile_to_the_golden_snapshot() {
    let resources = common::load_dir(&common::examples_dir());
    let compiled = snapshot::compile(&resources, None, NOW);
    let statuses: BTreeMap<String, &snapshot::ResourceStatusReport> = compiled
        .statuses
        .iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let output = serde_json::json!({
        "snapshot": compiled.snapshot,
        "statuses": statuses,
    });
    let text = serde_json::to_string_pretty(&output).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/examples.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == text,
        "the compile output of examples/ differs from {}; if the change is intended, run \
         UPDATE_GOLDEN=1 cargo test -p snapshot --test golden and review the diff",
        path.display()
    );
    // The examples are all accepted.
    for (key, status) in &compiled.statuses {
        assert!(status.problems.is_empty(), "{key}: {:?}", status.problems);
    }
}
