//! Metrics in CloudWatch's embedded metric format (EMF): one JSON document
//! per unit of work (a request, an event, a notification) written as one
//! line to stdout, from which CloudWatch Logs extracts the metrics. No API
//! call on the request path and no permission beyond writing logs.
//!
//! Dimensions are few and of low cardinality (function role, provider,
//! channel, outcome, refusal reason, action and the way it came): every distinct combination is a
//! metric that is billed. Integration ids travel as properties, searchable
//! in Logs Insights; keys, incident ids, dedup keys and recipients never
//! appear at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::Action;
use crate::maintenance::Released;
use crate::notify::Channel;
use crate::process::Applied;

/// The CloudWatch namespace of every Tocsin metric.
pub const NAMESPACE: &str = "Tocsin";

/// The metric names; the dashboard and alarms in template.yaml may name
/// only these (tests/e2e/template.rs checks it).
pub mod name {
    /// Ingest: requests answered, accepted or not.
    pub const REQUESTS: &str = "Requests";
    /// Ingest: events queued for the processor.
    pub const EVENTS_ACCEPTED: &str = "EventsAccepted";
    /// Ingest: requests answered with an error status.
    pub const REQUESTS_REJECTED: &str = "RequestsRejected";
    /// Processor: events applied, by outcome.
    pub const EVENTS_APPLIED: &str = "EventsApplied";
    /// Processor: messages that failed and go back to the queue.
    pub const EVENTS_FAILED: &str = "EventsFailed";
    /// Processor: milliseconds from an event's receipt by ingest to its
    /// incident write.
    pub const PROCESSING_LAG: &str = "ProcessingLag";
    /// Notify: messages handed to SES, SNS or Slack.
    pub const NOTIFICATIONS_SENT: &str = "NotificationsSent";
    /// Notify: delivery attempts that failed (retried or dead-lettered).
    pub const NOTIFICATIONS_FAILED: &str = "NotificationsFailed";
    /// Notify: failed attempts the provider throttled (SNS SMS spend and
    /// rate limits above all); also counted in NotificationsFailed. Also
    /// the jobs Tocsin's own throttle held for a bundle (crate::throttle).
    pub const NOTIFICATIONS_THROTTLED: &str = "NotificationsThrottled";
    /// Dispatch: notification jobs sent to the channel queues.
    pub const NOTIFICATIONS_QUEUED: &str = "NotificationsQueued";
    /// Dispatch: transitions whose notifications a maintenance window held.
    pub const NOTIFICATIONS_HELD: &str = "NotificationsHeld";
    /// Dispatch: stream batches answered with a failure (retried from the
    /// failed record).
    pub const DISPATCH_FAILURES: &str = "DispatchFailures";
    /// Scheduler: heartbeats overdue at a check, newly or still missed.
    pub const HEARTBEATS_MISSED: &str = "HeartbeatsMissed";
    /// Scheduler: ended maintenance windows marked released.
    pub const MAINTENANCE_RELEASED: &str = "MaintenanceReleased";
    /// Scheduler: incidents still open when their maintenance ended, and
    /// notified then.
    pub const INCIDENTS_RELEASED: &str = "IncidentsReleased";
    /// API and Slack: incidents acknowledged or resolved, by the way people
    /// took (`Via`: the incidents API, an action link, Slack).
    pub const INCIDENT_ACTIONS: &str = "IncidentActions";

    pub const ALL: [&str; 16] = [
        REQUESTS,
        EVENTS_ACCEPTED,
        REQUESTS_REJECTED,
        EVENTS_APPLIED,
        EVENTS_FAILED,
        PROCESSING_LAG,
        NOTIFICATIONS_SENT,
        NOTIFICATIONS_FAILED,
        NOTIFICATIONS_THROTTLED,
        NOTIFICATIONS_QUEUED,
        NOTIFICATIONS_HELD,
        DISPATCH_FAILURES,
        HEARTBEATS_MISSED,
        MAINTENANCE_RELEASED,
        INCIDENTS_RELEASED,
        INCIDENT_ACTIONS,
    ];
}

