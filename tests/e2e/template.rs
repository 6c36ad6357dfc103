//! template.yaml and the repository agree with tocsin-core: every provider
//! has its function crate, its Lambda function, its route, its doc page and
//! its samples.

use std::path::Path;

use serde_yaml::Value;
use tocsin_core::providers::ProviderKind;

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn template() -> Value {
    let text = std::fs::read_to_string(workspace().join("template.yaml")).expect("template.yaml");
    serde_yaml::from_str(&text).expect("template.yaml is YAML")
}

/// The resource whose cargo-lambda binary is `binary`.
fn function_building<'a>(resources: &'a Value, binary: &str) -> Option<&'a Value> {
    resources.as_mapping()?.values().find(|resource| {
        resource["Type"] == "AWS::Serverless::Function" && resource["Metadata"]["BuildProperties"]["Binary"] == binary
    })
}

#[test]
fn every_provider_has_its_function_route_crate_and_samples() {
    let template = template();
    let resources = &template["Resources"];
    for kind in ProviderKind::ALL {
        let binary = format!("ingest-{}", kind.as_str());
        let function = function_building(resources, &binary)
            .unwrap_or_else(|| panic!("template.yaml has no function building {binary}"));
        assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda", "{binary}");
        let routes: Vec<(&str, &str)> = function["Properties"]["Events"]
            .as_mapping()
            .into_iter()
            .flat_map(|events| events.values())
            .filter(|event| event["Type"] == "HttpApi")
            .filter_map(|event| {
                Some((
                    event["Properties"]["Method"].as_str()?,
                    event["Properties"]["Path"].as_str()?,
                ))
            })
            .collect();
        assert!(
            routes.contains(&("POST", kind.path())),
            "{binary} must answer POST {} (has {routes:?})",
            kind.path()
        );
        assert!(
            workspace().join("functions").join(&binary).join("Cargo.toml").is_file(),
            "functions/{binary} is missing"
        );
        let doc = workspace().join("docs/providers").join(format!("{}.md", kind.as_str()));
        assert!(doc.is_file(), "docs/providers/{}.md is missing", kind.as_str());
        let samples = workspace().join("events").join(kind.as_str());
        let count = std::fs::read_dir(&samples).map(|dir| dir.count()).unwrap_or(0);
        assert!(count > 0, "events/{} has no samples", kind.as_str());
    }
}

#[test]
fn every_function_crate_is_built_by_the_template() {
    let template = template();
    let resources = &template["Resources"];
    for entry in std::fs::read_dir(workspace().join("functions")).unwrap() {
        let entry = entry.unwrap();
        if !entry.path().join("Cargo.toml").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            function_building(resources, &name).is_some(),
            "functions/{name} has no function in template.yaml"
        );
    }
}

#[test]
fn no_policy_grants_a_wildcard_action() {
    let text = std::fs::read_to_string(workspace().join("template.yaml")).unwrap();
    let template: Value = serde_yaml::from_str(&text).unwrap();
    let mut actions = Vec::new();
    collect_actions(&template, &mut actions);
    assert!(!actions.is_empty(), "the template grants actions");
    for action in actions {
        assert!(!action.contains('*'), "wildcard action {action}");
    }
}

fn collect_actions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                if key == "Action" {
                    match child {
                        Value::String(s) => out.push(s.clone()),
                        Value::Sequence(items) => {
                            out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)))
                        }
                        _ => {}
                    }
                } else {
                    collect_actions(child, out);
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| collect_actions(i, out)),
        Value::Tagged(tagged) => collect_actions(&tagged.value, out),
        _ => {}
    }
}
