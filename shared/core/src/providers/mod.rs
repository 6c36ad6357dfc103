//! One module per monitoring tool: its payload types, its mapping to
//! [`Alert`]s, its signature scheme and its answers. Adding a provider touches
//! its module, one line in [`ProviderKind`] and [`provider`], one function in
//! template.yaml and its doc page.

use std::fmt;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::answer::{json_answer, Answer};
use crate::config::Integration;
use crate::event::{Alert, Event, FieldError};
use crate::incident::IncidentId;
use crate::signature::{verify_body_signature, SignatureError};

pub mod appdynamics;
pub mod azure;
mod base64;
pub mod better_uptime;
pub mod bitbucket;
pub mod cloudwatch;
pub mod datadog;
pub mod dynatrace;
pub mod elastic;
pub mod email;
pub mod events_v2;
mod forge;
pub mod generic;
pub mod github;
pub mod gitlab;
pub mod google_cloud_monitoring;
pub mod grafana;
mod header_secret;
pub mod honeycomb;
pub mod newrelic;
pub mod pingdom;
pub mod prometheus;
pub mod sentry;
pub mod site24x7;
pub mod splunk_observability;
pub mod splunk_oncall;
pub mod uptime_kuma;
pub mod uptimerobot;
pub mod webhook;

/// The provider ids: the config `type` and the `/integrations/{provider}` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProviderKind {
    /// PagerDuty's Events API v2 (`POST /v2/enqueue`).
    #[serde(rename = "events-v2")]
    EventsV2,
    /// Prometheus Alertmanager's webhook (version 4).
    #[serde(rename = "prometheus")]
    Prometheus,
    /// Any JSON webhook, with field aliases and per-integration field paths.
    #[serde(rename = "webhook")]
    Webhook,
    /// GoAlert's generic incoming API (`POST /api/v2/generic/incoming`).
    #[serde(rename = "generic")]
    Generic,
    /// UptimeRobot's webhook alert contact, with Tocsin's published POST value.
    #[serde(rename = "uptimerobot")]
    UptimeRobot,
    /// Azure Monitor action groups, common alert schema.
    #[serde(rename = "azure")]
    Azure,
    /// Grafana Alerting's webhook contact point (and legacy dashboard alerts).
    #[serde(rename = "grafana")]
    Grafana,
    /// Kibana alerting rules through the Webhook connector, with Tocsin's published body template.
    #[serde(rename = "elastic")]
    Elastic,
    /// Honeycomb triggers and SLO burn alerts through a webhook recipient (default payload).
    #[serde(rename = "honeycomb")]
    Honeycomb,
    /// Splunk Observability Cloud (SignalFx) detectors through a Webhook integration.
    #[serde(rename = "splunk-observability")]
    SplunkObservability,
    /// Splunk On-Call (VictorOps) REST endpoint alerts.
    #[serde(rename = "splunk-oncall")]
    SplunkOnCall,
    /// Google Cloud Monitoring's webhook notification channel (version 1.2).
    #[serde(rename = "google-cloud-monitoring")]
    GoogleCloudMonitoring,
    /// Pingdom's state change webhook (uptime and transaction checks).
    #[serde(rename = "pingdom")]
    Pingdom,
    /// Datadog monitors through the Webhooks integration, with Tocsin's payload template.
    #[serde(rename = "datadog")]
    Datadog,
    /// Better Stack Uptime's (formerly Better Uptime) incident webhook.
    #[serde(rename = "better-uptime")]
    BetterUptime,
    /// New Relic workflows' webhook destination, with Tocsin's payload template.
    #[serde(rename = "newrelic")]
    NewRelic,
    /// Sentry's integration platform webhooks (issues, issue alerts, metric alerts).
    #[serde(rename = "sentry")]
    Sentry,
    /// Amazon CloudWatch alarms, delivered by Amazon SNS to an HTTPS subscription.
    #[serde(rename = "cloudwatch")]
    CloudWatch,
    /// GitHub webhooks: Actions runs, checks, code scanning, Dependabot.
    #[serde(rename = "github")]
    Github,
    /// GitLab pipeline events.
    #[serde(rename = "gitlab")]
    Gitlab,
    /// Bitbucket Cloud build status events.
    #[serde(rename = "bitbucket")]
    Bitbucket,
    /// Uptime Kuma's webhook notification (JSON, form-data or custom body).
    #[serde(rename = "uptime-kuma")]
    UptimeKuma,
    /// Site24x7's webhook integration (incident or custom parameters).
    #[serde(rename = "site24x7")]
    Site24x7,
    /// Dynatrace problem notifications (custom integration), with Tocsin's payload.
    #[serde(rename = "dynatrace")]
    Dynatrace,
    /// AppDynamics HTTP request actions, with Tocsin's request template.
    #[serde(rename = "appdynamics")]
    AppDynamics,
    /// Inbound email: an SES receipt rule, or an MTA posting the raw message.
    #[serde(rename = "email")]
    Email,
}