/// The dimension names: the only ones a document may declare.
pub mod dimension {
    /// The function's role: `ingest`, `processor`, `notify`, `dispatch`,
    /// `scheduler` or `api`.
    pub const FUNCTION: &str = "Function";
    pub const PROVIDER: &str = "Provider";
    /// Why ingest refused a request, from its status (`unauthorized`, …).
    pub const REASON: &str = "Reason";
    /// What applying an event did (`opened`, `repeated`, …).
    pub const OUTCOME: &str = "Outcome";
    pub const CHANNEL: &str = "Channel";
    /// What someone did to an incident (`acknowledge`, `resolve`).
    pub const ACTION: &str = "Action";
    /// The way they did it ([`super::ActionVia`]: `api`, `link`, `slack`).
    pub const VIA: &str = "Via";

    pub const ALL: [&str; 7] = [FUNCTION, PROVIDER, REASON, OUTCOME, CHANNEL, ACTION, VIA];
}

/// The `Function` dimension's values.
pub mod function {
    /// The Slack app's buttons and slash command (slack-interactions).
    pub const SLACK: &str = "slack";
    pub const INGEST: &str = "ingest";
    pub const PROCESSOR: &str = "processor";
    pub const NOTIFY: &str = "notify";
    pub const DISPATCH: &str = "dispatch";
    pub const SCHEDULER: &str = "scheduler";
    pub const API: &str = "api";
}

/// The way someone acknowledged or resolved an incident: the `Via`
/// dimension of [`name::INCIDENT_ACTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionVia {
    /// `POST /incidents/{id}/acknowledge` or `/resolve`, with an API key.
    Api,
    /// The confirmation of a signed one-click link (`POST /act/{token}`).
    Link,
    /// A Slack button or the `/tocsin` slash command.
    Slack,
}

impl ActionVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionVia::Api => "api",
            ActionVia::Link => "link",
            ActionVia::Slack => "slack",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// Where finished documents go.
pub trait MetricsSink: Send + Sync {
    fn emit(&self, document: &Value);
}

/// One line per document on stdout: what Lambda sends to CloudWatch Logs.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl MetricsSink for StdoutSink {
    fn emit(&self, document: &Value) {
        let mut line = document.to_string();
        line.push('\n');
        // One write under the lock, so a log line never splits a document.
        // A metric that cannot be written is lost, never a request.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// Drops every document: the local stack and tests that do not look.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl MetricsSink for DiscardSink {
    fn emit(&self, _: &Value) {}
}

/// Keeps every document, for tests to read.
#[derive(Debug, Default)]
pub struct CollectingSink {
    documents: Mutex<Vec<Value>>,
}

impl CollectingSink {
    pub fn documents(&self) -> Vec<Value> {
        self.documents.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl MetricsSink for CollectingSink {
    fn emit(&self, document: &Value) {
        if let Ok(mut documents) = self.documents.lock() {
            documents.push(document.clone());
        }
    }
}

/// Whether documents go to stdout: only inside the Lambda runtime (which
/// sets AWS_LAMBDA_FUNCTION_NAME), unless TOCSIN_METRICS is `off`; a
/// terminal running the local stack never sees them.
pub fn emf_enabled(lambda_function_name: Option<&str>, switch: Option<&str>) -> bool {
    let in_lambda = lambda_function_name.is_some_and(|name| !name.trim().is_empty());
    let switched_off = switch.is_some_and(|s| s.trim().eq_ignore_ascii_case("off"));
    in_lambda && !switched_off
}

/// What one delivery attempt came to, for [`Metrics::notification`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent,
    Failed {
        throttled: bool,
    },
    /// Held for a bundle by the recipient's throttle: counted where it was
    /// held (`notification_throttled`), nothing here.
    Held,
}

/// Emits the metrics of one function role.
#[derive(Clone)]
pub struct Metrics {
    function: &'static str,
    sink: Arc<dyn MetricsSink>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("function", &self.function).finish()
    }
}

