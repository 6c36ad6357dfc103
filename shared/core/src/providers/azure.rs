//! Azure Monitor alerts, posted by an action group's webhook action with the
//! common alert schema turned on (`schemaId: azureMonitorCommonAlertSchema`).
//! One notification is one alert instance; its `essentials.alertId` is the
//! same on the Fired and the Resolved notification, so it is the dedup key.
//!
//! Payloads in the older per-signal schemas (metric, log, activity log) are
//! refused with a 400 that says to turn the common schema on.
//!
//! <https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-common-schema>

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Integration;
use crate::event::{Action, Alert, DedupKey, FieldError, Link, Payload, Severity};
use crate::providers::{Inbound, InvalidPayload, Provider, ProviderKind};

pub struct Azure;

/// The only schema this provider reads.
pub const COMMON_SCHEMA_ID: &str = "azureMonitorCommonAlertSchema";

/// Every sample Azure's "Test action group" sends lives under this
/// subscription (Microsoft publishes them: "Common alert schema definitions
/// for Test Action Group"). Subscription ids are random version-4 GUIDs, which
/// this one cannot be, so it names a test and nothing else.
const TEST_ALERT_PREFIX: &str = "/subscriptions/11111111-1111-1111-1111-111111111111/";

const INVALID: &str = "the Azure Monitor alert is invalid";

const ENABLE_COMMON_SCHEMA: &str =
    "enable \"Use common alert schema\" on the action group's webhook action that posts to Tocsin";

