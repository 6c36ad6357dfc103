//! Amazon CloudWatch alarms, delivered by Amazon SNS to an HTTPS
//! subscription. Ingest checks and unwraps the SNS envelope (signature,
//! topic, subscription handshake: see [`crate::sns`]); this module reads the
//! alarm itself, the JSON text in the notification's `Message`. Each alarm
//! is one incident, keyed by its ARN: ALARM triggers, OK resolves, and
//! INSUFFICIENT_DATA does what the integration says (nothing by default).
//!
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html>
//! <https://docs.aws.amazon.com/sns/latest/dg/sns-http-https-endpoint-as-subscriber.html>

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::{InsufficientData, Integration};
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{Delivery, Inbound, InvalidPayload, Provider, ProviderKind};
use crate::signature::SignatureError;

pub struct CloudWatch;

const INVALID: &str = "the SNS Message is not a CloudWatch alarm";

/// The alarm as CloudWatch writes it into the SNS Message. Metric alarms
/// carry a Trigger (with Metrics for metric math and anomaly detection),
/// composite alarms an AlarmRule and TriggeringChildren instead.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct AlarmMessage {
    alarm_name: Option<String>,
    alarm_description: Option<String>,
    #[serde(rename = "AWSAccountId")]
    aws_account_id: Option<String>,
    new_state_value: Option<String>,
    new_state_reason: Option<String>,
    state_change_time: Option<String>,
    /// The region's display name ("US East (N. Virginia)"); the code is in
    /// the AlarmArn.
    region: Option<String>,
    alarm_arn: Option<String>,
    old_state_value: Option<String>,
    /// Kept raw: only a few of its fields are read, and a shape CloudWatch
    /// adds later must not make the alarm unreadable.
    trigger: Option<serde_json::Value>,
    alarm_rule: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Trigger {
    metric_name: Option<String>,
    namespace: Option<String>,
    dimensions: Vec<Dimension>,
    metrics: Vec<MetricQuery>,
}

