//! What the functions receive on AWS, built for a test: API Gateway HTTP
//! API events carrying Alertmanager and GitHub deliveries, and SNS
//! notifications of CloudWatch alarms as SNS hands them to a subscribed
//! function.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::app::fixture;

/// An API Gateway HTTP API event for `path` with these headers and body.
pub fn api_gateway_event(path: &str, headers: Value, body: String) -> Value {
    let mut event: Value =
        serde_json::from_slice(&fixture("events/aws/apigw-prometheus-firing.json")).expect("the API Gateway sample");
    event["rawPath"] = json!(path);
    event["routeKey"] = json!(format!("POST {path}"));
    event["requestContext"]["routeKey"] = json!(format!("POST {path}"));
    event["requestContext"]["http"]["path"] = json!(path);
    event["headers"] = headers;
    event["body"] = json!(body);
    event
}

/// One firing alert of an Alertmanager notification: its fingerprint (the
/// dedup key) and a label the test finds it again by.
pub struct FiringAlert {
    pub fingerprint: String,
    pub tag: String,
}

/// An Alertmanager webhook notification with these firing alerts, to
/// ingest-prometheus with the integration key `key`.
pub fn alertmanager_event(key: &str, alerts: &[FiringAlert]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|alert| {
            json!({
                "status": "firing",
                "labels": {
                    "alertname": "DiskFull",
                    "instance": "db-1:9100",
                    "job": "node",
                    "severity": "critical",
                    "tocsin_tag": alert.tag,
                },
                "annotations": {
                    "summary": format!("Disk full on db-1 ({})", alert.fingerprint),
                    "runbook_url": "https://runbooks.example.com/disk-full",
                },
                "startsAt": "2026-11-23T09:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=disk",
                "fingerprint": alert.fingerprint,
            })
        })
        .collect();
    let body = json!({
        "receiver": "tocsin",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "job": "node"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
    });
    api_gateway_event(
        "/integrations/prometheus",
        json!({
            "content-type": "application/json",
            "user-agent": "Alertmanager/0.27.0",
            "authorization": format!("Bearer {key}"),
        }),
        body.to_string(),
    )
}

/// A signed GitHub delivery of a failed workflow run on `branch` (the
/// branch makes the dedup key), with its delivery id.
pub fn github_failed_run_event(key: &str, secret: &str, branch: &str, delivery: &str) -> Value {
    let mut payload: Value =
        serde_json::from_slice(&fixture("events/github/workflow_run-failure.json")).expect("the GitHub sample");
    payload["workflow_run"]["head_branch"] = json!(branch);
    let body = payload.to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("an HMAC key");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    api_gateway_event(
        "/integrations/github",
        json!({
            "content-type": "application/json",
            "user-agent": "GitHub-Hookshot/6b02022",
            "x-github-event": "workflow_run",
            "x-github-delivery": delivery,
            "x-hub-signature-256": signature,
            "x-integration-key": key,
        }),
        body,
    )
}

/// A CloudWatch alarm named `alarm` going to ALARM, published to `topic`
/// as notification `message_id`, as SNS invokes a subscribed function.
pub fn sns_alarm_event(topic: &str, alarm: &str, message_id: &str) -> Value {
    let sample: Value = serde_json::from_slice(&fixture("events/cloudwatch/alarm.json")).expect("the alarm sample");
    let mut message: Value =
        serde_json::from_str(sample["Message"].as_str().expect("the alarm")).expect("the alarm as JSON");
    message["AlarmName"] = json!(alarm);
    message["AlarmArn"] = json!(format!("arn:aws:cloudwatch:us-east-1:123456789012:alarm:{alarm}"));
    message["NewStateValue"] = json!("ALARM");
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{topic}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"),
        "Sns": {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic,
            "Subject": format!("ALARM: \"{alarm}\" in US East (N. Virginia)"),
            "Message": message.to_string(),
            "Timestamp": "2026-11-23T09:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-example.pem",
            "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {}
        }
    }]})
}