const SOURCE: &str = "azure-monitor";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Notification {
    schema_id: Option<String>,
    data: Option<Data>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Data {
    // Kept raw for custom_details, and parsed on its own so that a type error
    // is reported as `data.essentials.<field>`.
    essentials: Option<Value>,
    alert_context: Option<Value>,
    custom_properties: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Essentials {
    alert_id: Option<String>,
    alert_rule: Option<String>,
    severity: Option<String>,
    signal_type: Option<String>,
    monitor_condition: Option<String>,
    monitoring_service: Option<String>,
    // Documented as alertTargetIDs; arrays may be empty or null.
    #[serde(rename = "alertTargetIDs", alias = "alertTargetIds")]
    alert_target_ids: Option<Vec<Value>>,
    configuration_items: Option<Vec<Value>>,
    fired_date_time: Option<String>,
    resolved_date_time: Option<String>,
    description: Option<String>,
    investigation_link: Option<String>,
    target_resource_group: Option<String>,
    target_resource_type: Option<String>,
}

impl Provider for Azure {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Azure
    }

    fn normalize(&self, inbound: &Inbound<'_>, _integration: &Integration) -> Result<Vec<Alert>, InvalidPayload> {
        let body = object_body(inbound.body)?;
        schema_check(&body)?;
        let notification: Notification = deserialize(&body, "")?;
        let data = notification.data.unwrap_or_default();
        let raw_essentials = match data.essentials {
            Some(value @ Value::Object(_)) => value,
            _ => {
                return Err(InvalidPayload::field(
                    "data.essentials",
                    "is missing: the common alert schema always carries it",
                ))
            }
        };
        let essentials: Essentials = deserialize(&raw_essentials, "data.essentials.")?;

        let alert_id = non_blank(essentials.alert_id.as_deref());
        if alert_id.is_some_and(|id| id.starts_with(TEST_ALERT_PREFIX)) {
            tracing::info!("azure test action group notification: accepted, nothing to do");
            return Ok(Vec::new());
        }

        let mut errors = Vec::new();
        let dedup_key = match alert_id.map(DedupKey::parse) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => {
                errors.push(e.at("data.essentials.alertId"));
                None
            }
            None => {
                errors.push(FieldError::new("data.essentials.alertId", "is missing"));
                None
            }
        };
        let action = action_of(essentials.monitor_condition.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        let timestamp = match action {
            Some(action) => timestamp_of(&essentials, action)
                .map_err(|e| errors.push(e))
                .ok()
                .flatten(),
            None => None,
        };
        let (Some(dedup_key), Some(event_action), true) = (dedup_key, action, errors.is_empty()) else {
            return Err(InvalidPayload::new(INVALID, errors));
        };

        let investigation = non_blank(essentials.investigation_link.as_deref()).map(|href| Link {
            href: href.to_owned(),
            text: Some("Investigate in Azure Monitor".to_owned()),
        });
        Ok(vec![Alert {
            event_action,
            dedup_key,
            payload: Some(Payload {
                summary: Payload::truncate_summary(&summary_of(&essentials)),
                source: source_of(&essentials),
                severity: severity_of(essentials.severity.as_deref()),
                timestamp,
                component: non_blank(essentials.target_resource_type.as_deref()).map(str::to_owned),
                group: non_blank(essentials.target_resource_group.as_deref()).map(str::to_owned),
                class: non_blank(essentials.signal_type.as_deref()).map(str::to_owned),
                custom_details: Some(details_of(raw_essentials, data.alert_context, data.custom_properties)),
            }),
            links: investigation.into_iter().collect(),
            images: Vec::new(),
            client: Some("Azure Monitor".to_owned()),
            client_url: None,
        }])
    }
}

/// Refuses anything but the common schema, saying how to switch it on:
/// the older schemas carry no alert id that a Resolved could find again.
fn schema_check(body: &Value) -> Result<(), InvalidPayload> {
    match body.get("schemaId") {
        Some(Value::String(id)) if id.trim() == COMMON_SCHEMA_ID => Ok(()),
        Some(Value::String(id)) => Err(InvalidPayload::field(
            "schemaId",
            format!("'{id}' is not the common alert schema ({COMMON_SCHEMA_ID}): {ENABLE_COMMON_SCHEMA}"),
        )),
        Some(_) => Err(InvalidPayload::field(
            "schemaId",
            format!("must be the string \"{COMMON_SCHEMA_ID}\": {ENABLE_COMMON_SCHEMA}"),
        )),
        None => Err(InvalidPayload::field(
            "schemaId",
            format!("is missing, so this is not the common alert schema: {ENABLE_COMMON_SCHEMA}"),
        )),
    }
}

fn action_of(condition: Option<&str>) -> Result<Action, FieldError> {
    const FIELD: &str = "data.essentials.monitorCondition";
    match condition.map(str::trim) {
        Some(c) if c.eq_ignore_ascii_case("fired") => Ok(Action::Trigger),
        Some(c) if c.eq_ignore_ascii_case("resolved") => Ok(Action::Resolve),
        Some(other) => Err(FieldError::new(
            FIELD,
            format!("'{other}' is not one of Fired, Resolved"),
        )),
        None => Err(FieldError::new(FIELD, "is missing (Fired or Resolved)")),
    }
}

/// When the alert fired, or when it resolved. Azure fills resolvedDateTime
/// only for metric alerts; other resolved alerts carry no time of their own.
fn timestamp_of(essentials: &Essentials, action: Action) -> Result<Option<DateTime<Utc>>, FieldError> {
    let (name, value) = match action {
        Action::Resolve => ("resolvedDateTime", &essentials.resolved_date_time),
        _ => ("firedDateTime", &essentials.fired_date_time),
    };
    let Some(value) = non_blank(value.as_deref()) else {
        return Ok(None);
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(Some(time.with_timezone(&Utc)));
    }
    // Service Health alerts write UTC without the offset
    // ("2021-11-17T05:34:48.0623172"); the field is documented as UTC.
    NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| Some(naive.and_utc()))
        .map_err(|_| {
            FieldError::new(
                format!("data.essentials.{name}"),
                format!("'{value}' is not an ISO 8601 date-time"),
            )
        })
}

/// Azure's five levels onto Tocsin's four: Sev0 critical, Sev1 error, Sev2
/// warning, Sev3 informational and Sev4 verbose both info.
fn severity_of(severity: Option<&str>) -> Severity {
    match severity.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("sev0") => Severity::Critical,
        Some("sev1") => Severity::Error,
        Some("sev2") => Severity::Warning,
        Some("sev3" | "sev4") => Severity::Info,
        // Not a documented value: loud enough to be seen, not a page.
        _ => Severity::Warning,
    }
}