/// CloudWatch writes dimensions in lowercase, unlike everything around them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Dimension {
    name: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct MetricQuery {
    metric_stat: Option<MetricStat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct MetricStat {
    metric: Option<Metric>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Metric {
    dimensions: Vec<Dimension>,
    metric_name: Option<String>,
    namespace: Option<String>,
}

impl Provider for CloudWatch {
    fn kind(&self) -> ProviderKind {
        ProviderKind::CloudWatch
    }

    fn delivery(&self) -> Delivery {
        Delivery::Sns
    }

    /// SNS cannot send Tocsin's HMAC header; the SNS message signature is
    /// checked by ingest before this provider sees the alarm.
    fn verify(&self, _inbound: &Inbound<'_>, _integration: &Integration) -> Result<(), SignatureError> {
        Ok(())
    }

    /// `inbound.body` is the notification's Message.
    fn normalize(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let raw: serde_json::Value = serde_json::from_slice(inbound.body)
            .map_err(|e| InvalidPayload::field("Message", format!("is not a CloudWatch alarm (JSON): {e}")))?;
        if !raw.is_object() {
            return Err(InvalidPayload::field(
                "Message",
                "is not a CloudWatch alarm (a JSON object)",
            ));
        }
        let alarm: AlarmMessage = serde_path_to_error::deserialize(&raw).map_err(|error| {
            let path = error.path().to_string();
            InvalidPayload::field(path, format!("has the wrong type: {}", error.into_inner()))
        })?;

        let mut errors = Vec::new();
        let action = match alarm.new_state_value.as_deref().map(str::trim) {
            Some("ALARM") => Some(Action::Trigger),
            Some("OK") => Some(Action::Resolve),
            Some("INSUFFICIENT_DATA") => match integration.cloudwatch.insufficient_data {
                InsufficientData::Trigger => Some(Action::Trigger),
                InsufficientData::Resolve => Some(Action::Resolve),
                InsufficientData::Ignore => None,
            },
            Some(other) => {
                errors.push(FieldError::new(
                    "NewStateValue",
                    format!("'{other}' is not one of ALARM, OK, INSUFFICIENT_DATA"),
                ));
                None
            }
            None => {
                errors.push(FieldError::new("NewStateValue", "is missing"));
                None
            }
        };
        let arn = non_blank(alarm.alarm_arn.as_deref()).map(AlarmArn::parse);
        let name = non_blank(alarm.alarm_name.as_deref())
            .or_else(|| arn.as_ref().and_then(|a| a.name))
            .map(str::to_owned);
        if name.is_none() {
            errors.push(FieldError::new("AlarmName", "is missing (and there is no AlarmArn)"));
        }
        let timestamp = state_change_time(alarm.state_change_time.as_deref()).map_err(|e| errors.push(e));
        if !errors.is_empty() {
            return Err(InvalidPayload::new(INVALID, errors));
        }
        let (Some(event_action), Some(name), Ok(timestamp)) = (action, name, timestamp) else {
            // Only INSUFFICIENT_DATA set to ignore gets here: accepted, and
            // the incident is left as it is.
            tracing::info!(
                alarm = alarm.alarm_name.as_deref().unwrap_or(""),
                "INSUFFICIENT_DATA ignored"
            );
            return Ok(Vec::new());
        };

        let trigger: Trigger = alarm
            .trigger
            .as_ref()
            .and_then(|raw| serde_json::from_value(raw.clone()).ok())
            .unwrap_or_default();
        let metric = metric_of(&trigger);
        let account = non_blank(alarm.aws_account_id.as_deref());
        let region = arn
            .as_ref()
            .and_then(|a| a.region)
            .or_else(|| non_blank(alarm.region.as_deref()));
        let reason = non_blank(alarm.new_state_reason.as_deref());
        let summary = match reason {
            Some(reason) => format!("{name}: {reason}"),
            None => name.clone(),
        };
        let console = arn.as_ref().and_then(console_url);

        Ok(vec![Alert {
            event_action,
            dedup_key: dedup_key_of(arn.as_ref(), account, region, &name),
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary),
                source: source_of(&metric, account, region),
                severity: severity_of(&alarm, integration.cloudwatch.severity),
                timestamp,
                component: metric.namespace.map(str::to_owned),
                group: None,
                class: metric.name.map(str::to_owned),
                // The whole alarm: it is small, and every field of it
                // (Trigger, AlarmRule, TriggeringChildren…) can matter to
                // whoever is looking.
                custom_details: Some(raw),
            }),
            links: console
                .iter()
                .map(|href| Link {
                    href: href.clone(),
                    text: Some("CloudWatch alarm".to_owned()),
                })
                .collect(),
            images: Vec::new(),
            client: Some("Amazon CloudWatch".to_owned()),
            client_url: console,
        }])
    }
}

/// `arn:<partition>:cloudwatch:<region>:<account>:alarm:<name>`.
struct AlarmArn<'a> {
    arn: &'a str,
    partition: Option<&'a str>,
    region: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> AlarmArn<'a> {
    fn parse(arn: &'a str) -> Self {
        match arn.splitn(7, ':').collect::<Vec<_>>().as_slice() {
            ["arn", partition, "cloudwatch", region, _account, "alarm", name] => AlarmArn {
                arn,
                partition: Some(partition),
                region: non_blank(Some(region)),
                name: non_blank(Some(name)),
            },
            _ => AlarmArn {
                arn,
                partition: None,
                region: None,
                name: None,
            },
        }
    }
}

/// The AlarmArn names the alarm in its ALARM and its OK notifications alike.
/// Messages from before CloudWatch sent it get a digest of what identifies
/// the alarm instead.
fn dedup_key_of(arn: Option<&AlarmArn<'_>>, account: Option<&str>, region: Option<&str>, name: &str) -> DedupKey {
    arn.and_then(|a| DedupKey::parse(a.arn).ok())
        .unwrap_or_else(|| DedupKey::digest_of(&["cloudwatch", account.unwrap_or(""), region.unwrap_or(""), name]))
}

/// CloudWatch writes `2024-01-01T00:00:00.000+0000`, an offset without the
/// colon RFC 3339 wants; RFC 3339 is accepted too.
fn state_change_time(value: Option<&str>) -> Result<Option<DateTime<Utc>>, FieldError> {
    let Some(value) = non_blank(value) else {
        return Ok(None);
    };
    DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(value))
        .map(|time| Some(time.with_timezone(&Utc)))
        .map_err(|_| {
            FieldError::new(
                "StateChangeTime",
                format!("'{value}' is not a time such as 2024-01-01T00:00:00.000+0000"),
            )
        })
}