impl ProviderKind {
    pub const ALL: &'static [ProviderKind] = &[
        ProviderKind::EventsV2,
        ProviderKind::Prometheus,
        ProviderKind::Webhook,
        ProviderKind::Generic,
        ProviderKind::AppDynamics,
        ProviderKind::Azure,
        ProviderKind::BetterUptime,
        ProviderKind::Bitbucket,
        ProviderKind::CloudWatch,
        ProviderKind::Datadog,
        ProviderKind::Dynatrace,
        ProviderKind::Elastic,
        ProviderKind::Email,
        ProviderKind::Github,
        ProviderKind::Gitlab,
        ProviderKind::GoogleCloudMonitoring,
        ProviderKind::Grafana,
        ProviderKind::Honeycomb,
        ProviderKind::NewRelic,
        ProviderKind::Pingdom,
        ProviderKind::Sentry,
        ProviderKind::Site24x7,
        ProviderKind::SplunkObservability,
        ProviderKind::SplunkOnCall,
        ProviderKind::UptimeKuma,
        ProviderKind::UptimeRobot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "events-v2",
            ProviderKind::Prometheus => "prometheus",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Generic => "generic",
            ProviderKind::UptimeRobot => "uptimerobot",
            ProviderKind::Azure => "azure",
            ProviderKind::Grafana => "grafana",
            ProviderKind::Elastic => "elastic",
            ProviderKind::Honeycomb => "honeycomb",
            ProviderKind::SplunkObservability => "splunk-observability",
            ProviderKind::SplunkOnCall => "splunk-oncall",
            ProviderKind::GoogleCloudMonitoring => "google-cloud-monitoring",
            ProviderKind::Pingdom => "pingdom",
            ProviderKind::Datadog => "datadog",
            ProviderKind::BetterUptime => "better-uptime",
            ProviderKind::NewRelic => "newrelic",
            ProviderKind::Sentry => "sentry",
            ProviderKind::CloudWatch => "cloudwatch",
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::Bitbucket => "bitbucket",
            ProviderKind::UptimeKuma => "uptime-kuma",
            ProviderKind::Site24x7 => "site24x7",
            ProviderKind::Dynatrace => "dynatrace",
            ProviderKind::AppDynamics => "appdynamics",
            ProviderKind::Email => "email",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == value)
    }

    /// The path the provider posts to, relative to the API's base URL.
    pub fn path(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "/v2/enqueue",
            ProviderKind::Prometheus => "/integrations/prometheus",
            ProviderKind::Webhook => "/integrations/webhook",
            ProviderKind::Generic => "/api/v2/generic/incoming",
            ProviderKind::UptimeRobot => "/integrations/uptimerobot",
            ProviderKind::Azure => "/integrations/azure",
            ProviderKind::Grafana => "/integrations/grafana",
            ProviderKind::Elastic => "/integrations/elastic",
            ProviderKind::Honeycomb => "/integrations/honeycomb",
            ProviderKind::SplunkObservability => "/integrations/splunk-observability",
            ProviderKind::SplunkOnCall => "/integrations/splunk-oncall",
            ProviderKind::GoogleCloudMonitoring => "/integrations/google-cloud-monitoring",
            ProviderKind::Pingdom => "/integrations/pingdom",
            ProviderKind::Datadog => "/integrations/datadog",
            ProviderKind::BetterUptime => "/integrations/better-uptime",
            ProviderKind::NewRelic => "/integrations/newrelic",
            ProviderKind::Sentry => "/integrations/sentry",
            ProviderKind::CloudWatch => "/integrations/cloudwatch",
            ProviderKind::Github => "/integrations/github",
            ProviderKind::Gitlab => "/integrations/gitlab",
            ProviderKind::Bitbucket => "/integrations/bitbucket",
            ProviderKind::UptimeKuma => "/integrations/uptime-kuma",
            ProviderKind::Site24x7 => "/integrations/site24x7",
            ProviderKind::Dynatrace => "/integrations/dynatrace",
            ProviderKind::AppDynamics => "/integrations/appdynamics",
            ProviderKind::Email => "/integrations/email",
        }
    }

    /// How requests are checked beyond the integration key: the provider's
    /// own signature or token scheme, for listings and docs.
    pub fn signature(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "routing_key in the body; optional X-Signature HMAC-SHA256",
            ProviderKind::Prometheus => "optional X-Signature HMAC-SHA256 of the body",
            ProviderKind::Webhook => "optional X-Signature / X-Webhook-Signature HMAC-SHA256",
            ProviderKind::Generic => "token in query, form or JSON; optional X-Signature HMAC-SHA256",
            ProviderKind::AppDynamics => "X-Tocsin-Secret shared secret header",
            ProviderKind::Email => "key in the recipient address; optional X-Signature HMAC-SHA256 over HTTP",
            ProviderKind::Azure => "key in the URL (Azure sends no headers)",
            ProviderKind::BetterUptime => "X-Tocsin-Secret shared secret header",
            ProviderKind::Bitbucket => "X-Hub-Signature HMAC-SHA256 of the body",
            ProviderKind::CloudWatch => "SNS message signature (RSA, v1 SHA1 / v2 SHA256), topic allow-list",
            ProviderKind::Datadog => "X-Tocsin-Secret shared secret header",
            ProviderKind::Dynatrace => "X-Tocsin-Secret shared secret header",
            ProviderKind::Elastic => "HTTP Basic password = the secret",
            ProviderKind::Github => "X-Hub-Signature-256 HMAC-SHA256 of the body",
            ProviderKind::Gitlab => "X-Gitlab-Token secret token",
            ProviderKind::GoogleCloudMonitoring => "HTTP Basic password = the secret",
            ProviderKind::Grafana => "X-Grafana-Alerting-Signature HMAC-SHA256 (optional timestamp)",
            ProviderKind::Honeycomb => "X-Honeycomb-Webhook-Token shared secret",
            ProviderKind::NewRelic => "X-Tocsin-Secret shared secret header",
            ProviderKind::Pingdom => "key in the URL (Pingdom sends no headers)",
            ProviderKind::Sentry => "Sentry-Hook-Signature HMAC-SHA256 of the body",
            ProviderKind::Site24x7 => "X-Tocsin-Secret shared secret header",
            ProviderKind::SplunkObservability => "X-SFX-Signature base64 HMAC-SHA256 of the body",
            ProviderKind::SplunkOnCall => "optional X-Signature HMAC-SHA256",
            ProviderKind::UptimeKuma => "X-Tocsin-Secret shared secret header",
            ProviderKind::UptimeRobot => "X-Tocsin-Secret shared secret header",
        }
    }

    /// The query string a request to `path` carries, with the integration
    /// key when the path holds it: Splunk On-Call (VictorOps) senders build
    /// `<api_url><api_key>/<routing_key>`, so its endpoint also answers
    /// `/integrations/splunk-oncall/{key}/{routing_key}`, read as
    /// `?token={key}&routing_key={routing_key}`.
    pub fn query_with_path_key(self, path: &str, query: Option<&str>) -> Option<String> {
        let rest = path.strip_prefix(self.path()).and_then(|rest| rest.strip_prefix('/'));
        let key_and_route = match (self, rest) {
            (ProviderKind::SplunkOnCall, Some(rest)) => rest.split_once('/').filter(|(key, route)| {
                !key.is_empty() && !route.is_empty() && !route.contains('/') && !key.contains('/')
            }),
            _ => None,
        };
        match key_and_route {
            None => query.map(str::to_owned),
            Some((key, route)) => {
                let mut out = form_urlencoded::Serializer::new(query.unwrap_or_default().to_owned());
                out.append_pair("token", key).append_pair("routing_key", route);
                Some(out.finish())
            }
        }
    }

    /// Whether the tool may deliver with GET and the alert in the query
    /// string (Uptime Kuma's GET method, UptimeRobot's query mode).
    pub fn accepts_get(self) -> bool {
        matches!(self, ProviderKind::UptimeKuma | ProviderKind::UptimeRobot)
    }

    /// Human name, for listings and docs.
    pub fn title(self) -> &'static str {
        match self {
            ProviderKind::EventsV2 => "PagerDuty-compatible Events API v2",
            ProviderKind::Prometheus => "Prometheus Alertmanager",
            ProviderKind::Webhook => "Generic webhook",
            ProviderKind::Generic => "GoAlert-compatible generic API",
            ProviderKind::UptimeRobot => "UptimeRobot",
            ProviderKind::Azure => "Azure Monitor",
            ProviderKind::Grafana => "Grafana Alerting",
            ProviderKind::Elastic => "Elastic (Kibana alerting)",
            ProviderKind::Honeycomb => "Honeycomb",
            ProviderKind::SplunkObservability => "Splunk Observability Cloud",
            ProviderKind::SplunkOnCall => "Splunk On-Call (VictorOps) REST",
            ProviderKind::GoogleCloudMonitoring => "Google Cloud Monitoring",
            ProviderKind::Pingdom => "Pingdom",
            ProviderKind::Datadog => "Datadog",
            ProviderKind::BetterUptime => "Better Stack Uptime (Better Uptime)",
            ProviderKind::NewRelic => "New Relic",
            ProviderKind::Sentry => "Sentry",
            ProviderKind::CloudWatch => "Amazon CloudWatch alarms (through SNS)",
            ProviderKind::Github => "GitHub",
            ProviderKind::Gitlab => "GitLab",
            ProviderKind::Bitbucket => "Bitbucket Cloud",
            ProviderKind::UptimeKuma => "Uptime Kuma",
            ProviderKind::Site24x7 => "Site24x7",
            ProviderKind::Dynatrace => "Dynatrace",
            ProviderKind::AppDynamics => "AppDynamics",
            ProviderKind::Email => "Inbound email",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One inbound request, as the provider sees it: raw bytes, never parsed
/// before the signature is checked.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// A payload that cannot become events: a message and one entry per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidPayload {
    pub message: String,
    pub errors: Vec<FieldError>,
}