/// Dimension sets, each implicitly led by `Function`.
type DimensionSets = &'static [&'static [&'static str]];

const BY_FUNCTION: DimensionSets = &[&[]];
const BY_PROVIDER: DimensionSets = &[&[], &[dimension::PROVIDER]];
const BY_PROVIDER_AND_REASON: DimensionSets = &[&[], &[dimension::PROVIDER], &[dimension::REASON]];
const BY_OUTCOME: DimensionSets = &[&[], &[dimension::OUTCOME]];
const BY_CHANNEL: DimensionSets = &[&[], &[dimension::CHANNEL]];
/// By action alone too, so that dashboards and alarms made before `Via`
/// keep their metric.
const BY_ACTION_AND_VIA: DimensionSets = &[&[], &[dimension::ACTION], &[dimension::ACTION, dimension::VIA]];

impl Metrics {
    pub fn new(function: &'static str, sink: Arc<dyn MetricsSink>) -> Self {
        Self { function, sink }
    }

    /// Emits nothing.
    pub fn disabled(function: &'static str) -> Self {
        Self::new(function, Arc::new(DiscardSink))
    }

    /// To stdout inside Lambda, nowhere elsewhere (see [`emf_enabled`]).
    pub fn from_env(function: &'static str) -> Self {
        let lambda = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok();
        let switch = std::env::var("TOCSIN_METRICS").ok();
        if emf_enabled(lambda.as_deref(), switch.as_deref()) {
            Self::new(function, Arc::new(StdoutSink))
        } else {
            Self::disabled(function)
        }
    }

    /// One answered ingest request: `status` its HTTP status, `events` how
    /// many it queued; the integration, when known, only as a property.
    pub fn ingest(&self, at: DateTime<Utc>, provider: &str, status: u16, events: usize, integration: Option<&str>) {
        let mut document = Document::new(at);
        document.dimension(dimension::PROVIDER, provider);
        document.property("status", Value::from(status));
        if let Some(integration) = integration {
            document.property("integration", Value::from(integration));
        }
        document.metric(name::REQUESTS, Unit::Count, 1.0, BY_PROVIDER);
        if (200..300).contains(&status) {
            document.metric(name::EVENTS_ACCEPTED, Unit::Count, events as f64, BY_PROVIDER);
        } else {
            document.dimension(dimension::REASON, refusal_reason(status));
            document.metric(name::REQUESTS_REJECTED, Unit::Count, 1.0, BY_PROVIDER_AND_REASON);
        }
        self.emit(document);
    }

    /// One event the processor applied, and how long after its receipt.
    pub fn applied(&self, at: DateTime<Utc>, applied: &Applied, received_at: DateTime<Utc>) {
        let mut document = Document::new(at);
        document.dimension(dimension::OUTCOME, applied.outcome());
        document.metric(name::EVENTS_APPLIED, Unit::Count, 1.0, BY_OUTCOME);
        // A redelivery's lag measures the queue's retry, not processing.
        if !matches!(applied, Applied::Duplicate) {
            let lag = (at - received_at).num_milliseconds().max(0);
            document.metric(name::PROCESSING_LAG, Unit::Milliseconds, lag as f64, BY_FUNCTION);
        }
        self.emit(document);
    }

    /// One message the processor failed on (it goes back to the queue).
    pub fn event_failed(&self, at: DateTime<Utc>) {
        let mut document = Document::new(at);
        document.metric(name::EVENTS_FAILED, Unit::Count, 1.0, BY_FUNCTION);
        self.emit(document);
    }

    /// One delivery attempt on `channel`.
    pub fn notification(&self, at: DateTime<Utc>, channel: Channel, outcome: DeliveryOutcome) {
        let mut document = Document::new(at);
        document.dimension(dimension::CHANNEL, channel.as_str());
        match outcome {
            DeliveryOutcome::Sent => document.metric(name::NOTIFICATIONS_SENT, Unit::Count, 1.0, BY_CHANNEL),
            DeliveryOutcome::Failed { throttled } => {
                document.metric(name::NOTIFICATIONS_FAILED, Unit::Count, 1.0, BY_CHANNEL);
                if throttled {
                    document.metric(name::NOTIFICATIONS_THROTTLED, Unit::Count, 1.0, BY_CHANNEL);
                }
            }
            DeliveryOutcome::Held => return,
        }
        self.emit(document);
    }

    /// One job the recipient's throttle held for a bundle (crate::throttle).
    pub fn notification_throttled(&self, at: DateTime<Utc>, channel: Channel) {
        let mut document = Document::new(at);
        document.dimension(dimension::CHANNEL, channel.as_str());
        document.metric(name::NOTIFICATIONS_THROTTLED, Unit::Count, 1.0, BY_CHANNEL);
        self.emit(document);
    }

    /// The jobs one dispatched batch sent to `channel`'s queue.
    pub fn notifications_queued(&self, at: DateTime<Utc>, channel: Channel, jobs: usize) {
        let mut document = Document::new(at);
        document.dimension(dimension::CHANNEL, channel.as_str());
        document.metric(name::NOTIFICATIONS_QUEUED, Unit::Count, jobs as f64, BY_CHANNEL);
        self.emit(document);
    }

    /// One batch of the table's stream: how many of its transitions a
    /// maintenance window held, and whether it was answered with a failure.
    pub fn dispatched(&self, at: DateTime<Utc>, held: usize, failed: bool) {
        let mut document = Document::new(at);
        document.metric(name::NOTIFICATIONS_HELD, Unit::Count, held as f64, BY_FUNCTION);
        document.metric(
            name::DISPATCH_FAILURES,
            Unit::Count,
            u8::from(failed).into(),
            BY_FUNCTION,
        );
        self.emit(document);
    }

    /// One check of the heartbeats: how many were overdue. A heartbeat
    /// missed for an hour counts in every check of that hour.
    pub fn heartbeats_checked(&self, at: DateTime<Utc>, missed: usize) {
        let mut document = Document::new(at);
        document.metric(name::HEARTBEATS_MISSED, Unit::Count, missed as f64, BY_FUNCTION);
        self.emit(document);
    }

    /// One release run of ended maintenance windows.
    pub fn maintenance_released(&self, at: DateTime<Utc>, released: &Released) {
        let mut document = Document::new(at);
        document.metric(
            name::MAINTENANCE_RELEASED,
            Unit::Count,
            released.windows as f64,
            BY_FUNCTION,
        );
        document.metric(
            name::INCIDENTS_RELEASED,
            Unit::Count,
            released.incidents as f64,
            BY_FUNCTION,
        );
        self.emit(document);
    }

    /// One incident acknowledged or resolved through the incidents API; its
    /// id only as a property.
    pub fn incident_action(&self, at: DateTime<Utc>, action: Action, incident: &str) {
        self.incident_action_via(at, action, ActionVia::Api, incident);
    }

    /// One incident acknowledged or resolved `via` the API, a link or Slack
    /// (a Slack action counts once queued: the processor applies it); its
    /// id only as a property.
    pub fn incident_action_via(&self, at: DateTime<Utc>, action: Action, via: ActionVia, incident: &str) {
        let mut document = Document::new(at);
        document.dimension(dimension::ACTION, action.as_str());
        document.dimension(dimension::VIA, via.as_str());
        document.property("incident", Value::from(incident));
        document.metric(name::INCIDENT_ACTIONS, Unit::Count, 1.0, BY_ACTION_AND_VIA);
        self.emit(document);
    }

    fn emit(&self, document: Document) {
        self.sink.emit(&document.render(self.function));
    }
}

/// A refusal's reason, from its status: a handful of values, whatever the
/// request carried.
pub fn refusal_reason(status: u16) -> &'static str {
    match status {
        400 => "invalid_payload",
        401 => "unauthorized",
        403 => "disabled",
        404 => "unknown_integration",
        413 => "too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        503 => "unavailable",
        _ if (400..500).contains(&status) => "client_error",
        _ => "server_error",
    }
}