/// The metric an alarm watches: the Trigger's own, or for metric math the
/// first metric the expression reads. Composite alarms have none.
struct WatchedMetric<'a> {
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    dimensions: &'a [Dimension],
}

fn metric_of(trigger: &Trigger) -> WatchedMetric<'_> {
    if non_blank(trigger.metric_name.as_deref()).is_some() || !trigger.dimensions.is_empty() {
        return WatchedMetric {
            name: non_blank(trigger.metric_name.as_deref()),
            namespace: non_blank(trigger.namespace.as_deref()),
            dimensions: &trigger.dimensions,
        };
    }
    match trigger
        .metrics
        .iter()
        .find_map(|query| query.metric_stat.as_ref().and_then(|stat| stat.metric.as_ref()))
    {
        Some(metric) => WatchedMetric {
            name: non_blank(metric.metric_name.as_deref()),
            namespace: non_blank(metric.namespace.as_deref()),
            dimensions: &metric.dimensions,
        },
        None => WatchedMetric {
            name: None,
            namespace: non_blank(trigger.namespace.as_deref()),
            dimensions: &[],
        },
    }
}

/// What is affected: the metric's dimensions (`InstanceId=i-0abc`), else the
/// account and region (composite alarms, dimensionless metrics).
fn source_of(metric: &WatchedMetric<'_>, account: Option<&str>, region: Option<&str>) -> String {
    let dimensions: Vec<String> = metric
        .dimensions
        .iter()
        .filter_map(
            |d| match (non_blank(d.name.as_deref()), non_blank(d.value.as_deref())) {
                (Some(name), Some(value)) => Some(format!("{name}={value}")),
                (None, Some(value)) => Some(value.to_owned()),
                _ => None,
            },
        )
        .collect();
    if !dimensions.is_empty() {
        return dimensions.join(", ");
    }
    match (account, region) {
        (Some(account), Some(region)) => format!("AWS account {account} ({region})"),
        (Some(account), None) => format!("AWS account {account}"),
        (None, Some(region)) => format!("AWS {region}"),
        (None, None) => "Amazon CloudWatch".to_owned(),
    }
}

/// CloudWatch alarms have no severity: a `severity=<level>` (or
/// `severity:<level>`) tag in the description, then in the name, sets it;
/// otherwise the integration's default.
fn severity_of(alarm: &AlarmMessage, default: Severity) -> Severity {
    [alarm.alarm_description.as_deref(), alarm.alarm_name.as_deref()]
        .into_iter()
        .flatten()
        .find_map(severity_tag)
        .unwrap_or(default)
}

fn severity_tag(text: &str) -> Option<Severity> {
    const TAG: &str = "severity";
    // ASCII lowercasing keeps byte offsets, so slicing `lower` is safe.
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find(TAG) {
        rest = &rest[at + TAG.len()..];
        let value = rest
            .trim_start()
            .strip_prefix(['=', ':'])
            .map(|v| v.trim_start())
            .map(|v| v.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or(""));
        if let Some(severity) = value.and_then(|v| v.parse().ok()) {
            return Some(severity);
        }
    }
    None
}

