//! The API reference (`docs/reference.md`), generated from the CRD schemas
//! that `crds::definitions()` builds from the Rust types.
//!
//! One section per kind, one table row per field, with its full path
//! (`spec.rules[].matches[].path.type`), type, whether it is required, every
//! constraint the schema carries (enum values, bounds, lengths, item
//! counts, patterns, defaults, validation rules) and its description.
//! `ferrogate docs` (hidden) prints it; `tests/docs_current.rs` fails when
//! the committed copy differs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::fmt::Write as _;

/// The command that regenerates the committed reference.
pub const REGENERATE: &str = "cargo run -- docs > docs/reference.md";

/// One field of a schema, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Path from the object root, e.g. `spec.rules[].name`.
    pub path: String,
    /// Type as a reader says it (`string`, `array of object`, ...).
    pub kind: String,
    /// Whether the parent object requires it.
    pub required: bool,
    /// Constraints, in a fixed order.
    pub constraints: Vec<String>,
    /// Description, on one line.
    pub description: String,
}

fn number(value: &Value) -> String {
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => value.to_string(),
    }
}

fn type_name(schema: &Value) -> String {
    let base = schema["type"].as_str().unwrap_or("");
    match base {
        "array" => format!("array of {}", type_name(&schema["items"])),
        "object" if schema.get("properties").is_none() => {
            match schema.get("additionalProperties") {
                Some(values) if values.is_object() => format!("map of {}", type_name(values)),
                _ if schema["x-kubernetes-preserve-unknown-fields"] == true => "any object".into(),
                _ => "object".into(),
            }
        }
        "" if schema["x-kubernetes-int-or-string"] == true => "integer or string".into(),
        "" => "any".into(),
        other => match schema["format"].as_str() {
            Some(format) if other == "integer" || other == "number" => {
                format!("{other} ({format})")
            }
            Some(format) => format!("{other} ({format})"),
            None => other.into(),
        },
    }
}

fn range(min: Option<&Value>, max: Option<&Value>, unit: &str) -> Option<String> {
    let suffix = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    match (min, max) {
        (Some(a), Some(b)) if a == b => Some(format!("exactly {}{suffix}", number(a))),
        (Some(a), Some(b)) => Some(format!("{} to {}{suffix}", number(a), number(b))),
        (Some(a), None) => Some(format!("at least {}{suffix}", number(a))),
        (None, Some(b)) => Some(format!("at most {}{suffix}", number(b))),
        (None, None) => None,
    }
}

fn constraints(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => format!("`{s}`"),
                None => format!("`{v}`"),
            })
            .collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    if let Some(r) = range(schema.get("minimum"), schema.get("maximum"), "") {
        out.push(format!("value {r}"));
    }
    if let Some(r) = range(
        schema.get("minLength"),
        schema.get("maxLength"),
        "characters",
    ) {
        out.push(r);
    }
    if let Some(r) = range(schema.get("minItems"), schema.get("maxItems"), "items") {
        out.push(r);
    }
    if let Some(r) = range(
        schema.get("minProperties"),
        schema.get("maxProperties"),
        "entries",
    ) {
        out.push(r);
    }
    if schema["uniqueItems"] == true {
        out.push("unique items".into());
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        out.push(format!("pattern `{pattern}`"));
    }
    // Constraints on the items of a list of scalars belong to the list's row.
    if schema["type"] == "array" {
        let items = &schema["items"];
        if items.get("properties").is_none() {
            for c in constraints(items) {
                out.push(format!("each item: {c}"));
            }
        }
    }
    if let Some(default) = schema.get("default") {
        out.push(format!("default `{}`", default));
    }
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for rule in rules {
            let text = rule["rule"].as_str().unwrap_or_default();
            match rule["message"].as_str() {
                Some(message) => out.push(format!("rule `{text}`: {message}")),
                None => out.push(format!("rule `{text}`")),
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Flattens the fields under `schema` (an object schema) into `out`, depth
/// first, properties in schema order (alphabetical: schemars sorts them).
pub fn flatten(schema: &Value, prefix: &str, out: &mut Vec<Field>) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (name, sub) in properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let description = sub["description"]
            .as_str()
            .or_else(|| sub["items"]["description"].as_str())
            .map(one_line)
            .unwrap_or_default();
        out.push(Field {
            path: path.clone(),
            kind: type_name(sub),
            required: required.contains(&name.as_str()),
            constraints: constraints(sub),
            description,
        });
        match sub["type"].as_str() {
            Some("object") => {
                flatten(sub, &path, out);
                if let Some(values) = sub.get("additionalProperties").filter(|v| v.is_object()) {
                    flatten(values, &format!("{path}.*"), out);
                }
            }
            Some("array") => flatten(&sub["items"], &format!("{path}[]"), out),
            _ => {}
        }
    }
}

fn cell(text: &str) -> String {
    text.replace('|', r"\|")
}