struct Metric {
    name: &'static str,
    unit: Unit,
    value: f64,
    sets: DimensionSets,
}

/// One EMF document under construction.
struct Document {
    at: DateTime<Utc>,
    dimensions: BTreeMap<&'static str, String>,
    properties: Map<String, Value>,
    metrics: Vec<Metric>,
}

impl Document {
    fn new(at: DateTime<Utc>) -> Self {
        Self {
            at,
            dimensions: BTreeMap::new(),
            properties: Map::new(),
            metrics: Vec::new(),
        }
    }

    fn dimension(&mut self, name: &'static str, value: &str) {
        self.dimensions.insert(name, value.to_owned());
    }

    fn property(&mut self, name: &str, value: Value) {
        self.properties.insert(name.to_owned(), value);
    }

    fn metric(&mut self, name: &'static str, unit: Unit, value: f64, sets: DimensionSets) {
        self.metrics.push(Metric {
            name,
            unit,
            value,
            sets,
        });
    }

    /// The document: metrics sharing their dimension sets share a
    /// directive. A set naming a dimension the document lacks is left out
    /// (CloudWatch would reject the whole document).
    fn render(self, function: &str) -> Value {
        let mut directives: Vec<(DimensionSets, Vec<&Metric>)> = Vec::new();
        for metric in &self.metrics {
            match directives.iter_mut().find(|(sets, _)| *sets == metric.sets) {
                Some((_, metrics)) => metrics.push(metric),
                None => directives.push((metric.sets, vec![metric])),
            }
        }
        let directives: Vec<Value> = directives
            .into_iter()
            .map(|(sets, metrics)| {
                let dimensions: Vec<Vec<&str>> = sets
                    .iter()
                    .filter(|set| set.iter().all(|d| self.dimensions.contains_key(d)))
                    .map(|set| {
                        std::iter::once(dimension::FUNCTION)
                            .chain(set.iter().copied())
                            .collect()
                    })
                    .collect();
                let metrics: Vec<Value> = metrics
                    .iter()
                    .map(|m| serde_json::json!({"Name": m.name, "Unit": m.unit.as_str()}))
                    .collect();
                serde_json::json!({"Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics})
            })
            .collect();
        let mut root = self.properties;
        root.insert(dimension::FUNCTION.to_owned(), Value::from(function));
        for (name, value) in self.dimensions {
            root.insert(name.to_owned(), Value::from(value));
        }
        for metric in &self.metrics {
            root.insert(metric.name.to_owned(), Value::from(metric.value));
        }
        root.insert(
            "_aws".to_owned(),
            serde_json::json!({"Timestamp": self.at.timestamp_millis(), "CloudWatchMetrics": directives}),
        );
        Value::Object(root)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::incident::IgnoreReason;

    const UNITS: [&str; 27] = [
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];

    /// The rules of CloudWatch's EMF specification a document must meet
    /// for CloudWatch Logs to extract its metrics.
    fn check_emf(document: &Value) -> Result<(), String> {
        let root = document.as_object().ok_or("the root is not an object")?;
        let aws = root
            .get("_aws")
            .and_then(Value::as_object)
            .ok_or("no _aws metadata object")?;
        let timestamp = aws
            .get("Timestamp")
            .and_then(Value::as_i64)
            .ok_or("_aws.Timestamp is not an integer")?;
        if !(1_000_000_000_000..10_000_000_000_000).contains(&timestamp) {
            return Err(format!(
                "_aws.Timestamp {timestamp} is not milliseconds since the epoch"
            ));
        }
        let directives = aws
            .get("CloudWatchMetrics")
            .and_then(Value::as_array)
            .ok_or("_aws.CloudWatchMetrics is not an array")?;
        if directives.is_empty() {
            return Err("no metric directive".into());
        }
        for directive in directives {
            let namespace = directive["Namespace"].as_str().ok_or("a directive without Namespace")?;
            if namespace.is_empty() || namespace.len() > 1024 {
                return Err(format!("namespace {namespace:?}"));
            }
            let sets = directive["Dimensions"].as_array().ok_or("Dimensions is not an array")?;
            for set in sets {
                let set = set.as_array().ok_or("a dimension set is not an array")?;
                if set.is_empty() || set.len() > 30 {
                    return Err(format!("a dimension set of {} dimensions", set.len()));
                }
                for dimension in set {
                    let dimension = dimension.as_str().ok_or("a dimension name is not a string")?;
                    let value = root
                        .get(dimension)
                        .ok_or_else(|| format!("dimension {dimension} has no member"))?;
                    let value = value
                        .as_str()
                        .ok_or_else(|| format!("dimension {dimension} is not a string"))?;
                    if value.is_empty() || value.len() > 1024 {
                        return Err(format!("dimension {dimension} = {value:?}"));
                    }
                }
            }
            let metrics = directive["Metrics"].as_array().ok_or("Metrics is not an array")?;
            if metrics.is_empty() || metrics.len() > 100 {
                return Err(format!("{} metrics in one directive", metrics.len()));
            }
            for metric in metrics {
                let name = metric["Name"].as_str().ok_or("a metric without Name")?;
                if let Some(unit) = metric.get("Unit") {
                    let unit = unit.as_str().ok_or("Unit is not a string")?;
                    if !UNITS.contains(&unit) {
                        return Err(format!("{name}: unit {unit} is not a CloudWatch unit"));
                    }
                }
                match root.get(name) {
                    Some(Value::Number(_)) => {}
                    Some(Value::Array(values)) if values.len() <= 100 && values.iter().all(Value::is_number) => {}
                    other => return Err(format!("metric {name} has value {other:?}")),
                }
            }
        }
        Ok(())
    }

    fn collecting(function: &'static str) -> (Metrics, Arc<CollectingSink>) {
        let sink = Arc::new(CollectingSink::default());
        (Metrics::new(function, sink.clone()), sink)
    }

    fn at() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_123)
            .single()
            .expect("valid time")
    }

    /// Every (dimension set, metric) pair the document declares.
    fn declared(document: &Value) -> Vec<(Vec<String>, String)> {
        let mut pairs = Vec::new();
        for directive in document["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            for set in directive["Dimensions"].as_array().unwrap() {
                let set: Vec<String> = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_owned())
                    .collect();
                for metric in directive["Metrics"].as_array().unwrap() {
                    pairs.push((set.clone(), metric["Name"].as_str().unwrap().to_owned()));
                }
            }
        }
        pairs
    }

    fn pair(set: &[&str], metric: &str) -> (Vec<String>, String) {
        (set.iter().map(|s| s.to_string()).collect(), metric.to_owned())
    }

    #[test]
    fn an_accepted_request_is_one_valid_document() {
        let (metrics, sink) = collecting(function::INGEST);
        metrics.ingest(at(), "prometheus", 202, 2, Some("alertmanager"));
        let documents = sink.documents();
        assert_eq!(documents.len(), 1);
        let document = &documents[0];
        check_emf(document).unwrap();
        assert_eq!(document["_aws"]["Timestamp"], 1_700_000_000_123_i64);
        assert_eq!(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Tocsin");
        assert_eq!(document["Function"], "ingest");
        assert_eq!(document["Provider"], "prometheus");
        assert_eq!(document["Requests"], 1.0);
        assert_eq!(document["EventsAccepted"], 2.0);
        assert!(document.get("RequestsRejected").is_none());
        assert_eq!(document["integration"], "alertmanager");
        let declared = declared(document);
        assert!(declared.contains(&pair(&["Function"], "EventsAccepted")));
        assert!(declared.contains(&pair(&["Function", "Provider"], "Requests")));
        assert_eq!(
            document["_aws"]["CloudWatchMetrics"][0]["Metrics"][1],
            serde_json::json!({"Name": "EventsAccepted", "Unit": "Count"})
        );
    }

    #[test]
    fn a_refusal_is_counted_by_reason_and_provider() {
        let (metrics, sink) = collecting(function::INGEST);
        metrics.ingest(at(), "webhook", 401, 0, None);
        let document = &sink.documents()[0];
        check_emf(document).unwrap();
        assert_eq!(document["Reason"], "unauthorized");
        assert_eq!(document["RequestsRejected"], 1.0);
        assert!(document.get("EventsAccepted").is_none());
        assert!(document.get("integration").is_none());
        let declared = declared(document);
        assert!(declared.contains(&pair(&["Function", "Reason"], "RequestsRejected")));
        assert!(declared.contains(&pair(&["Function", "Provider"], "RequestsRejected")));
        assert!(declared.contains(&pair(&["Function"], "Requests")));
        assert!(
            !declared.contains(&pair(&["Function", "Reason"], "Requests")),
            "requests are not counted by reason"
        );
    }

    #[test]
    fn an_applied_event_carries_its_outcome_and_lag() {
        let (metrics, sink) = collecting(function::PROCESSOR);
        let received = at() - chrono::Duration::milliseconds(1500);
        metrics.applied(
            at(),
            &Applied::Ignored {
                reason: IgnoreReason::UnknownKey,
                incident: None,
            },
            received,
        );
        metrics.applied(at(), &Applied::Duplicate, received);
        metrics.event_failed(at());
        let documents = sink.documents();
        for document in &documents {
            check_emf(document).unwrap();
        }
        assert_eq!(documents[0]["Outcome"], "ignored");
        assert_eq!(documents[0]["ProcessingLag"], 1500.0);
        let declared0 = declared(&documents[0]);
        assert!(declared0.contains(&pair(&["Function"], "ProcessingLag")));
        assert!(declared0.contains(&pair(&["Function", "Outcome"], "EventsApplied")));
        assert!(
            !declared0.contains(&pair(&["Function", "Outcome"], "ProcessingLag")),
            "the lag is not split by outcome"
        );
        assert_eq!(documents[1]["Outcome"], "duplicate");
        assert!(documents[1].get("ProcessingLag").is_none());
        assert_eq!(documents[2]["EventsFailed"], 1.0);
    }

    #[test]
    fn deliveries_are_counted_by_channel_and_throttling_apart() {
        let (metrics, sink) = collecting(function::NOTIFY);
        metrics.notification(at(), Channel::Email, DeliveryOutcome::Sent);
        metrics.notification(at(), Channel::Sms, DeliveryOutcome::Failed { throttled: true });
        metrics.notification(at(), Channel::Slack, DeliveryOutcome::Failed { throttled: false });
        let documents = sink.documents();
        for document in &documents {
            check_emf(document).unwrap();
        }
        assert_eq!(documents[0]["NotificationsSent"], 1.0);
        assert_eq!(documents[1]["Channel"], "sms");
        assert_eq!(documents[1]["NotificationsFailed"], 1.0);
        assert_eq!(documents[1]["NotificationsThrottled"], 1.0);
        assert!(declared(&documents[1]).contains(&pair(&["Function", "Channel"], "NotificationsThrottled")));
        assert!(documents[2].get("NotificationsThrottled").is_none());
    }

    #[test]
    fn a_held_delivery_is_not_counted_as_sent() {
        // The throttle counted it where it held it (notification_throttled).
        let (metrics, sink) = collecting(function::NOTIFY);
        metrics.notification(at(), Channel::Sms, DeliveryOutcome::Held);
        assert!(sink.documents().is_empty());
    }

    #[test]
    fn dispatch_counts_jobs_by_channel_held_transitions_and_failures() {
        let (metrics, sink) = collecting(function::DISPATCH);
        metrics.notifications_queued(at(), Channel::Slack, 4);
        metrics.dispatched(at(), 2, false);
        metrics.dispatched(at(), 0, true);
        let documents = sink.documents();
        assert_eq!(documents.len(), 3);
        for document in &documents {
            check_emf(document).unwrap();
            assert_eq!(document["Function"], "dispatch");
        }
        assert_eq!(documents[0]["Channel"], "slack");
        assert_eq!(documents[0]["NotificationsQueued"], 4.0);
        let declared0 = declared(&documents[0]);
        assert!(declared0.contains(&pair(&["Function"], "NotificationsQueued")));
        assert!(declared0.contains(&pair(&["Function", "Channel"], "NotificationsQueued")));
        assert_eq!(documents[1]["NotificationsHeld"], 2.0);
        assert_eq!(documents[1]["DispatchFailures"], 0.0);
        assert_eq!(
            declared(&documents[1]),
            [
                pair(&["Function"], "NotificationsHeld"),
                pair(&["Function"], "DispatchFailures")
            ]
        );
        assert_eq!(documents[2]["NotificationsHeld"], 0.0);
        assert_eq!(documents[2]["DispatchFailures"], 1.0);
    }

    #[test]
    fn the_scheduler_counts_missed_heartbeats_and_released_maintenance() {
        let (metrics, sink) = collecting(function::SCHEDULER);
        metrics.heartbeats_checked(at(), 3);
        metrics.maintenance_released(
            at(),
            &Released {
                windows: 2,
                incidents: 5,
                jobs: 15,
            },
        );
        let documents = sink.documents();
        assert_eq!(documents.len(), 2);
        for document in &documents {
            check_emf(document).unwrap();
            assert_eq!(document["Function"], "scheduler");
        }
        assert_eq!(documents[0]["HeartbeatsMissed"], 3.0);
        assert_eq!(declared(&documents[0]), [pair(&["Function"], "HeartbeatsMissed")]);
        assert_eq!(documents[1]["MaintenanceReleased"], 2.0);
        assert_eq!(documents[1]["IncidentsReleased"], 5.0);
        assert!(
            documents[1].get("jobs").is_none() && documents[1].get("NotificationsQueued").is_none(),
            "the release's jobs are not counted here"
        );
    }

    #[test]
    fn incident_actions_are_counted_by_action_with_the_incident_as_a_property() {
        let (metrics, sink) = collecting(function::API);
        metrics.incident_action(at(), Action::Acknowledge, "inc_0e87094c381efc1ba49c");
        metrics.incident_action(at(), Action::Resolve, "inc_0e87094c381efc1ba49c");
        let documents = sink.documents();
        for document in &documents {
            check_emf(document).unwrap();
        }
        assert_eq!(documents[0]["Action"], "acknowledge");
        assert_eq!(documents[0]["IncidentActions"], 1.0);
        assert_eq!(documents[0]["incident"], "inc_0e87094c381efc1ba49c");
        assert_eq!(documents[0]["Via"], "api");
        assert_eq!(documents[1]["Action"], "resolve");
        let declared = declared(&documents[1]);
        assert!(declared.contains(&pair(&["Function", "Action"], "IncidentActions")));
        assert!(declared.contains(&pair(&["Function", "Action", "Via"], "IncidentActions")));
        assert!(
            declared.iter().all(|(set, _)| !set.iter().any(|d| d == "incident")),
            "the incident id is never a dimension"
        );
    }

    #[test]
    fn link_and_slack_actions_are_counted_by_the_way_they_came() {
        let (api, sink) = collecting(function::API);
        api.incident_action_via(at(), Action::Resolve, ActionVia::Link, "inc_1");
        let slack = Metrics::new(function::SLACK, sink.clone());
        slack.incident_action_via(at(), Action::Acknowledge, ActionVia::Slack, "inc_2");
        let documents = sink.documents();
        let seen: Vec<(&str, &str, &str)> = documents
            .iter()
            .map(|d| {
                check_emf(d).unwrap();
                (
                    d["Function"].as_str().unwrap(),
                    d["Action"].as_str().unwrap(),
                    d["Via"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, [("api", "resolve", "link"), ("slack", "acknowledge", "slack")]);
        for document in &documents {
            assert_eq!(document["IncidentActions"], 1.0);
            assert!(declared(document).contains(&pair(&["Function", "Action", "Via"], "IncidentActions")));
        }
    }

    #[test]
    fn only_the_known_low_cardinality_dimensions_are_declared() {
        let (metrics, sink) = collecting(function::INGEST);
        metrics.ingest(at(), "webhook", 202, 1, Some("shop"));
        metrics.ingest(at(), "webhook", 429, 0, Some("shop"));
        metrics.applied(at(), &Applied::Duplicate, at());
        metrics.notification(at(), Channel::Sms, DeliveryOutcome::Sent);
        metrics.notifications_queued(at(), Channel::Email, 1);
        metrics.dispatched(at(), 1, true);
        metrics.heartbeats_checked(at(), 1);
        metrics.maintenance_released(at(), &Released::default());
        metrics.incident_action(at(), Action::Resolve, "inc_1");
        metrics.incident_action_via(at(), Action::Acknowledge, ActionVia::Slack, "inc_1");
        for document in sink.documents() {
            for (set, metric) in declared(&document) {
                assert!(name::ALL.contains(&metric.as_str()), "{metric} is not in name::ALL");
                for dimension in set {
                    assert!(dimension::ALL.contains(&dimension.as_str()), "{dimension}");
                }
            }
        }
    }

    #[test]
    fn a_set_naming_a_missing_dimension_is_left_out() {
        let mut document = Document::new(at());
        document.metric(name::REQUESTS, Unit::Count, 1.0, BY_PROVIDER);
        let rendered = document.render("ingest");
        check_emf(&rendered).unwrap();
        assert_eq!(declared(&rendered), [pair(&["Function"], "Requests")]);
    }

    #[test]
    fn the_checker_refuses_what_cloudwatch_would() {
        let (metrics, sink) = collecting(function::INGEST);
        metrics.ingest(at(), "webhook", 202, 1, None);
        let good = sink.documents().remove(0);
        let mut seconds = good.clone();
        seconds["_aws"]["Timestamp"] = Value::from(1_700_000_000);
        assert!(check_emf(&seconds).is_err());
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("Provider");
        assert!(check_emf(&missing).is_err());
        let mut text = good.clone();
        text["Requests"] = Value::from("1");
        assert!(check_emf(&text).is_err());
        let mut unit = good;
        unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = Value::from("Items");
        assert!(check_emf(&unit).is_err());
    }

    #[test]
    fn emission_is_on_only_inside_lambda() {
        assert!(!emf_enabled(None, None), "the local stack");
        assert!(!emf_enabled(Some(""), None));
        assert!(emf_enabled(Some("tocsin-processor"), None));
        assert!(emf_enabled(Some("tocsin-processor"), Some("on")));
        assert!(!emf_enabled(Some("tocsin-processor"), Some("OFF")));
    }

    #[test]
    fn reasons_are_few() {
        assert_eq!(refusal_reason(401), "unauthorized");
        assert_eq!(refusal_reason(429), "rate_limited");
        assert_eq!(refusal_reason(418), "client_error");
        assert_eq!(refusal_reason(502), "server_error");
    }
}