/// The alarm's page in the console, as CloudWatch's own e-mails link it.
/// Only for the commercial partition, whose console URL is known.
fn console_url(arn: &AlarmArn<'_>) -> Option<String> {
    let (Some("aws"), Some(region), Some(name)) = (arn.partition, arn.region, arn.name) else {
        return None;
    };
    if !region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    Some(format!(
        "https://{region}.console.aws.amazon.com/cloudwatch/deeplink.js?region={region}#alarmsV2:alarm/{}",
        percent_encode(name)
    ))
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::HeaderMap;
    use serde_json::json;

    use super::*;
    use crate::auth::KeyHash;
    use crate::config::{CloudWatchSettings, FieldMapping};
    use crate::event::{IntegrationId, ServiceId};
    use crate::sns::testing::{at, block_on};
    use crate::sns::{Sns, SnsMessage};

    macro_rules! sample {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../events/cloudwatch/",
                $name
            ))
        };
    }
    const ALARM: &str = sample!("alarm.json");
    const COMPOSITE: &str = sample!("composite-alarm.json");
    const OK: &str = sample!("ok.json");
    const METRIC_MATH_OK: &str = sample!("metric-math-ok.json");
    const INSUFFICIENT: &str = sample!("insufficient-data.json");

    fn integration(settings: CloudWatchSettings) -> Integration {
        Integration {
            id: IntegrationId::parse("checkout-cloudwatch").unwrap(),
            service: ServiceId::parse("checkout").unwrap(),
            provider: ProviderKind::CloudWatch,
            key_hash: KeyHash::of("11111111111111111111111111111111"),
            secret: None,
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: settings,
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }

    /// The alarm inside a sample's SNS envelope.
    fn message_of(sample: &str) -> String {
        SnsMessage::parse(sample.as_bytes()).unwrap().message
    }

    fn normalize_with(message: &str, settings: CloudWatchSettings) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        let inbound = Inbound {
            headers: &headers,
            query: None,
            body: message.as_bytes(),
            received_at: Utc::now(),
        };
        CloudWatch.normalize(&inbound, &integration(settings))
    }

    fn normalize(message: &str) -> Result<Vec<Alert>, InvalidPayload> {
        normalize_with(message, CloudWatchSettings::default())
    }

    fn one(sample: &str) -> Alert {
        let mut alerts = normalize(&message_of(sample)).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    /// The sample's alarm with some of its fields changed.
    fn alarm_with(sample: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(&message_of(sample)).unwrap();
        change(&mut value);
        value.to_string()
    }

    #[test]
    fn the_real_alarm_samples_carry_valid_sns_signatures() {
        // Both were signed by the certificate in tests/fixtures/sns,
        // which was valid when they were sent.
        let sns = Sns::offline(crate::sns::testing::AWS_CERT_FOLDER);
        for sample in [ALARM, COMPOSITE] {
            let message = SnsMessage::parse(sample.as_bytes()).unwrap();
            block_on(sns.verify(&message, at("2021-11-10T02:46:00Z"))).unwrap();
        }
    }

    #[test]
    fn a_metric_alarm_triggers_on_its_arn() {
        let alert = one(ALARM);
        assert_eq!(alert.event_action, Action::Trigger);
        let arn = "arn:aws:cloudwatch:us-east-1:427809481713:alarm:if-sim-app_427809481713_us-east-1-metric_emitting_node_failure";
        assert_eq!(alert.dedup_key.as_str(), arn);
        let p = payload(&alert);
        assert_eq!(
            p.summary,
            "if-sim-app_427809481713_us-east-1-metric_emitting_node_failure: Threshold Crossed: 1 out of the last 1 \
             datapoints [1.0 (10/11/21 02:40:00)] was greater than or equal to the threshold (1.0) (minimum 1 \
             datapoint for OK -> ALARM transition)."
        );
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(
            p.source,
            "MetricGroupId=routing_table.receive.hook, RouteID=metric_emitting_node"
        );
        assert_eq!(p.component.as_deref(), Some("sim-app_427809481713_us-east-1"));
        assert_eq!(p.class.as_deref(), Some("IExecutionFailureHook"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2021, 11, 10, 2, 45, 55).unwrap() + chrono::Duration::milliseconds(640))
        );
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["Trigger"]["Threshold"], json!(1.0));
        assert_eq!(details["OldStateValue"], json!("INSUFFICIENT_DATA"));
        assert_eq!(alert.client.as_deref(), Some("Amazon CloudWatch"));
        let link = "https://us-east-1.console.aws.amazon.com/cloudwatch/deeplink.js?region=us-east-1#alarmsV2:alarm/if-sim-app_427809481713_us-east-1-metric_emitting_node_failure";
        assert_eq!(alert.links[0].href, link);
        assert_eq!(alert.client_url.as_deref(), Some(link));
    }

    #[test]
    fn a_composite_alarm_has_no_trigger_and_keeps_its_rule() {
        let alert = one(COMPOSITE);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(
            alert.dedup_key.as_str(),
            "arn:aws:cloudwatch:us-east-1:427809481713:alarm:if-sim-app_427809481713_us-east-1-test_node_monitor"
        );
        let p = payload(&alert);
        assert!(p.summary.starts_with(
            "if-sim-app_427809481713_us-east-1-test_node_monitor: arn:aws:cloudwatch:us-east-1:427809481713:alarm:"
        ));
        assert_eq!(p.source, "AWS account 427809481713 (us-east-1)");
        assert_eq!((p.component.as_deref(), p.class.as_deref()), (None, None));
        let details = p.custom_details.as_ref().unwrap();
        assert!(details["AlarmRule"].as_str().unwrap().contains(" OR ALARM("));
        assert_eq!(details["TriggeringChildren"][0]["State"]["Value"], json!("ALARM"));
    }

    #[test]
    fn ok_resolves_the_key_alarm_triggered() {
        // The real ALARM sample, as CloudWatch sends it when it recovers.
        let recovered = alarm_with(ALARM, |v| {
            v["NewStateValue"] = json!("OK");
            v["OldStateValue"] = json!("ALARM");
        });
        let trigger = one(ALARM);
        let resolve = normalize(&recovered).unwrap().remove(0);
        assert_eq!(resolve.event_action, Action::Resolve);
        assert_eq!(resolve.dedup_key, trigger.dedup_key);

        let ok = one(OK);
        assert_eq!(ok.event_action, Action::Resolve);
        assert_eq!(
            ok.dedup_key.as_str(),
            "arn:aws:cloudwatch:ap-northeast-1:257706363616:alarm:ec2CPUUtilization"
        );
        let p = payload(&ok);
        assert!(p
            .summary
            .starts_with("ec2CPUUtilization: Threshold Crossed: 1 out of the last 1 datapoints"));
        assert_eq!(
            p.source,
            "AutoScalingGroupName=eks-6ebcce7e-400b-8a69-f0e9-d9e14bb635d2"
        );
        assert_eq!(p.component.as_deref(), Some("AWS/EC2"));
        assert_eq!(p.severity, Severity::Error);
    }

    #[test]
    fn metric_math_alarms_read_the_first_metric_of_the_expression() {
        let alert = one(METRIC_MATH_OK);
        assert_eq!(alert.event_action, Action::Resolve);
        assert_eq!(
            alert.dedup_key.as_str(),
            "arn:aws:cloudwatch:ap-northeast-2:257706363616:alarm:ContainerInsight-pod_cpu_utilization"
        );
        let p = payload(&alert);
        assert_eq!(p.source, "ClusterName=cloudone-dev-v1-eks-cluster");
        assert_eq!(p.component.as_deref(), Some("ContainerInsights"));
        assert_eq!(p.class.as_deref(), Some("pod_cpu_utilization"));
        assert_eq!(
            p.custom_details.as_ref().unwrap()["Trigger"]["Metrics"][1]["Expression"],
            json!("ANOMALY_DETECTION_BAND(m1, 0.592)")
        );
    }

    #[test]
    fn insufficient_data_does_what_the_integration_says() {
        let message = message_of(INSUFFICIENT);
        assert_eq!(normalize(&message).unwrap(), Vec::new(), "ignored by default");
        for (setting, expected) in [
            (InsufficientData::Trigger, Action::Trigger),
            (InsufficientData::Resolve, Action::Resolve),
        ] {
            let settings = CloudWatchSettings {
                insufficient_data: setting,
                ..CloudWatchSettings::default()
            };
            let alerts = normalize_with(&message, settings).unwrap();
            assert_eq!(alerts[0].event_action, expected, "{setting:?}");
            // This older message has no AlarmArn: the key is a digest of
            // the account, region and name, the same in every state.
            assert!(alerts[0].dedup_key.as_str().starts_with("sha256:"));
            assert_eq!(payload(&alerts[0]).source, "TopicName=alerta-test");
        }
        let insufficient = normalize_with(
            &message,
            CloudWatchSettings {
                insufficient_data: InsufficientData::Trigger,
                ..CloudWatchSettings::default()
            },
        )
        .unwrap();
        let ok = alarm_with(INSUFFICIENT, |v| v["NewStateValue"] = json!("OK"));
        assert_eq!(normalize(&ok).unwrap()[0].dedup_key, insufficient[0].dedup_key);
    }

    #[test]
    fn severity_comes_from_a_tag_then_the_integration_default() {
        let severity = |description: serde_json::Value, name: &str, default: Severity| {
            let alarm = alarm_with(ALARM, |v| {
                v["AlarmDescription"] = description;
                v["AlarmName"] = json!(name);
            });
            let settings = CloudWatchSettings {
                severity: default,
                ..CloudWatchSettings::default()
            };
            payload(&normalize_with(&alarm, settings).unwrap()[0]).severity
        };
        assert_eq!(
            severity(json!("Disk full. severity=critical"), "a", Severity::Error),
            Severity::Critical
        );
        assert_eq!(
            severity(json!("Severity: Warning, runbook x"), "a", Severity::Error),
            Severity::Warning
        );
        assert_eq!(
            severity(json!(null), "api-5xx [severity:info]", Severity::Error),
            Severity::Info
        );
        assert_eq!(
            severity(json!("severity=sev1"), "a", Severity::Warning),
            Severity::Warning
        );
        assert_eq!(severity(json!("no tag"), "a", Severity::Critical), Severity::Critical);
        // The description wins over the name.
        assert_eq!(
            severity(json!("severity=error"), "severity=info", Severity::Warning),
            Severity::Error
        );
    }

    #[test]
    fn the_state_change_time_offset_without_a_colon_is_read() {
        for (value, expected) in [
            (
                "2024-01-01T00:00:00.000+0000",
                Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            ),
            (
                "2024-01-01T02:00:00.000+0200",
                Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            ),
            (
                "2024-01-01T00:00:00Z",
                Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            ),
        ] {
            assert_eq!(state_change_time(Some(value)).unwrap(), Some(expected), "{value}");
        }
        assert_eq!(state_change_time(None).unwrap(), None);
        let bad = alarm_with(ALARM, |v| v["StateChangeTime"] = json!("yesterday"));
        let fields: Vec<String> = normalize(&bad)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["StateChangeTime"]);
    }

    #[test]
    fn bad_alarms_are_refused_by_field() {
        let fields = |message: &str| -> Vec<String> {
            normalize(message)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(&alarm_with(ALARM, |v| v["NewStateValue"] = json!("PANIC"))),
            ["NewStateValue"]
        );
        assert_eq!(
            fields(&alarm_with(ALARM, |v| {
                let alarm = v.as_object_mut().unwrap();
                alarm.remove("NewStateValue");
                alarm.remove("AlarmName");
                alarm.remove("AlarmArn");
            })),
            ["NewStateValue", "AlarmName"]
        );
        assert_eq!(fields(&alarm_with(ALARM, |v| v["AlarmName"] = json!(7))), ["AlarmName"]);
        // A plain-text SNS publish (the console's "Publish message").
        assert_eq!(fields("Hello world"), ["Message"]);
        assert_eq!(fields("[1]"), ["Message"]);
        // An alarm with its name only in the ARN still reads.
        let alarm = alarm_with(OK, |v| {
            v.as_object_mut().unwrap().remove("AlarmName");
        });
        assert!(payload(&normalize(&alarm).unwrap()[0])
            .summary
            .starts_with("ec2CPUUtilization: "));
    }

    #[test]
    fn console_links_are_encoded_and_only_for_the_commercial_partition() {
        let link = |arn: &str| console_url(&AlarmArn::parse(arn));
        assert_eq!(
            link("arn:aws:cloudwatch:us-west-1:123456789012:alarm:RDS Prod - CPU Util").as_deref(),
            Some(
                "https://us-west-1.console.aws.amazon.com/cloudwatch/deeplink.js?region=us-west-1#alarmsV2:alarm/RDS%20Prod%20-%20CPU%20Util"
            )
        );
        assert_eq!(link("arn:aws-cn:cloudwatch:cn-north-1:123456789012:alarm:x"), None);
        assert_eq!(link("not an arn"), None);
        let alarm = alarm_with(OK, |v| {
            v["AlarmArn"] = json!("arn:aws-cn:cloudwatch:cn-north-1:1:alarm:x")
        });
        let alert = normalize(&alarm).unwrap().remove(0);
        assert!(alert.links.is_empty());
        assert_eq!(alert.client_url, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_long_summaries_cut() {
        let alarm = alarm_with(ALARM, |v| {
            v["SomethingNew"] = json!({"a": 1});
            v["Trigger"]["Dimensions"] = json!("a shape we do not know");
            v["NewStateReason"] = json!("x".repeat(5000));
        });
        let alert = normalize(&alarm).unwrap().remove(0);
        let p = payload(&alert);
        assert_eq!(p.summary.chars().count(), Payload::MAX_SUMMARY_CHARS);
        // An unreadable Trigger costs the source, not the alarm.
        assert_eq!(p.source, "AWS account 427809481713 (us-east-1)");
    }
}