impl InvalidPayload {
    pub fn new(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            message: message.into(),
            errors,
        }
    }

    /// One problem with one field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let error = FieldError::new(field, reason);
        Self {
            message: error.to_string(),
            errors: vec![error],
        }
    }

    /// A body that is not the JSON (or form) the provider sends.
    pub fn unreadable(error: impl fmt::Display) -> Self {
        Self::field("body", format!("is not valid JSON: {error}"))
    }
}

/// What ingest learnt about the incident an accepted trigger lands on, for
/// providers whose answer names it (GoAlert's AlertID / IsNew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentHint {
    pub incident: IncidentId,
    pub is_new: bool,
}

/// Everything a provider may need to answer a request that was accepted.
#[derive(Debug)]
pub struct Accepted<'a> {
    pub events: &'a [Event],
    pub integration: &'a Integration,
    pub hint: Option<IncidentHint>,
}

/// How a provider's requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The tool posts its own payload.
    Direct,
    /// Amazon SNS posts an envelope that ingest verifies (signature, topic)
    /// and answers (subscription confirmation) itself; the provider's
    /// `verify` and `normalize` see only a notification's `Message`.
    Sns,
}

pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The largest body accepted (PagerDuty's 512 KB unless the provider
    /// documents otherwise).
    fn max_body_bytes(&self) -> usize {
        512 * 1024
    }

    /// The body formats this endpoint reads, as media types
    /// (crate::limits::check_media_type). JSON by default; a request that
    /// names none of them is refused with 415 before anything is parsed.
    fn media_types(&self) -> &'static [MediaType] {
        crate::limits::JSON_BODIES
    }

    /// How requests reach this provider's endpoint.
    fn delivery(&self) -> Delivery {
        Delivery::Direct
    }

    /// The integration key when the provider carries it in the body (Events
    /// v2 `routing_key`, GoAlert `token`), read only when no header or query
    /// parameter carries one.
    fn key_in_body(&self, _inbound: &Inbound<'_>) -> Option<String> {
        None
    }

    /// Checks the request's signature on the raw body. The default is
    /// Tocsin's own `X-Signature: sha256=<hex>` for integrations with a
    /// secret; providers with their own scheme override it.
    fn verify(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<(), SignatureError> {
        match &integration.secret {
            Some(secret) => verify_body_signature(inbound.headers, inbound.body, &[secret]),
            None => Ok(()),
        }
    }

    /// Turns the payload into alerts: all of them, or an error and none.
    fn normalize(&self, inbound: &Inbound<'_>, integration: &Integration) -> Result<Vec<Alert>, InvalidPayload>;

    /// The provider's id of this delivery, kept when it retries or an
    /// operator redelivers (GitHub's X-GitHub-Delivery): event ids derive
    /// from it, so a repeated delivery is the same events, applied once.
    fn delivery_id<'a>(&self, _inbound: &Inbound<'a>) -> Option<&'a str> {
        None
    }

    /// Whether the answer needs an [`IncidentHint`] (costs a store read).
    fn wants_incident_hint(&self, _inbound: &Inbound<'_>) -> bool {
        false
    }

    /// The answer to a request whose events are all enqueued.
    fn accepted(&self, inbound: &Inbound<'_>, accepted: &Accepted<'_>) -> Answer {
        let _ = inbound;
        json_answer(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "status": "success",
                "message": "Event processed",
                "events": accepted.events.len(),
                "dedup_keys": accepted.events.iter().map(|e| e.dedup_key().as_str()).collect::<Vec<_>>(),
            }),
        )
    }
}