fn summary_of(essentials: &Essentials) -> String {
    let rule = non_blank(essentials.alert_rule.as_deref());
    let description = non_blank(essentials.description.as_deref());
    match (rule, description) {
        (Some(rule), Some(description)) => format!("{rule}: {description}"),
        (Some(rule), None) => rule.to_owned(),
        (None, Some(description)) => description.to_owned(),
        (None, None) => "Azure Monitor alert".to_owned(),
    }
}

/// The affected resource's name: the first configuration item, else the
/// last segment of the first target resource id.
fn source_of(essentials: &Essentials) -> String {
    let item = first_text(essentials.configuration_items.as_deref());
    let target = first_text(essentials.alert_target_ids.as_deref())
        .and_then(|id| id.trim_end_matches('/').rsplit('/').next())
        .and_then(|name| non_blank(Some(name)));
    item.or(target)
        .or_else(|| non_blank(essentials.monitoring_service.as_deref()))
        .unwrap_or(SOURCE)
        .to_owned()
}

/// The alert as Azure sent it, less the embedded log search results: those
/// may take up to the 256 KB Azure allows an alert, more than one queued
/// event may carry, and the alert context keeps the links to them.
fn details_of(essentials: Value, alert_context: Option<Value>, custom_properties: Option<Value>) -> Value {
    let mut details = serde_json::Map::new();
    details.insert("essentials".to_owned(), essentials);
    if let Some(mut context) = alert_context.filter(|c| !c.is_null()) {
        if let Some(object) = context.as_object_mut() {
            if object.remove("SearchResults").is_some() {
                details.insert("searchResultsOmitted".to_owned(), Value::Bool(true));
            }
        }
        details.insert("alertContext".to_owned(), context);
    }
    if let Some(properties) = custom_properties.filter(|p| !p.is_null()) {
        details.insert("customProperties".to_owned(), properties);
    }
    Value::Object(details)
}

fn first_text(values: Option<&[Value]>) -> Option<&str> {
    values?.iter().find_map(|v| non_blank(v.as_str()))
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The body as one JSON object.
fn object_body(body: &[u8]) -> Result<Value, InvalidPayload> {
    let value: Value = serde_json::from_slice(body).map_err(InvalidPayload::unreadable)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(InvalidPayload::field(
            "body",
            "must be one JSON object (an Azure Monitor common alert schema notification)",
        ))
    }
}