fn table(fields: &[Field], out: &mut String) {
    out.push_str("| Field | Type | Required | Constraints | Description |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for f in fields {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            f.path,
            cell(&f.kind),
            if f.required { "yes" } else { "" },
            cell(&f.constraints.join("; ")),
            cell(&f.description),
        );
    }
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn anchor(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// The whole reference as Markdown.
pub fn reference() -> String {
    reference_for(&crds::definitions())
}

/// The reference for the given CRDs.
pub fn reference_for(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str("# Ferrogate API reference\n\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the CRD schemas by `{REGENERATE}`. Do not edit: \
         tests/docs_current.rs fails when this file is stale. -->\n"
    );
    let _ = writeln!(
        out,
        "Every kind is namespaced, in API group `{}`, version `{}`. The same schemas are \
         installed by the Helm chart (`charts/ferrogate/crds/`) and printed by \
         `ferrogate crds`; `kubectl explain` shows the same descriptions. The schema is \
         the first check: the compiler checks everything again (older apiservers do \
         not run every rule) and reports problems in each resource's status.\n",
        crds::GROUP,
        crds::VERSION
    );
    for crd in crds {
        let kind = &crd.spec.names.kind;
        let _ = writeln!(out, "- [{kind}](#{})", anchor(kind));
    }
    let statuses: Vec<Value> = crds
        .iter()
        .map(|crd| schema_of(crd)["properties"]["status"].clone())
        .collect();
    let shared_status = statuses.windows(2).all(|w| w[0] == w[1]) && !statuses.is_empty();
    if shared_status {
        out.push_str("- [Status (all kinds)](#status-all-kinds)\n");
    }
    out.push('\n');

    for crd in crds {
        let names = &crd.spec.names;
        let schema = schema_of(crd);
        let spec = &schema["properties"]["spec"];
        let _ = writeln!(out, "## {}\n", names.kind);
        if let Some(description) = spec["description"].as_str() {
            let _ = writeln!(out, "{}\n", one_line(description));
        }
        let _ = writeln!(
            out,
            "- apiVersion: `{}/{}`, kind: `{}`",
            crd.spec.group,
            crd.spec
                .versions
                .first()
                .map(|v| v.name.as_str())
                .unwrap_or_default(),
            names.kind
        );
        let short = names.short_names.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "- kubectl names: `{}`{}{}",
            names.plural,
            short.iter().map(|s| format!(", `{s}`")).collect::<String>(),
            names
                .categories
                .as_ref()
                .map(|c| format!(" (categories: {})", c.join(", ")))
                .unwrap_or_default()
        );
        if let Some(columns) = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.additional_printer_columns.as_ref())
        {
            let columns: Vec<String> = columns
                .iter()
                .map(|c| format!("{} (`{}`)", c.name, c.json_path))
                .collect();
            let _ = writeln!(out, "- `kubectl get` columns: {}", columns.join(", "));
        }
        out.push('\n');
        let mut fields = Vec::new();
        flatten(spec, "spec", &mut fields);
        table(&fields, &mut out);
        out.push('\n');
        if !shared_status {
            let mut fields = Vec::new();
            flatten(&schema["properties"]["status"], "status", &mut fields);
            let _ = writeln!(out, "### {} status\n", names.kind);
            table(&fields, &mut out);
            out.push('\n');
        }
    }
    if shared_status {
        out.push_str("## Status (all kinds)\n\n");
        if let Some(description) = statuses[0]["description"].as_str() {
            let _ = writeln!(
                out,
                "{} Written by the controller (the leader replica) through the `status` \
                 subresource; users never set it.\n",
                one_line(description)
            );
        }
        let mut fields = Vec::new();
        flatten(&statuses[0], "status", &mut fields);
        table(&fields, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_flattened_with_types_and_constraints() {
        let schema = json!({
            "type": "object",
            "required": ["hosts"],
            "properties": {
                "hosts": {"type": "array", "description": "Host\nnames.", "minItems": 1, "maxItems": 16,
                          "items": {"type": "string", "maxLength": 253}},
                "rules": {"type": "array", "items": {"type": "object", "description": "One rule.",
                    "properties": {"port": {"type": "integer", "format": "uint16", "minimum": 1.0, "maximum": 65535.0},
                                   "mode": {"type": "string", "enum": ["A", "B|C"], "default": "A"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        });
        let mut fields = Vec::new();
        flatten(&schema, "spec", &mut fields);
        let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.hosts",
                "spec.labels",
                "spec.rules",
                "spec.rules[].mode",
                "spec.rules[].port"
            ]
        );
        let hosts = &fields[0];
        assert!(hosts.required);
        assert_eq!(hosts.kind, "array of string");
        assert_eq!(hosts.description, "Host names.");
        assert_eq!(
            hosts.constraints,
            ["1 to 16 items", "each item: at most 253 characters"]
        );
        let port = fields.iter().find(|f| f.path == "spec.rules[].port");
        assert_eq!(
            port.map(|f| (f.kind.as_str(), f.constraints.clone())),
            Some(("integer (uint16)", vec!["value 1 to 65535".to_owned()]))
        );
        let mode = fields.iter().find(|f| f.path == "spec.rules[].mode");
        assert_eq!(
            mode.map(|f| f.constraints.clone()),
            Some(vec![
                "one of `A`, `B|C`".to_owned(),
                "default `\"A\"`".to_owned()
            ])
        );
        let rules = fields.iter().find(|f| f.path == "spec.rules");
        assert_eq!(rules.map(|f| f.description.as_str()), Some("One rule."));
        let labels = fields.iter().find(|f| f.path == "spec.labels");
        assert_eq!(labels.map(|f| f.kind.as_str()), Some("map of string"));
        let mut md = String::new();
        table(&fields, &mut md);
        assert!(md.contains("one of `A`, `B\\|C`"), "{md}");
    }

    #[test]
    fn every_field_of_every_kind_is_in_the_reference() {
        let text = reference();
        for crd in crds::definitions() {
            assert!(text.contains(&format!("## {}\n", crd.spec.names.kind)));
            let mut fields = Vec::new();
            flatten(&schema_of(&crd)["properties"]["spec"], "spec", &mut fields);
            assert!(fields.len() > 3);
            for field in fields {
                assert!(
                    text.contains(&format!("| `{}` |", field.path)),
                    "{}",
                    field.path
                );
            }
        }
    }
}