/// The providers an ingest service takes requests for: every one (the
/// local stack, the tests) or one Lambda function's own. A function's
/// binary then links no other provider's parser: nothing in it names
/// [`provider`], whose match reaches them all (docs/performance.md, zips).
#[derive(Clone, Copy)]
pub struct Providers(Served);

#[derive(Clone, Copy)]
enum Served {
    Every(fn(ProviderKind) -> &'static dyn Provider),
    One(&'static dyn Provider),
}

impl Providers {
    pub fn every() -> Self {
        Self(Served::Every(provider))
    }

    pub fn one(provider: &'static dyn Provider) -> Self {
        Self(Served::One(provider))
    }

    /// The provider of `kind`, if served.
    pub fn get(self, kind: ProviderKind) -> Option<&'static dyn Provider> {
        match self.0 {
            Served::Every(lookup) => Some(lookup(kind)),
            Served::One(provider) => (provider.kind() == kind).then_some(provider),
        }
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Served::Every(_) => f.write_str("Providers::every()"),
            Served::One(provider) => write!(f, "Providers::one({})", provider.kind()),
        }
    }
}

/// The provider behind a kind.
pub fn provider(kind: ProviderKind) -> &'static dyn Provider {
    match kind {
        ProviderKind::EventsV2 => &events_v2::EventsV2,
        ProviderKind::Prometheus => &prometheus::Prometheus,
        ProviderKind::Webhook => &webhook::Webhook,
        ProviderKind::Generic => &generic::Generic,
        ProviderKind::UptimeRobot => &uptimerobot::UptimeRobot,
        ProviderKind::Azure => &azure::Azure,
        ProviderKind::Grafana => &grafana::Grafana,
        ProviderKind::Elastic => &elastic::Elastic,
        ProviderKind::Honeycomb => &honeycomb::Honeycomb,
        ProviderKind::SplunkObservability => &splunk_observability::SplunkObservability,
        ProviderKind::SplunkOnCall => &splunk_oncall::SplunkOnCall,
        ProviderKind::GoogleCloudMonitoring => &google_cloud_monitoring::GoogleCloudMonitoring,
        ProviderKind::Pingdom => &pingdom::Pingdom,
        ProviderKind::Datadog => &datadog::Datadog,
        ProviderKind::BetterUptime => &better_uptime::BetterUptime,
        ProviderKind::NewRelic => &newrelic::NewRelic,
        ProviderKind::Sentry => &sentry::Sentry,
        ProviderKind::CloudWatch => &cloudwatch::CloudWatch,
        ProviderKind::Github => &github::Github,
        ProviderKind::Gitlab => &gitlab::Gitlab,
        ProviderKind::Bitbucket => &bitbucket::Bitbucket,
        ProviderKind::UptimeKuma => &uptime_kuma::UptimeKuma,
        ProviderKind::Site24x7 => &site24x7::Site24x7,
        ProviderKind::Dynatrace => &dynatrace::Dynatrace,
        ProviderKind::AppDynamics => &appdynamics::AppDynamics,
        ProviderKind::Email => &email::Email,
    }
}