/// Deserializes with the path of a type error in the field name.
fn deserialize<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, InvalidPayload> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        InvalidPayload::field(
            format!("{prefix}{path}"),
            format!("has the wrong type: {}", error.into_inner()),
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    use crate::signature::{hmac_sha256_hex, SignatureError};

    const FIRED: &str = include_str!("../../../../events/azure/fired.json");
    const RESOLVED: &str = include_str!("../../../../events/azure/resolved.json");
    const LOG_FIRED: &str = include_str!("../../../../events/azure/log-search-fired.json");
    const TEST: &str = include_str!("../../../../events/azure/test-action-group.json");
    const LEGACY_METRIC: &str = include_str!("../../../../events/azure/legacy-metric-alert.json");

    fn integration(secret: Option<&str>) -> Integration {
        crate::providers::test_support::integration(
            "checkout-azure",
            "checkout",
            ProviderKind::Azure,
            "44444444444444444444444444444444",
            secret,
        )
    }

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a str) -> Inbound<'a> {
        Inbound {
            headers,
            query: None,
            body: body.as_bytes(),
            received_at: Utc::now(),
        }
    }

    fn normalize(body: &str) -> Result<Vec<Alert>, InvalidPayload> {
        let headers = HeaderMap::new();
        Azure.normalize(&inbound(&headers, body), &integration(None))
    }

    fn one(body: &str) -> Alert {
        let mut alerts = normalize(body).unwrap();
        assert_eq!(alerts.len(), 1);
        alerts.remove(0)
    }

    fn refused(body: &str) -> Vec<FieldError> {
        normalize(body).unwrap_err().errors
    }

    fn fields(body: &str) -> Vec<String> {
        refused(body).into_iter().map(|e| e.field).collect()
    }

    fn with(sample: &str, change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(sample).unwrap();
        change(&mut value);
        value.to_string()
    }

    fn payload(alert: &Alert) -> &Payload {
        alert.payload.as_ref().unwrap()
    }

    const SAMPLE_ALERT_ID: &str =
        "/subscriptions/<subscription ID>/providers/Microsoft.AlertsManagement/alerts/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e";

    #[test]
    fn a_fired_metric_alert_triggers_on_its_alert_id() {
        let alert = one(FIRED);
        assert_eq!(alert.event_action, Action::Trigger);
        assert_eq!(alert.dedup_key.as_str(), SAMPLE_ALERT_ID);
        let p = payload(&alert);
        assert_eq!(p.summary, "WCUS-R2-Gen2");
        assert_eq!(p.source, "wcus-r2-gen2");
        assert_eq!(p.severity, Severity::Info);
        assert_eq!(p.class.as_deref(), Some("Metric"));
        assert_eq!(
            p.timestamp,
            Some(Utc.with_ymd_and_hms(2019, 3, 22, 13, 58, 24).unwrap() + chrono::Duration::nanoseconds(371_321_300))
        );
        let details = p.custom_details.as_ref().unwrap();
        assert_eq!(details["essentials"]["monitoringService"], json!("Platform"));
        assert_eq!(
            details["alertContext"]["condition"]["allOf"][0]["metricName"],
            json!("Percentage CPU")
        );
        assert_eq!(alert.client.as_deref(), Some("Azure Monitor"));
    }

    #[test]
    fn the_resolved_notification_resolves_the_same_key_at_its_resolved_time() {
        let fired = one(FIRED);
        let resolved = one(RESOLVED);
        assert_eq!(resolved.event_action, Action::Resolve);
        assert_eq!(resolved.dedup_key, fired.dedup_key);
        assert_eq!(
            payload(&resolved).timestamp,
            Some(Utc.with_ymd_and_hms(2019, 3, 22, 14, 3, 16).unwrap() + chrono::Duration::nanoseconds(224_631_300))
        );
    }

    #[test]
    fn a_log_search_alert_maps_severity_rule_and_description_and_drops_search_results() {
        let alert = one(LOG_FIRED);
        assert_eq!(alert.event_action, Action::Trigger);
        let p = payload(&alert);
        assert_eq!(p.severity, Severity::Info);
        assert_eq!(p.summary, "test-logAlertRule-v1-numResults: Alert rule description");
        assert_eq!(p.class.as_deref(), Some("Log"));
        assert_eq!(p.source, "test-computer");
        let details = p.custom_details.as_ref().unwrap();
        assert!(details["alertContext"].get("SearchResults").is_none());
        assert_eq!(details["searchResultsOmitted"], json!(true));
        assert!(details["alertContext"]["LinkToSearchResultsAPI"].is_string());
    }

    #[test]
    fn severities_map_sev0_to_sev4() {
        for (sev, expected) in [
            ("Sev0", Severity::Critical),
            ("Sev1", Severity::Error),
            ("Sev2", Severity::Warning),
            ("Sev3", Severity::Info),
            ("Sev4", Severity::Info),
            ("sev1", Severity::Error),
            ("Sev9", Severity::Warning),
        ] {
            let body = with(FIRED, |v| v["data"]["essentials"]["severity"] = json!(sev));
            assert_eq!(payload(&one(&body)).severity, expected, "{sev}");
        }
    }

    #[test]
    fn the_test_action_group_sample_is_accepted_with_nothing_to_do() {
        assert_eq!(normalize(TEST).unwrap(), Vec::new());
        // Service Health test alerts carry another alert id, same subscription.
        let health = with(TEST, |v| {
            v["data"]["essentials"]["alertId"] = json!(
                "/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh"
            )
        });
        assert_eq!(normalize(&health).unwrap(), Vec::new());
        // The same payload under a real alert id is a real alert.
        let real = with(TEST, |v| v["data"]["essentials"]["alertId"] = json!(SAMPLE_ALERT_ID));
        assert_eq!(one(&real).event_action, Action::Trigger);
    }

    #[test]
    fn other_schemas_are_refused_with_the_way_to_enable_the_common_one() {
        let errors = refused(LEGACY_METRIC);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "schemaId");
        assert!(errors[0].reason.contains("AzureMonitorMetricAlert"), "{errors:?}");
        assert!(errors[0].reason.contains("common alert schema"), "{errors:?}");
        let missing = with(FIRED, |v| {
            v.as_object_mut().unwrap().remove("schemaId");
        });
        assert_eq!(fields(&missing), vec!["schemaId"]);
        assert_eq!(fields(&with(FIRED, |v| v["schemaId"] = json!(3))), vec!["schemaId"]);
    }

    #[test]
    fn missing_or_unknown_essentials_are_refused_by_name() {
        let no_essentials = with(FIRED, |v| {
            v["data"].as_object_mut().unwrap().remove("essentials");
        });
        assert_eq!(fields(&no_essentials), vec!["data.essentials"]);
        let body = with(FIRED, |v| {
            v["data"]["essentials"].as_object_mut().unwrap().remove("alertId");
            v["data"]["essentials"]["monitorCondition"] = json!("Acknowledged");
        });
        assert_eq!(
            fields(&body),
            vec!["data.essentials.alertId", "data.essentials.monitorCondition"]
        );
        let body = with(FIRED, |v| v["data"]["essentials"]["firedDateTime"] = json!("yesterday"));
        assert_eq!(fields(&body), vec!["data.essentials.firedDateTime"]);
        let body = with(FIRED, |v| v["data"]["essentials"]["alertRule"] = json!(["x"]));
        assert_eq!(fields(&body), vec!["data.essentials.alertRule"]);
    }

    #[test]
    fn the_source_falls_back_from_configuration_items_to_the_target_resource() {
        let body = with(LOG_FIRED, |v| v["data"]["essentials"]["configurationItems"] = json!([]));
        assert_eq!(payload(&one(&body)).source, "test-logAnalyticsWorkspace");
        let body = with(LOG_FIRED, |v| {
            v["data"]["essentials"]["configurationItems"] = Value::Null;
            v["data"]["essentials"]["alertTargetIDs"] = Value::Null;
        });
        assert_eq!(payload(&one(&body)).source, "Log Analytics");
    }

    #[test]
    fn times_without_an_offset_are_read_as_utc() {
        let body = with(FIRED, |v| {
            v["data"]["essentials"]["firedDateTime"] = json!("2021-11-17T05:34:48.0623172")
        });
        assert_eq!(
            payload(&one(&body)).timestamp,
            Some(Utc.with_ymd_and_hms(2021, 11, 17, 5, 34, 48).unwrap() + chrono::Duration::nanoseconds(62_317_200))
        );
    }

    #[test]
    fn a_resolved_alert_without_a_resolved_time_has_none() {
        let body = with(RESOLVED, |v| {
            v["data"]["essentials"]
                .as_object_mut()
                .unwrap()
                .remove("resolvedDateTime");
        });
        assert_eq!(payload(&one(&body)).timestamp, None);
    }

    #[test]
    fn bodies_that_are_not_one_object_are_refused() {
        assert_eq!(fields("not json"), vec!["body"]);
        assert_eq!(fields("[]"), vec!["body"]);
        assert_eq!(fields("\"azureMonitorCommonAlertSchema\""), vec!["body"]);
    }

    #[test]
    fn azure_cannot_sign_so_the_default_signature_rules_apply() {
        let headers = HeaderMap::new();
        assert_eq!(Azure.verify(&inbound(&headers, FIRED), &integration(None)), Ok(()));
        assert!(matches!(
            Azure.verify(&inbound(&headers, FIRED), &integration(Some("s3cret"))),
            Err(SignatureError::Missing { .. })
        ));
        let mut signed = HeaderMap::new();
        let wrong = format!("sha256={}", hmac_sha256_hex(b"other", FIRED.as_bytes()));
        signed.insert("x-signature", HeaderValue::from_str(&wrong).unwrap());
        assert_eq!(
            Azure.verify(&inbound(&signed, FIRED), &integration(Some("s3cret"))),
            Err(SignatureError::Mismatch)
        );
    }
}
