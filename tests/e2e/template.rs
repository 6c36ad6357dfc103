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

/// The logical id a `!GetAtt Id.Attribute` names, if `value` is one.
fn get_att<'a>(value: &'a Value, attribute: &str) -> Option<&'a str> {
    let Value::Tagged(tagged) = value else { return None };
    if tagged.tag != "GetAtt" {
        return None;
    }
    tagged.value.as_str()?.strip_suffix(attribute)?.strip_suffix('.')
}

/// Every queue that holds what failed: SQS redrive targets, Lambda
/// dead-letter queues and stream on-failure destinations.
fn dead_letter_queues(value: &Value, parent: Option<&str>, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let key = key.as_str().unwrap_or_default();
                let holds_failures = key == "deadLetterTargetArn"
                    || (key == "TargetArn" && parent == Some("DeadLetterQueue"))
                    || (key == "Destination" && parent == Some("OnFailure"));
                match get_att(child, "Arn") {
                    Some(queue) if holds_failures => out.push(queue.to_owned()),
                    _ => dead_letter_queues(child, Some(key), out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| dead_letter_queues(i, parent, out)),
        _ => {}
    }
}

#[test]
fn every_dead_letter_queue_has_an_alarm_to_the_alarm_topic() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let mut queues = Vec::new();
    dead_letter_queues(&template["Resources"], None, &mut queues);
    queues.sort();
    queues.dedup();
    assert!(queues.len() >= 6, "only {queues:?} found: the search is broken");
    for queue in queues {
        assert_eq!(
            template["Resources"][queue.as_str()]["Type"],
            "AWS::SQS::Queue",
            "{queue} is not a queue"
        );
        let alarmed = resources.values().any(|resource| {
            let p = &resource["Properties"];
            resource["Type"] == "AWS::CloudWatch::Alarm"
                && p["Namespace"] == "AWS/SQS"
                && p["MetricName"] == "ApproximateNumberOfMessagesVisible"
                && p["ComparisonOperator"] == "GreaterThanThreshold"
                && p["Threshold"].as_f64() == Some(0.0)
                && p["Dimensions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|d| d["Name"] == "QueueName" && get_att(&d["Value"], "QueueName") == Some(queue.as_str()))
                && p["AlarmActions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|a| matches!(a, Value::Tagged(t) if t.tag == "Ref" && t.value == "AlarmTopic"))
        });
        assert!(alarmed, "no alarm on {queue}'s visible messages > 0 to the AlarmTopic");
    }
}

/// (metric name, dimension names) of every Tocsin metric in a dashboard
/// widget's `metrics` array, SEARCH expressions included.
fn dashboard_metrics(body: &serde_json::Value, out: &mut Vec<(String, Vec<String>)>) {
    match body {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(rows)) = map.get("metrics") {
                for row in rows.iter().filter_map(|r| r.as_array()) {
                    if row.first().and_then(|n| n.as_str()) == Some(tocsin_core::metrics::NAMESPACE) {
                        let name = row[1].as_str().unwrap_or_default().to_owned();
                        let dimensions = row[2..]
                            .iter()
                            .filter_map(|d| d.as_str())
                            .step_by(2)
                            .map(str::to_owned)
                            .collect();
                        out.push((name, dimensions));
                    }
                    for expression in row.iter().filter_map(|r| r["expression"].as_str()) {
                        let Some(schema) = expression.split_once("{Tocsin,").map(|(_, s)| s) else {
                            continue;
                        };
                        let dimensions = schema.split('}').next().unwrap_or_default();
                        let name = expression
                            .split("MetricName=\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                            .unwrap_or_default();
                        out.push((name.to_owned(), dimensions.split(',').map(str::to_owned).collect()));
                    }
                }
            }
            map.values().for_each(|v| dashboard_metrics(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_alarms_name_only_the_metrics_the_code_emits() {
    use tocsin_core::metrics::{dimension, name, NAMESPACE};

    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let mut named: Vec<(String, Vec<String>)> = Vec::new();
    for resource in resources.values() {
        let p = &resource["Properties"];
        match resource["Type"].as_str() {
            Some("AWS::CloudWatch::Dashboard") => {
                let Value::Tagged(body) = &p["DashboardBody"] else {
                    panic!("the dashboard body is a !Sub string")
                };
                // ${…} substitutions are always inside JSON strings.
                let mut text = body.value.as_str().unwrap().to_owned();
                while let Some(start) = text.find("${") {
                    let end = start + text[start..].find('}').unwrap();
                    text.replace_range(start..=end, "X");
                }
                let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard body is JSON");
                dashboard_metrics(&json, &mut named);
            }
            Some("AWS::CloudWatch::Alarm") => {
                let mut metrics = vec![p.clone()];
                for query in p["Metrics"].as_sequence().into_iter().flatten() {
                    metrics.push(query["MetricStat"]["Metric"].clone());
                }
                for metric in metrics.iter().filter(|m| m["Namespace"] == NAMESPACE) {
                    let dimensions = metric["Dimensions"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d["Name"].as_str().map(str::to_owned))
                        .collect();
                    named.push((metric["MetricName"].as_str().unwrap_or_default().to_owned(), dimensions));
                }
            }
            _ => {}
        }
    }
    for (metric, dimensions) in &named {
        assert!(
            name::ALL.contains(&metric.as_str()),
            "{metric} is not a metric the code emits"
        );
        for d in dimensions {
            assert!(
                dimension::ALL.contains(&d.as_str()),
                "{metric}: {d} is not a dimension the code emits"
            );
        }
    }
    for metric in name::ALL {
        assert!(
            named.iter().any(|(n, _)| n == metric),
            "{metric} is emitted but on no dashboard or alarm"
        );
    }
}

/// Every route of the api function's router (tocsin-api's `incident_routes`,
/// read from its source) has its API Gateway route on the api function, with
/// each method it answers: a route served locally but missing here would be
/// a 404 on AWS.
#[test]
fn every_api_route_is_routed_to_the_api_function() {
    let source = std::fs::read_to_string(workspace().join("shared/api/src/lib.rs")).expect("shared/api/src/lib.rs");
    let start = source.find("fn incident_routes").expect("fn incident_routes");
    let body = &source[start..start + source[start..].find("\n}\n").expect("its end")];
    let mut routes = Vec::new();
    for line in body.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line[".route(\"".len()..].split('"').next().expect("a path");
        for (call, method) in [("get(", "GET"), ("post(", "POST"), ("delete(", "DELETE")] {
            if line.contains(call) {
                routes.push((method, path.to_owned()));
            }
        }
    }
    assert!(routes.len() >= 10, "the route list was not found: {routes:?}");

    let resources = template()["Resources"].clone();
    let api = function_building(&resources, "api").expect("the api function");
    let events = api["Properties"]["Events"].as_mapping().expect("its events");
    let routed: Vec<(String, String)> = events
        .values()
        .filter(|e| e["Type"] == "HttpApi")
        .map(|e| {
            let properties = &e["Properties"];
            (
                properties["Method"].as_str().unwrap_or_default().to_owned(),
                properties["Path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (method, path) in &routes {
        assert!(
            routed.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is served by tocsin-api but not routed to the api function in template.yaml"
        );
    }
}