pub use crate::limits::MediaType;

/// What the provider modules' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::auth::KeyHash;
    use crate::config::{FieldMapping, Integration, Secret};
    use crate::event::{IntegrationId, ServiceId};

    use super::ProviderKind;

    /// An enabled integration of `kind` with the given key and secret.
    pub(crate) fn integration(
        id: &str,
        service: &str,
        kind: ProviderKind,
        key: &str,
        secret: Option<&str>,
    ) -> Integration {
        Integration {
            id: IntegrationId::parse(id).expect("a valid integration id"),
            service: ServiceId::parse(service).expect("a valid service id"),
            provider: kind,
            key_hash: KeyHash::of(key),
            secret: secret.map(Secret::new),
            enabled: true,
            fields: FieldMapping::default(),
            cloudwatch: Default::default(),
            dedup_key: None,
            rate_limit_per_minute: None,
            secret_ref: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_ids() {
        for &kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
            assert_eq!(provider(kind).kind(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(ProviderKind::parse("nagios"), None);
    }

    #[test]
    fn one_provider_serves_its_own_kind_only() {
        let one = Providers::one(&prometheus::Prometheus);
        for &kind in ProviderKind::ALL {
            assert_eq!(Providers::every().get(kind).map(|p| p.kind()), Some(kind));
            let served = one.get(kind).map(|p| p.kind());
            assert_eq!(served, (kind == ProviderKind::Prometheus).then_some(kind), "{kind}");
        }
    }

    #[test]
    fn a_splunk_on_call_path_carries_the_key_and_routing_key() {
        let kind = ProviderKind::SplunkOnCall;
        let key = "7e57000000000000000000000000000f";
        assert_eq!(
            kind.query_with_path_key(&format!("/integrations/splunk-oncall/{key}/db%20team"), None)
                .as_deref(),
            Some(format!("token={key}&routing_key=db%2520team").as_str())
        );
        assert_eq!(
            kind.query_with_path_key("/integrations/splunk-oncall", Some("token=x"))
                .as_deref(),
            Some("token=x")
        );
        for path in [
            "/integrations/splunk-oncall/only-a-key",
            "/integrations/splunk-oncall/k/r/extra",
            "/integrations/splunk-oncall//r",
        ] {
            assert_eq!(kind.query_with_path_key(path, None), None, "{path}");
        }
        // Only Splunk On-Call reads a key from its path.
        assert_eq!(
            ProviderKind::Grafana.query_with_path_key(&format!("/integrations/grafana/{key}/x"), None),
            None
        );
    }
}
