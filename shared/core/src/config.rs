//! Config as code: services, their integrations and notification policies,
//! API keys. Parsed from YAML into a [`Catalog`] that is valid as a whole or
//! refused with the file, the field and the reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::auth::{ApiKey, IntegrationKey, KeyHash, Scope};
use crate::dedup::DedupTemplate;
use crate::event::{FieldError, HeartbeatId, IntegrationId, ServiceId, Severity};
use crate::heartbeat::Heartbeat;
use crate::incident::TransitionKind;
use crate::notify::Channel;
use crate::providers::ProviderKind;
use crate::secrets::SecretRef;
use crate::sns::TopicArn;

/// A shared secret (HMAC signing secret, bot token). Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a generic webhook integration finds each value: dotted paths into
/// the JSON body (`alert.labels.severity`), and which values of the action
/// field mean trigger or resolve. Empty means the built-in aliases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    #[serde(default, alias = "summaryField")]
    pub summary_field: Option<String>,
    #[serde(default, alias = "severityField")]
    pub severity_field: Option<String>,
    #[serde(default, alias = "dedupKeyField")]
    pub dedup_key_field: Option<String>,
    #[serde(default, alias = "actionField")]
    pub action_field: Option<String>,
    #[serde(default, alias = "sourceField")]
    pub source_field: Option<String>,
    #[serde(default, alias = "triggerValues")]
    pub trigger_values: Vec<String>,
    #[serde(default, alias = "resolveValues")]
    pub resolve_values: Vec<String>,
    #[serde(default, alias = "acknowledgeValues")]
    pub acknowledge_values: Vec<String>,
}

/// What a CloudWatch alarm entering INSUFFICIENT_DATA does to its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsufficientData {
    /// Opens (or keeps open) the alarm's incident.
    Trigger,
    /// Resolves it.
    Resolve,
    /// Changes nothing: the default. Missing data is not a recovery (a dead
    /// host sends none), so resolving would close incidents at the worst
    /// moment; and every new alarm passes through INSUFFICIENT_DATA, so
    /// triggering would page for nothing. Alarms that should page on missing
    /// data say so with TreatMissingData: breaching.
    #[default]
    Ignore,
}

/// Settings of a `cloudwatch` integration (CloudWatch alarms through SNS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudWatchSettings {
    /// The SNS topics that may deliver. Any other topic is refused (403) and
    /// its subscription is never confirmed: the key alone would let anyone
    /// subscribe a topic of their own.
    pub topics: Vec<TopicArn>,
    pub insufficient_data: InsufficientData,
    /// The severity of alarms whose description and name carry no
    /// `severity=<level>` tag.
    pub severity: Severity,
}

impl Default for CloudWatchSettings {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            insufficient_data: InsufficientData::default(),
            // An alarm someone routed to on-call is a real problem, but
            // critical is kept for the alarms tagged so.
            severity: Severity::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    pub id: IntegrationId,
    pub service: ServiceId,
    pub provider: ProviderKind,
    pub key_hash: KeyHash,
    /// When set, every request must carry an HMAC-SHA256 of its raw body.
    pub secret: Option<Secret>,
    /// Where the secret lives when the config names it (crate::secrets):
    /// ingest resolves it into `secret` before verifying.
    pub secret_ref: Option<SecretRef>,
    pub enabled: bool,
    pub fields: FieldMapping,
    /// Type cloudwatch only; the default elsewhere.
    pub cloudwatch: CloudWatchSettings,
    /// Replaces the provider's dedup key (crate::dedup).
    pub dedup_key: Option<DedupTemplate>,
    /// Requests accepted per minute (crate::ratelimit); None: no limit.
    pub rate_limit_per_minute: Option<u32>,
}

/// An E.164 phone number: `+`, then 8 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let digits = value.strip_prefix('+').unwrap_or("");
        let ok =
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if ok {
            Ok(PhoneNumber(value.to_owned()))
        } else {
            Err(FieldError::new(
                "sms",
                format!("'{value}' is not an E.164 number such as +15555550123"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for the shape SES will accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let ok = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !value.chars().any(|c| c.is_whitespace() || c.is_control())
                    && !domain.contains('@')
            }
            None => false,
        };
        if ok && value.len() <= 254 {
            Ok(EmailAddress(value.to_owned()))
        } else {
            Err(FieldError::new("email", format!("'{value}' is not an email address")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body an outgoing webhook is posted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// Tocsin's own JSON, signed with the webhook's secret when it has one.
    Generic,
    Teams,
    Discord,
    GoogleChat,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Generic => "generic",
            WebhookFormat::Teams => "teams",
            WebhookFormat::Discord => "discord",
            WebhookFormat::GoogleChat => "google-chat",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Generic, Self::Teams, Self::Discord, Self::GoogleChat]
            .into_iter()
            .find(|f| f.as_str() == value)
    }
}

/// Where an outgoing webhook posts: https, or http to this machine only.
/// Chat webhooks carry their credential in the path, so Debug shows the
/// scheme and host only.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    host: String,
}

impl WebhookUrl {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        let invalid = |reason: &str| FieldError::new("url", reason.to_owned());
        let lower = value.to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &value["https://".len()..])
        } else if lower.starts_with("http://") {
            (false, &value["http://".len()..])
        } else {
            return Err(invalid("must be an https:// URL (http:// for localhost only)"));
        };
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(invalid("must not carry a user name or password"));
        }
        let host = match authority.strip_prefix('[') {
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or("")),
            None => authority.split(':').next().unwrap_or("").to_ascii_lowercase(),
        };
        if host.is_empty() || host == "[]" {
            return Err(invalid("must name a host"));
        }
        if !https && !matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
            return Err(invalid(
                "must use https:// (http:// is for localhost and 127.0.0.1 only)",
            ));
        }
        Ok(WebhookUrl {
            url: value.to_owned(),
            host,
        })
    }

    /// The whole URL, credential path included: for the request only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({}/…)", self.host)
    }
}

/// An outgoing webhook of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: WebhookUrl,
    pub format: WebhookFormat,
    /// Generic only: signs each body (`X-Webhook-Signature: sha256=…`).
    /// A reference is read where the webhook is sent (the notifier's
    /// crate::secrets::SecretSource); the value is never stored for it.
    pub secret: Option<ConfiguredSecret>,
}

impl Webhook {
    /// The job recipient of the service's `index`th webhook.
    pub fn target(&self, index: usize) -> WebhookTarget {
        WebhookTarget {
            format: self.format,
            host: self.url.host().to_owned(),
            index,
        }
    }
}

/// A webhook as a notification job names it: `<format>:<host>#<index>`,
/// never the URL, whose path is a credential for Teams, Discord and Google
/// Chat. The notifier finds the URL in the service's config by index and
/// checks format and host still match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub format: WebhookFormat,
    pub host: String,
    pub index: usize,
}

impl WebhookTarget {
    pub fn recipient(&self) -> String {
        format!("{}:{}#{}", self.format.as_str(), self.host, self.index)
    }

    pub fn parse(recipient: &str) -> Option<Self> {
        let (format, rest) = recipient.split_once(':')?;
        let (host, index) = rest.rsplit_once('#')?;
        Some(WebhookTarget {
            format: WebhookFormat::parse(format)?,
            host: host.to_owned(),
            index: index.parse().ok()?,
        })
    }
}

/// Who hears about a service's incidents, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationPolicy {
    pub email: Vec<EmailAddress>,
    pub sms: Vec<PhoneNumber>,
    pub slack: Option<String>,
    /// Outgoing webhooks, each sent every notifying transition.
    pub webhooks: Vec<Webhook>,
    /// Which transitions notify at all.
    pub on: Vec<TransitionKind>,
    /// Incidents below this severity notify no one, unless a channel has
    /// its own minimum in `min_severity_by_channel`.
    pub min_severity: Severity,
    /// Channels whose minimum differs from `min_severity` (SMS only for
    /// critical incidents, say).
    pub min_severity_by_channel: BTreeMap<Channel, Severity>,
    /// Who is notified next, level by level, while an incident stays
    /// unacknowledged (crate::escalation); the recipients above are level 0.
    pub escalation: Vec<EscalationLevel>,
}

/// One escalation level: notified when the incident is still open (not
/// acknowledged, not resolved) `after_seconds` after the previous level was
/// (level 1: after the incident opened).
#[derive(Debug, Clone, PartialEq)]
pub struct EscalationLevel {
    pub after_seconds: u32,
    pub email: Vec<EmailAddress>,
    pub sms: Vec<PhoneNumber>,
    pub slack: Option<String>,
}

/// The longest delay of one escalation level: a day.
pub const MAX_ESCALATION_DELAY_SECONDS: u32 = 86_400;

/// `notify.slack: none`: no Slack channel, not even `settings.slack_channel`.
const NO_SLACK: &str = "none";

/// A Slack `#channel` name or channel id such as C0123ABCD.
fn is_slack_channel(channel: &str) -> bool {
    channel.starts_with('#') && channel.len() > 1
        || channel.starts_with('C') && channel.len() > 1 && channel.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl NotificationPolicy {
    /// Whether a transition of this severity notifies any channel.
    pub fn notifies(&self, kind: TransitionKind, severity: Severity) -> bool {
        Channel::ALL
            .iter()
            .any(|&channel| self.notifies_on(channel, kind, severity))
    }

    /// Whether a transition of this severity notifies the channel's recipients.
    pub fn notifies_on(&self, channel: Channel, kind: TransitionKind, severity: Severity) -> bool {
        self.on.contains(&kind) && severity >= self.min_severity_of(channel)
    }

    /// The channel's own minimum, else the policy's.
    pub fn min_severity_of(&self, channel: Channel) -> Severity {
        self.min_severity_by_channel
            .get(&channel)
            .copied()
            .unwrap_or(self.min_severity)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub policy: NotificationPolicy,
}

/// Where the local stack delivers Slack messages for real, when configured.
#[derive(Debug, Clone, PartialEq)]
pub enum SlackDelivery {
    IncomingWebhook { url: Secret },
    Bot { token: Secret },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    /// The sender of notification emails.
    pub email_from: Option<String>,
    /// The base URL people open links against (the API, the console).
    pub public_url: Option<String>,
    pub slack: Option<SlackDelivery>,
    /// The Slack app's signing secret: with it, the local stack answers the
    /// app's buttons and slash command (`POST /slack/interactions`,
    /// `POST /slack/commands`).
    pub slack_signing_secret: Option<Secret>,
    /// A folder of trusted SNS signing certificates
    /// (`SimpleNotificationService-<id>.pem`), for installations that cannot
    /// fetch them from SNS.
    pub sns_certificates: Option<PathBuf>,
    /// Signs the one-click acknowledge and resolve links of emails and SMS
    /// (crate::links); none: no such links.
    pub link_signing_secret: Option<ConfiguredSecret>,
    /// How long those links work; none: crate::links::DEFAULT_TTL_HOURS.
    pub link_ttl_hours: Option<u32>,
    /// Notification throttling per contact method (crate::throttle).
    pub throttle: crate::throttle::ThrottleSettings,
}

/// A secret of the settings: its value, or where to find it (read where
/// it is used: the local stack reads env and file references at start).
#[derive(Debug, Clone, PartialEq)]
pub enum ConfiguredSecret {
    Value(Secret),
    Reference(SecretRef),
}

impl ConfiguredSecret {
    /// The value, reading a reference from the environment or a file;
    /// Secrets Manager references need tocsin-aws.
    pub fn read_locally(&self) -> Result<Secret, crate::secrets::SecretError> {
        match self {
            ConfiguredSecret::Value(secret) => Ok(secret.clone()),
            ConfiguredSecret::Reference(reference) => crate::secrets::LocalSecrets::read(reference),
        }
    }
}

/// Everything a deployment is configured with, validated as a whole.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub services: Vec<Service>,
    pub integrations: Vec<Integration>,
    pub api_keys: Vec<ApiKey>,
    pub heartbeats: Vec<Heartbeat>,
    pub settings: Settings,
    /// Plain-text keys given in the config file, kept so that a local run
    /// can print ready-to-paste curl lines. Never stored anywhere.
    pub plain_keys: HashMap<IntegrationId, IntegrationKey>,
    /// The services' maintenance windows (crate::maintenance).
    pub maintenance: Vec<crate::maintenance::MaintenanceWindow>,
}

impl Catalog {
    pub fn service(&self, id: &ServiceId) -> Option<&Service> {
        self.services.iter().find(|s| &s.id == id)
    }

    pub fn integration_by_key(&self, hash: &KeyHash) -> Option<&Integration> {
        self.integrations.iter().find(|i| &i.key_hash == hash)
    }

    pub fn api_key(&self, hash: &KeyHash) -> Option<&ApiKey> {
        self.api_keys.iter().find(|k| &k.key_hash == hash)
    }
}

#[async_trait::async_trait]
impl crate::ports::ConfigStore for Catalog {
    async fn integration_by_key(&self, key: &KeyHash) -> Result<Option<Integration>, crate::ports::BackendError> {
        Ok(Catalog::integration_by_key(self, key).cloned())
    }

    async fn integration_by_topic(&self, topic: &TopicArn) -> Result<Option<Integration>, crate::ports::BackendError> {
        Ok(self
            .integrations
            .iter()
            .find(|i| i.provider == ProviderKind::CloudWatch && i.cloudwatch.topics.contains(topic))
            .cloned())
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<Service>, crate::ports::BackendError> {
        Ok(Catalog::service(self, id).cloned())
    }

    async fn api_key(&self, key: &KeyHash) -> Result<Option<ApiKey>, crate::ports::BackendError> {
        Ok(Catalog::api_key(self, key).cloned())
    }
}

/// A config refused: the file, the field (a path such as
/// `services[0].integrations[1].key`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

// The file's shape, as people write it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    api_keys: Vec<ApiKeyEntry>,
    #[serde(default)]
    services: Vec<ServiceEntry>,
    #[serde(default)]
    heartbeats: Vec<HeartbeatEntry>,
    #[serde(default)]
    settings: SettingsEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatEntry {
    id: String,
    service: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    interval_seconds: u32,
    #[serde(default)]
    severity: Option<Severity>,
}

/// A week: a longer silence is not a heartbeat any more.
const MAX_HEARTBEAT_INTERVAL: u32 = 7 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    name: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    scopes: Vec<Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    integrations: Vec<IntegrationEntry>,
    /// Absent: `settings.default_notify`; `notify: {}` notifies no one but
    /// `settings.slack_channel` (`notify: {slack: none}`: no one at all).
    #[serde(default)]
    notify: Option<NotifyEntry>,
    #[serde(default)]
    maintenance: Vec<MaintenanceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationEntry {
    id: String,
    #[serde(rename = "type")]
    provider: ProviderKind,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    #[serde(default)]
    secret: Option<SecretEntry>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    fields: FieldMapping,
    #[serde(default)]
    cloudwatch: Option<CloudWatchSettings>,
    #[serde(default, alias = "dedupKey")]
    dedup_key: Option<String>,
    /// 0 turns the limit off; absent: settings.rate_limit_per_minute.
    #[serde(default)]
    rate_limit_per_minute: Option<u32>,
}

/// A maintenance window as written: RFC 3339 times.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceEntry {
    start: String,
    end: String,
    #[serde(default)]
    reason: Option<String>,
}

/// A secret in the config: the value, or where to find it.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretEntry {
    Value(String),
    Reference(SecretRef),
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NotifyEntry {
    #[serde(default)]
    email: Vec<String>,
    #[serde(default)]
    sms: Vec<String>,
    #[serde(default)]
    slack: Option<String>,
    #[serde(default)]
    webhooks: Vec<WebhookEntry>,
    #[serde(default)]
    on: Option<Vec<TransitionKind>>,
    #[serde(default)]
    min_severity: Option<Severity>,
    #[serde(default)]
    min_severity_by_channel: BTreeMap<Channel, Severity>,
    #[serde(default)]
    escalation: Vec<EscalationEntry>,
}

/// `after_minutes`, or `after_seconds` (tests and demos: the local
/// scheduler ticks at least every second, the AWS one every minute).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationEntry {
    #[serde(default)]
    after_minutes: Option<u32>,
    #[serde(default)]
    after_seconds: Option<u32>,
    #[serde(default)]
    email: Vec<String>,
    #[serde(default)]
    sms: Vec<String>,
    #[serde(default)]
    slack: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    url: String,
    #[serde(default = "generic_format")]
    format: WebhookFormat,
    #[serde(default)]
    secret: Option<SecretEntry>,
}

fn generic_format() -> WebhookFormat {
    WebhookFormat::Generic
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsEntry {
    #[serde(default)]
    email_from: Option<String>,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    slack_webhook_url: Option<String>,
    #[serde(default)]
    slack_bot_token: Option<String>,
    #[serde(default)]
    slack_signing_secret: Option<String>,
    #[serde(default)]
    sns_certificates: Option<PathBuf>,
    /// Every integration's default; 0 turns the limit off.
    #[serde(default)]
    rate_limit_per_minute: Option<u32>,
    #[serde(default)]
    link_signing_secret: Option<SecretEntry>,
    #[serde(default)]
    link_ttl_hours: Option<u32>,
    #[serde(default)]
    throttle: Option<crate::throttle::ThrottleEntry>,
    /// The policy of services that declare no `notify`.
    #[serde(default)]
    default_notify: Option<NotifyEntry>,
    /// The Slack channel of every notify block that names none.
    #[serde(default)]
    slack_channel: Option<String>,
}

impl Catalog {
    /// Parses and validates a config file's text. `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Catalog, ConfigError> {
        let error = |field: &str, reason: String| ConfigError {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        };

        let deserializer = serde_yaml::Deserializer::from_str(text);
        let parsed: ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            // A top-level key that is empty (or null, `?`) has an empty path.
            let field = if path == "." || path.is_empty() {
                "(document)".to_owned()
            } else {
                path
            };
            error(&field, e.into_inner().to_string())
        })?;

        let default_rate_limit = parsed.settings.rate_limit_per_minute;
        let default_slack = match parsed.settings.slack_channel {
            Some(channel) if !is_slack_channel(&channel) => {
                return Err(error(
                    "settings.slack_channel",
                    format!("'{channel}' is neither a #channel name nor a channel id such as C0123ABCD"),
                ))
            }
            other => other,
        };
        let default_notify = parsed
            .settings
            .default_notify
            .map(|notify| notification_policy(notify, "settings.default_notify", file, default_slack.as_deref()))
            .transpose()?;
        let mut catalog = Catalog {
            settings: Settings {
                throttle: crate::throttle::ThrottleSettings::parse(parsed.settings.throttle)
                    .map_err(|(field, reason)| error(&field, reason))?,
                email_from: parsed.settings.email_from,
                public_url: parsed.settings.public_url,
                slack: match (parsed.settings.slack_webhook_url, parsed.settings.slack_bot_token) {
                    (Some(_), Some(_)) => {
                        return Err(error(
                            "settings",
                            "give slack_webhook_url or slack_bot_token, not both".into(),
                        ))
                    }
                    (Some(url), None) => Some(SlackDelivery::IncomingWebhook { url: Secret::new(url) }),
                    (None, Some(token)) => Some(SlackDelivery::Bot {
                        token: Secret::new(token),
                    }),
                    (None, None) => None,
                },
                slack_signing_secret: match parsed.settings.slack_signing_secret {
                    Some(secret) if secret.trim().is_empty() => {
                        return Err(error(
                            "settings.slack_signing_secret",
                            "must not be empty (the Slack app's Basic Information page shows it)".into(),
                        ))
                    }
                    other => other.map(|secret| Secret::new(secret.trim())),
                },
                sns_certificates: match parsed.settings.sns_certificates {
                    Some(dir) if dir.as_os_str().is_empty() => {
                        return Err(error("settings.sns_certificates", "must name a folder".into()))
                    }
                    other => other,
                },
                link_signing_secret: match parsed.settings.link_signing_secret {
                    None => None,
                    Some(SecretEntry::Value(value)) if value.chars().count() < crate::links::MIN_SECRET_CHARS => {
                        return Err(error(
                            "settings.link_signing_secret",
                            crate::links::ShortSecret.to_string(),
                        ))
                    }
                    Some(SecretEntry::Value(value)) => Some(ConfiguredSecret::Value(Secret::new(value))),
                    Some(SecretEntry::Reference(reference)) => {
                        reference
                            .validate()
                            .map_err(|reason| error("settings.link_signing_secret", reason))?;
                        Some(ConfiguredSecret::Reference(reference))
                    }
                },
                link_ttl_hours: match parsed.settings.link_ttl_hours {
                    Some(hours) if hours == 0 || hours > crate::links::MAX_TTL_HOURS => {
                        return Err(error(
                            "settings.link_ttl_hours",
                            format!("must be 1 to {} (30 days)", crate::links::MAX_TTL_HOURS),
                        ))
                    }
                    other => other,
                },
            },
            ..Catalog::default()
        };

        let mut api_key_hashes = HashSet::new();
        for (i, entry) in parsed.api_keys.into_iter().enumerate() {
            let at = |field: &str| format!("api_keys[{i}].{field}");
            if entry.name.trim().is_empty() {
                return Err(error(&at("name"), "must not be empty".into()));
            }
            let key_hash = match (entry.key, entry.key_sha256) {
                (Some(key), None) if key.len() >= 16 => KeyHash::of(&key),
                (Some(_), None) => return Err(error(&at("key"), "must be at least 16 characters".into())),
                (None, Some(hash)) => KeyHash::parse(&hash).map_err(|e| error(&at("key_sha256"), e.reason))?,
                _ => return Err(error(&at("key"), "give exactly one of key and key_sha256".into())),
            };
            if !api_key_hashes.insert(key_hash.clone()) {
                return Err(error(&at("key"), "the same key is given twice".into()));
            }
            if entry.scopes.is_empty() {
                return Err(error(&at("scopes"), "must name at least one scope".into()));
            }
            catalog.api_keys.push(ApiKey {
                name: entry.name,
                key_hash,
                scopes: entry.scopes,
            });
        }

        let mut service_ids = HashSet::new();
        let mut integration_ids = HashSet::new();
        let mut key_hashes = HashSet::new();
        for (s, entry) in parsed.services.into_iter().enumerate() {
            let at = |field: &str| format!("services[{s}].{field}");
            let id = ServiceId::parse(&entry.id).map_err(|e| error(&at("id"), e.reason))?;
            if !service_ids.insert(id.clone()) {
                return Err(error(&at("id"), format!("service '{id}' is declared twice")));
            }

            for (n, integration) in entry.integrations.into_iter().enumerate() {
                let at = |field: &str| format!("services[{s}].integrations[{n}].{field}");
                let integration_id = IntegrationId::parse(&integration.id).map_err(|e| error(&at("id"), e.reason))?;
                if !integration_ids.insert(integration_id.clone()) {
                    return Err(error(
                        &at("id"),
                        format!("integration '{integration_id}' is declared twice"),
                    ));
                }
                let key_hash = match (integration.key, integration.key_sha256) {
                    (Some(key), None) => {
                        let key = IntegrationKey::parse(&key).map_err(|e| error(&at("key"), e.reason))?;
                        let hash = key.hash();
                        catalog.plain_keys.insert(integration_id.clone(), key);
                        hash
                    }
                    (None, Some(hash)) => KeyHash::parse(&hash).map_err(|e| error(&at("key_sha256"), e.reason))?,
                    _ => return Err(error(&at("key"), "give exactly one of key and key_sha256".into())),
                };
                if !key_hashes.insert(key_hash.clone()) {
                    return Err(error(&at("key"), "another integration already uses this key".into()));
                }
                let (secret, secret_ref) = match integration.secret {
                    Some(SecretEntry::Reference(_)) if integration.provider == ProviderKind::CloudWatch => {
                        return Err(error(
                            &at("secret"),
                            "SNS cannot sign with a shared secret: cloudwatch integrations are checked by the SNS \
                             message signature instead"
                                .into(),
                        ))
                    }
                    Some(SecretEntry::Reference(reference)) => {
                        reference.validate().map_err(|reason| error(&at("secret"), reason))?;
                        (None, Some(reference))
                    }
                    Some(SecretEntry::Value(value)) => (Some(value), None),
                    None => (None, None),
                };
                let secret = match secret {
                    Some(_) if integration.provider == ProviderKind::CloudWatch => {
                        return Err(error(
                            &at("secret"),
                            "SNS cannot sign with a shared secret: cloudwatch integrations are checked by the SNS \
                             message signature instead"
                                .into(),
                        ))
                    }
                    Some(secret) if secret.len() < 16 => {
                        return Err(error(&at("secret"), "must be at least 16 characters".into()))
                    }
                    other => other.map(Secret::new),
                };
                if integration.fields != FieldMapping::default() && integration.provider != ProviderKind::Webhook {
                    return Err(error(&at("fields"), "field paths apply only to type webhook".into()));
                }
                let cloudwatch = match (integration.cloudwatch, integration.provider) {
                    (Some(_), provider) if provider != ProviderKind::CloudWatch => {
                        return Err(error(&at("cloudwatch"), "applies only to type cloudwatch".into()))
                    }
                    (settings, ProviderKind::CloudWatch) => {
                        let settings = settings.unwrap_or_default();
                        if settings.topics.is_empty() {
                            return Err(error(
                                &at("cloudwatch.topics"),
                                "must list at least one SNS topic ARN: Tocsin accepts, and confirms subscriptions \
                                 of, the listed topics only"
                                    .into(),
                            ));
                        }
                        settings
                    }
                    _ => CloudWatchSettings::default(),
                };
                let dedup_key = match integration.dedup_key.as_deref() {
                    None => None,
                    Some(template) => {
                        Some(DedupTemplate::parse(template).map_err(|reason| error(&at("dedup_key"), reason))?)
                    }
                };
                let rate_limit_per_minute = match integration.rate_limit_per_minute.or(default_rate_limit) {
                    Some(0) => None,
                    Some(limit) => Some(limit),
                    None => Some(crate::ratelimit::DEFAULT_PER_MINUTE),
                };
                catalog.integrations.push(Integration {
                    id: integration_id,
                    service: id.clone(),
                    provider: integration.provider,
                    key_hash,
                    secret,
                    secret_ref,
                    enabled: integration.enabled,
                    fields: integration.fields,
                    cloudwatch,
                    dedup_key,
                    rate_limit_per_minute,
                });
            }

            for (m, window) in entry.maintenance.iter().enumerate() {
                let at = |field: &str| format!("services[{s}].maintenance[{m}].{field}");
                let time = |field: &str, value: &str| {
                    chrono::DateTime::parse_from_rfc3339(value)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| {
                            error(
                                &at(field),
                                format!("'{value}' is not an RFC 3339 time such as 2026-05-01T22:00:00Z"),
                            )
                        })
                };
                let (start, end) = (time("start", &window.start)?, time("end", &window.end)?);
                let window =
                    crate::maintenance::MaintenanceWindow::new(id.clone(), start, end, window.reason.clone(), "config")
                        .map_err(|e| error(&at(e.field()), e.to_string()))?;
                if catalog.maintenance.iter().any(|w| w.id == window.id) {
                    return Err(error(&at("start"), "the same window is declared twice".into()));
                }
                catalog.maintenance.push(window);
            }

            // The effective policy: the stored service carries it, so the
            // functions never need the settings' default.
            let policy = match entry.notify {
                Some(notify) => notification_policy(notify, &at("notify"), file, default_slack.as_deref())?,
                None => match &default_notify {
                    Some(policy) => policy.clone(),
                    None => notification_policy(NotifyEntry::default(), &at("notify"), file, default_slack.as_deref())?,
                },
            };
            catalog.services.push(Service {
                name: entry.name.unwrap_or_else(|| id.to_string()),
                id,
                policy,
            });
        }

        let mut heartbeat_ids = HashSet::new();
        for (h, entry) in parsed.heartbeats.into_iter().enumerate() {
            let at = |field: &str| format!("heartbeats[{h}].{field}");
            let id = HeartbeatId::parse(&entry.id).map_err(|e| error(&at("id"), e.reason))?;
            if !heartbeat_ids.insert(id.clone()) {
                return Err(error(&at("id"), format!("heartbeat '{id}' is declared twice")));
            }
            let service = ServiceId::parse(&entry.service).map_err(|e| error(&at("service"), e.reason))?;
            if !service_ids.contains(&service) {
                return Err(error(&at("service"), format!("no service '{service}' is declared")));
            }
            let key_hash = match (entry.key, entry.key_sha256) {
                (Some(key), None) => IntegrationKey::parse(&key)
                    .map_err(|e| error(&at("key"), e.reason))?
                    .hash(),
                (None, Some(hash)) => KeyHash::parse(&hash).map_err(|e| error(&at("key_sha256"), e.reason))?,
                _ => return Err(error(&at("key"), "give exactly one of key and key_sha256".into())),
            };
            if entry.interval_seconds == 0 || entry.interval_seconds > MAX_HEARTBEAT_INTERVAL {
                return Err(error(
                    &at("interval_seconds"),
                    format!("must be 1 to {MAX_HEARTBEAT_INTERVAL} (a week)"),
                ));
            }
            catalog.heartbeats.push(Heartbeat {
                id,
                service,
                key_hash,
                interval_seconds: entry.interval_seconds,
                severity: entry.severity.unwrap_or(Severity::Critical),
            });
        }
        Ok(catalog)
    }
}

/// Each of a list of recipients parsed; an error names the field of the
/// first bad one (`field(i)`, e.g. `services[0].notify.sms[1]`).
fn parse_each<T>(
    values: &[String],
    parse: fn(&str) -> Result<T, FieldError>,
    field: impl Fn(usize) -> String,
    file: &str,
) -> Result<Vec<T>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            parse(value).map_err(|e| ConfigError {
                file: file.to_owned(),
                field: field(i),
                reason: e.reason,
            })
        })
        .collect()
}

/// A `notify` block as a policy; `prefix` names the block in errors
/// (`services[0].notify`, `settings.default_notify`). A block without
/// `slack` gets `default_slack` (`settings.slack_channel`); `slack: none`
/// opts out of it.
fn notification_policy(
    notify: NotifyEntry,
    prefix: &str,
    file: &str,
    default_slack: Option<&str>,
) -> Result<NotificationPolicy, ConfigError> {
    let at = |field: &str| format!("{prefix}.{field}");
    let error = |field: &str, reason: String| ConfigError {
        file: file.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let email = parse_each(&notify.email, EmailAddress::parse, |i| at(&format!("email[{i}]")), file)?;
    let sms = parse_each(&notify.sms, PhoneNumber::parse, |i| at(&format!("sms[{i}]")), file)?;
    let slack = match notify.slack {
        None => default_slack.map(str::to_owned),
        Some(none) if none == NO_SLACK => None,
        Some(channel) if !is_slack_channel(&channel) => {
            return Err(error(
                &at("slack"),
                format!("'{channel}' is neither a #channel name nor a channel id such as C0123ABCD, nor none"),
            ))
        }
        Some(channel) => Some(channel),
    };
    let webhooks = notify
        .webhooks
        .into_iter()
        .enumerate()
        .map(|(i, hook)| {
            let at = |field: &str| at(&format!("webhooks[{i}].{field}"));
            let url = WebhookUrl::parse(&hook.url).map_err(|e| error(&at("url"), e.reason))?;
            let secret = match hook.secret {
                None => None,
                Some(_) if hook.format != WebhookFormat::Generic => {
                    return Err(error(
                        &at("secret"),
                        format!("only generic webhooks are signed, not {}", hook.format.as_str()),
                    ))
                }
                Some(SecretEntry::Value(secret)) if secret.trim().is_empty() => {
                    return Err(error(&at("secret"), "must not be empty".into()))
                }
                Some(SecretEntry::Value(secret)) => Some(ConfiguredSecret::Value(Secret::new(secret.trim()))),
                Some(SecretEntry::Reference(reference)) => {
                    reference.validate().map_err(|reason| error(&at("secret"), reason))?;
                    Some(ConfiguredSecret::Reference(reference))
                }
            };
            Ok(Webhook {
                url,
                format: hook.format,
                secret,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let escalation = notify
        .escalation
        .into_iter()
        .enumerate()
        .map(|(l, level)| {
            let at = |field: &str| at(&format!("escalation[{l}].{field}"));
            let after_seconds = match (level.after_minutes, level.after_seconds) {
                (Some(minutes), None) => minutes.saturating_mul(60),
                (None, Some(seconds)) => seconds,
                _ => {
                    return Err(error(
                        &at("after_minutes"),
                        "give exactly one of after_minutes and after_seconds".into(),
                    ))
                }
            };
            if after_seconds == 0 || after_seconds > MAX_ESCALATION_DELAY_SECONDS {
                return Err(error(
                    &at("after_minutes"),
                    "must be 1 second to a day (1440 minutes)".into(),
                ));
            }
            let email = parse_each(&level.email, EmailAddress::parse, |i| at(&format!("email[{i}]")), file)?;
            let sms = parse_each(&level.sms, PhoneNumber::parse, |i| at(&format!("sms[{i}]")), file)?;
            if let Some(channel) = level.slack.as_deref().filter(|c| !is_slack_channel(c)) {
                return Err(error(
                    &at("slack"),
                    format!("'{channel}' is neither a #channel name nor a channel id such as C0123ABCD"),
                ));
            }
            if email.is_empty() && sms.is_empty() && level.slack.is_none() {
                return Err(error(&at("email"), "a level needs at least one recipient".into()));
            }
            Ok(EscalationLevel {
                after_seconds,
                email,
                sms,
                slack: level.slack,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let on = notify.on.unwrap_or_else(|| {
        vec![
            TransitionKind::Triggered,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ]
    });
    Ok(NotificationPolicy {
        email,
        sms,
        slack,
        webhooks,
        on,
        min_severity: notify.min_severity.unwrap_or(Severity::Info),
        escalation,
        min_severity_by_channel: notify.min_severity_by_channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
api_keys:
  - {name: ops, key: sk_test_0123456789abcdef, scopes: [events:write, incidents:read, incidents:write]}
services:
  - id: checkout
    name: Checkout
    integrations:
      - {id: am, type: prometheus, key: 0123456789abcdef0123456789abcdef}
      - {id: hook, type: webhook, key: fedcba9876543210fedcba9876543210, secret: a-long-enough-secret, enabled: false,
         fields: {summaryField: alert.title, triggerValues: [boom]}}
      - {id: pd, type: events-v2, key_sha256: 2360e842a6b366200ea69659589de878b1c227a34168c4f964b37a19d81af727}
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      slack: "#checkout"
      on: [triggered, resolved]
      min_severity: warning
"##;

    #[test]
    fn a_full_config_parses() {
        let catalog = Catalog::from_yaml(GOOD, "tocsin.yaml").unwrap();
        assert_eq!(catalog.services.len(), 1);
        assert_eq!(catalog.integrations.len(), 3);
        let hook = &catalog.integrations[1];
        assert!(!hook.enabled);
        assert_eq!(hook.fields.summary_field.as_deref(), Some("alert.title"));
        assert_eq!(hook.fields.trigger_values, vec!["boom"]);
        assert!(catalog.plain_keys.contains_key(&hook.id));
        assert!(!catalog.plain_keys.contains_key(&catalog.integrations[2].id));
        let policy = &catalog.services[0].policy;
        assert!(policy.notifies(TransitionKind::Triggered, Severity::Critical));
        assert!(!policy.notifies(TransitionKind::Acknowledged, Severity::Critical));
        assert!(!policy.notifies(TransitionKind::Triggered, Severity::Info));
        assert!(catalog.api_keys[0].allows(Scope::IncidentsRead));
    }

    fn refused(text: &str) -> ConfigError {
        Catalog::from_yaml(text, "bad.yaml").unwrap_err()
    }

    /// A default policy, per-channel minimums, a service without `notify`
    /// and one that opts out with `notify: {}`.
    const ROUTED: &str = r##"
settings:
  default_notify:
    email: [platform@example.com]
    sms: ["+15555550199"]
    min_severity: critical
    min_severity_by_channel: {email: warning}
services:
  - id: checkout
    notify:
      email: [oncall@example.com]
      sms: ["+15555550123"]
      min_severity_by_channel: {sms: critical, email: info}
  - id: search
  - id: quiet
    notify: {}
"##;

    #[test]
    fn a_channel_can_have_its_own_minimum_severity() {
        let catalog = Catalog::from_yaml(ROUTED, "tocsin.yaml").unwrap();
        let policy = &catalog.services[0].policy;
        assert_eq!(policy.min_severity, Severity::Info);
        assert_eq!(policy.min_severity_of(Channel::Sms), Severity::Critical);
        assert_eq!(
            policy.min_severity_of(Channel::Slack),
            Severity::Info,
            "no override: the policy's"
        );
        let triggered = TransitionKind::Triggered;
        assert!(policy.notifies_on(Channel::Email, triggered, Severity::Warning));
        assert!(!policy.notifies_on(Channel::Sms, triggered, Severity::Warning));
        assert!(policy.notifies_on(Channel::Sms, triggered, Severity::Critical));
        assert!(
            !policy.notifies_on(Channel::Sms, TransitionKind::Escalated, Severity::Critical),
            "the transitions still apply"
        );
    }

    #[test]
    fn a_service_without_notify_gets_the_default_and_an_empty_notify_opts_out() {
        let catalog = Catalog::from_yaml(ROUTED, "tocsin.yaml").unwrap();
        let search = &catalog.services[1].policy;
        assert_eq!(search.email, [EmailAddress::parse("platform@example.com").unwrap()]);
        assert_eq!(search.sms, [PhoneNumber::parse("+15555550199").unwrap()]);
        assert_eq!(search.min_severity, Severity::Critical);
        assert!(
            search.notifies(TransitionKind::Triggered, Severity::Warning),
            "email's minimum is lower"
        );
        assert!(!search.notifies_on(Channel::Sms, TransitionKind::Triggered, Severity::Warning));
        assert!(!search.notifies(TransitionKind::Triggered, Severity::Info));

        let quiet = &catalog.services[2].policy;
        assert!(quiet.email.is_empty() && quiet.sms.is_empty() && quiet.slack.is_none());

        let plain = Catalog::from_yaml("services:\n  - id: search\n", "t.yaml").unwrap();
        let policy = &plain.services[0].policy;
        assert!(policy.email.is_empty() && policy.sms.is_empty(), "no default: no one");
        assert_eq!(policy.min_severity, Severity::Info);
    }

    /// A default Slack channel; checkout names its own, search falls back
    /// to default_notify (no slack), quiet opts out.
    const SLACK_DEFAULT: &str = r##"
settings:
  slack_channel: "#alerts"
  default_notify:
    email: [platform@example.com]
services:
  - id: checkout
    notify:
      email: [oncall@example.com]
      slack: "#checkout"
  - id: search
  - id: payments
    notify:
      email: [payments@example.com]
  - id: quiet
    notify:
      email: [quiet@example.com]
      slack: none
"##;

    #[test]
    fn a_notify_block_without_slack_gets_the_default_channel() {
        let catalog = Catalog::from_yaml(SLACK_DEFAULT, "tocsin.yaml").unwrap();
        let slack = |s: usize| catalog.services[s].policy.slack.as_deref();
        assert_eq!(slack(0), Some("#checkout"), "the service's own channel wins");
        assert_eq!(slack(1), Some("#alerts"), "default_notify names none: the default");
        assert_eq!(slack(2), Some("#alerts"));
        assert_eq!(slack(3), None, "slack: none opts out");

        let job_channels = |s: usize| {
            let transition = crate::incident::Transition {
                kind: TransitionKind::Triggered,
                incident: crate::render::fixtures::incident(TransitionKind::Triggered),
                event_id: crate::event::EventId::new("e"),
            };
            crate::notify::plan(&transition, &catalog.services[s], chrono::Utc::now())
                .into_iter()
                .map(|j| (j.channel, j.to))
                .collect::<Vec<_>>()
        };
        assert!(job_channels(2).contains(&(Channel::Slack, "#alerts".to_owned())));
        assert!(job_channels(3).iter().all(|(channel, _)| *channel != Channel::Slack));

        let opted_out = SLACK_DEFAULT.replace("    email: [platform@example.com]\n", "    slack: none\n");
        let catalog = Catalog::from_yaml(&opted_out, "tocsin.yaml").unwrap();
        assert_eq!(catalog.services[1].policy.slack, None, "default_notify opts out");
        assert_eq!(catalog.services[2].policy.slack.as_deref(), Some("#alerts"));

        let without =
            Catalog::from_yaml(&SLACK_DEFAULT.replace("  slack_channel: \"#alerts\"\n", ""), "t.yaml").unwrap();
        assert_eq!(without.services[2].policy.slack, None, "no default: no Slack");
        assert_eq!(without.services[3].policy.slack, None);
        let channel_id = SLACK_DEFAULT.replace("\"#alerts\"", "C0123ABCD");
        let catalog = Catalog::from_yaml(&channel_id, "t.yaml").unwrap();
        assert_eq!(catalog.services[2].policy.slack.as_deref(), Some("C0123ABCD"));
    }

    #[test]
    fn an_invalid_default_slack_channel_is_refused() {
        for bad in ["alerts", "\"#\"", "none", "\"C01-23\""] {
            let e = refused(&SLACK_DEFAULT.replace("\"#alerts\"", bad));
            assert_eq!(e.field, "settings.slack_channel", "{bad}: {e}");
            assert!(e.reason.contains("#channel"), "{e}");
        }
        let e = refused(&SLACK_DEFAULT.replace("slack: none", "slack: nowhere"));
        assert_eq!(e.field, "services[3].notify.slack", "{e}");
    }

    #[test]
    fn unknown_channels_and_severities_in_routing_name_their_field() {
        let e = refused(&ROUTED.replace("{sms: critical, email: info}", "{pager: critical}"));
        assert!(e.field.starts_with("services[0].notify.min_severity_by_channel"), "{e}");
        assert!(e.reason.contains("pager"), "{e}");
        let e = refused(&ROUTED.replace("{sms: critical, email: info}", "{sms: sev1}"));
        assert!(e.field.starts_with("services[0].notify.min_severity_by_channel"), "{e}");
        assert!(e.reason.contains("sev1"), "{e}");
        let e = refused(&ROUTED.replace("{email: warning}", "{fax: warning}"));
        assert!(
            e.field.starts_with("settings.default_notify.min_severity_by_channel"),
            "{e}"
        );
        let e = refused(&ROUTED.replace("    min_severity: critical\n", "    min_severity: loud\n"));
        assert_eq!(e.field, "settings.default_notify.min_severity", "{e}");
        let e = refused(&ROUTED.replace("\"+15555550199\"", "\"5555550199\""));
        assert_eq!(e.field, "settings.default_notify.sms[0]", "{e}");
        let e = refused(&ROUTED.replace("    email: [platform@example.com]\n", "    pager: [platform]\n"));
        assert!(e.field.starts_with("settings.default_notify"), "{e}");
    }

    fn with_webhooks(hooks: &str) -> String {
        GOOD.replace(
            "      slack: \"#checkout\"\n",
            &format!("      slack: \"#checkout\"\n      webhooks:\n{hooks}"),
        )
    }

    #[test]
    fn webhooks_are_parsed_with_their_format_and_secret() {
        let text = with_webhooks(
            "        - {url: \"https://hooks.example.com/tocsin\", secret: \" s3cret-value \"}\n        \
             - {url: \"https://discord.com/api/webhooks/1/tok\", format: discord}\n        \
             - {url: \"http://127.0.0.1:8080/hook\", format: google-chat}\n",
        );
        let catalog = Catalog::from_yaml(&text, "t.yaml").unwrap();
        let hooks = &catalog.services[0].policy.webhooks;
        assert_eq!(hooks.len(), 3);
        assert_eq!(hooks[0].format, WebhookFormat::Generic);
        assert_eq!(
            hooks[0].secret,
            Some(ConfiguredSecret::Value(Secret::new("s3cret-value")))
        );
        assert_eq!(hooks[1].format, WebhookFormat::Discord);
        assert_eq!(hooks[1].url.host(), "discord.com");
        assert_eq!(hooks[1].url.expose(), "https://discord.com/api/webhooks/1/tok");
        assert_eq!(hooks[2].format, WebhookFormat::GoogleChat);
        assert_eq!(hooks[2].url.host(), "127.0.0.1");
        let debug = format!("{hooks:?}");
        assert!(!debug.contains("s3cret-value") && !debug.contains("/tok"), "{debug}");
    }

    #[test]
    fn webhook_urls_must_be_https_or_local_http() {
        for (url, ok) in [
            ("https://hooks.example.com/x", true),
            ("HTTPS://hooks.example.com", true),
            ("http://localhost:9000/x", true),
            ("http://127.0.0.1/x", true),
            ("http://[::1]:80/x", true),
            ("http://hooks.example.com/x", false),
            ("http://127.0.0.1.example.com/x", false),
            ("ftp://hooks.example.com/x", false),
            ("https://user:pw@hooks.example.com/x", false),
            ("https:///x", false),
            ("https://hooks.example.com/a b", false),
        ] {
            assert_eq!(WebhookUrl::parse(url).is_ok(), ok, "{url}");
        }
        let e = refused(&with_webhooks(
            "        - {url: \"http://hooks.example.com/secret-path\"}\n",
        ));
        assert_eq!(e.field, "services[0].notify.webhooks[0].url");
        assert!(!e.to_string().contains("secret-path"), "{e}");
    }

    #[test]
    fn only_generic_webhooks_take_a_secret_and_never_an_empty_one() {
        let e = refused(&with_webhooks(
            "        - {url: \"https://x.example.com\", format: teams, secret: abc}\n",
        ));
        assert_eq!(e.field, "services[0].notify.webhooks[0].secret");
        let e = refused(&with_webhooks(
            "        - {url: \"https://x.example.com\", secret: \" \"}\n",
        ));
        assert_eq!(e.field, "services[0].notify.webhooks[0].secret");
        let e = refused(&with_webhooks(
            "        - {url: \"https://x.example.com\", format: slack}\n",
        ));
        assert!(e.field.contains("services"), "{e}");
    }

    #[test]
    fn a_webhook_secret_may_name_where_it_lives() {
        let text = with_webhooks(
            "        - {url: \"https://a.example.com\", secret: {secrets_manager: tocsin/checkout-hook}}\n        \
             - {url: \"https://b.example.com\", secret: {env: CHECKOUT_HOOK_SECRET}}\n        \
             - {url: \"https://c.example.com\", secret: {file: /run/secrets/checkout-hook}}\n",
        );
        let catalog = Catalog::from_yaml(&text, "t.yaml").unwrap();
        let secrets: Vec<_> = catalog.services[0]
            .policy
            .webhooks
            .iter()
            .map(|hook| hook.secret.clone())
            .collect();
        assert_eq!(
            secrets,
            [
                Some(ConfiguredSecret::Reference(SecretRef::SecretsManager(
                    "tocsin/checkout-hook".into()
                ))),
                Some(ConfiguredSecret::Reference(SecretRef::Env(
                    "CHECKOUT_HOOK_SECRET".into()
                ))),
                Some(ConfiguredSecret::Reference(SecretRef::File(
                    "/run/secrets/checkout-hook".into()
                ))),
            ]
        );
    }

    #[test]
    fn a_webhook_secret_reference_is_checked_and_only_for_generic_webhooks() {
        for (hook, reason) in [
            (
                "{url: \"https://x.example.com\", secret: {secrets_manager: prod/hook}}",
                "tocsin/",
            ),
            (
                "{url: \"https://x.example.com\", secret: {env: \"\"}}",
                "environment variable",
            ),
            (
                "{url: \"https://x.example.com\", format: discord, secret: {env: HOOK}}",
                "only generic",
            ),
        ] {
            let e = refused(&with_webhooks(&format!("        - {hook}\n")));
            assert_eq!(e.field, "services[0].notify.webhooks[0].secret", "{hook}");
            assert!(e.reason.contains(reason), "{hook}: {e}");
        }
        let e = refused(&with_webhooks(
            "        - {url: \"https://x.example.com\", secret: {vault: tocsin/hook}}\n",
        ));
        assert!(e.field.starts_with("services"), "{e}");
    }

    #[test]
    fn a_webhook_target_round_trips_through_its_recipient() {
        let target = WebhookTarget {
            format: WebhookFormat::GoogleChat,
            host: "chat.googleapis.com".into(),
            index: 3,
        };
        assert_eq!(target.recipient(), "google-chat:chat.googleapis.com#3");
        assert_eq!(WebhookTarget::parse(&target.recipient()), Some(target));
        assert_eq!(WebhookTarget::parse("#checkout"), None);
        assert_eq!(WebhookTarget::parse("slack:x#1"), None);
    }

    #[test]
    fn the_slack_signing_secret_is_kept_secret_and_never_empty() {
        let yaml = |settings: &str| format!("settings:\n{settings}");
        let catalog = Catalog::from_yaml(&yaml("  slack_signing_secret: \" 8f742231b10e \"\n"), "t.yaml").unwrap();
        assert_eq!(catalog.settings.slack_signing_secret, Some(Secret::new("8f742231b10e")));
        assert!(!format!("{:?}", catalog.settings).contains("8f742231b10e"));
        let without = Catalog::from_yaml(GOOD, "t.yaml").unwrap();
        assert_eq!(without.settings.slack_signing_secret, None);
        let e = refused(&yaml("  slack_signing_secret: \"  \"\n"));
        assert_eq!(e.field, "settings.slack_signing_secret");
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_reason() {
        let e = refused(&GOOD.replace("+15555550123", "555-0123"));
        assert_eq!(e.file, "bad.yaml");
        assert_eq!(e.field, "services[0].notify.sms[0]");
        assert!(e.reason.contains("E.164"), "{e}");

        let e = refused(&GOOD.replace("key: 0123456789abcdef0123456789abcdef", "key: short"));
        assert_eq!(e.field, "services[0].integrations[0].key");

        let e = refused(&GOOD.replace("type: prometheus", "type: nagios"));
        assert!(e.field.starts_with("services[0].integrations[0]"), "{e}");
        assert!(e.reason.contains("nagios"), "{e}");

        let e = refused(&GOOD.replace("min_severity: warning", "min_severity: sev2"));
        assert!(e.field.contains("min_severity"), "{e}");

        let e = refused(&GOOD.replace("slack: \"#checkout\"", "slack: checkout"));
        assert_eq!(e.field, "services[0].notify.slack");

        let e = refused(&GOOD.replace("name: Checkout", "nmae: Checkout"));
        assert!(e.reason.contains("nmae"), "{e}");
    }

    /// Found by fuzzing (tests/fuzz, target config): `?`, a null key at
    /// the top, was refused naming no field at all.
    #[test]
    fn an_empty_top_level_key_is_named_as_the_document() {
        for text in ["?", "'': 1"] {
            let e = refused(text);
            assert_eq!(e.field, "(document)", "{text:?}: {e}");
            assert!(e.reason.contains("unknown field"), "{text:?}: {e}");
        }
    }

    #[test]
    fn heartbeats_are_parsed_and_checked() {
        let with = |heartbeats: &str| format!("{GOOD}heartbeats:\n{heartbeats}");
        let catalog = Catalog::from_yaml(
            &with(
                "  - {id: watchdog, service: checkout, key: 00112233445566778899aabbccddeeff, interval_seconds: 300}\n",
            ),
            "tocsin.yaml",
        )
        .unwrap();
        let watchdog = &catalog.heartbeats[0];
        assert_eq!(watchdog.id.as_str(), "watchdog");
        assert_eq!(watchdog.interval_seconds, 300);
        assert_eq!(watchdog.severity, Severity::Critical);
        assert_eq!(watchdog.key_hash, KeyHash::of("00112233445566778899aabbccddeeff"));

        let e = refused(&with(
            "  - {id: watchdog, service: payments, key: 00112233445566778899aabbccddeeff, interval_seconds: 300}\n",
        ));
        assert_eq!(e.field, "heartbeats[0].service");
        let e = refused(&with(
            "  - {id: watchdog, service: checkout, key: 00112233445566778899aabbccddeeff, interval_seconds: 0}\n",
        ));
        assert_eq!(e.field, "heartbeats[0].interval_seconds");
        let e = refused(&with(
            "  - {id: watchdog, service: checkout, key: short, interval_seconds: 60}\n",
        ));
        assert_eq!(e.field, "heartbeats[0].key");
        let twice = "  - {id: w, service: checkout, key: 00112233445566778899aabbccddeeff, interval_seconds: 60}\n";
        let e = refused(&with(&format!("{twice}{twice}")));
        assert_eq!(e.field, "heartbeats[1].id");
    }

    #[test]
    fn duplicate_keys_and_ids_are_refused() {
        let e = refused(&GOOD.replace("fedcba9876543210fedcba9876543210", "0123456789abcdef0123456789abcdef"));
        assert_eq!(e.field, "services[0].integrations[1].key");
        let e = refused(&GOOD.replace("id: hook", "id: am"));
        assert_eq!(e.field, "services[0].integrations[1].id");
    }

    #[test]
    fn emails_and_numbers_are_checked() {
        assert!(EmailAddress::parse("a@b.co").is_ok());
        for bad in ["a", "a@b", "@b.co", "a b@c.co", "a@.co"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
        assert!(PhoneNumber::parse("+442071838750").is_ok());
        for bad in [
            "15555550123",
            "+0555555012",
            "+1555",
            "+1555555012345678",
            "+1 555 555 0123",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    const CLOUDWATCH: &str = r##"
services:
  - id: checkout
    integrations:
      - id: alarms
        type: cloudwatch
        key: 0123456789abcdef0123456789abcdef
        cloudwatch:
          topics: [arn:aws:sns:eu-west-1:123456789012:alarms, arn:aws-cn:sns:cn-north-1:123456789012:cn-alarms]
          insufficient_data: trigger
          severity: critical
      - {id: more-alarms, type: cloudwatch, key: fedcba9876543210fedcba9876543210,
         cloudwatch: {topics: [arn:aws:sns:us-east-1:123456789012:other]}}
      - {id: am, type: prometheus, key: 22222222222222222222222222222222}
settings:
  sns_certificates: /etc/tocsin/sns-certificates
"##;

    #[test]
    fn cloudwatch_settings_parse_with_their_defaults() {
        let catalog = Catalog::from_yaml(CLOUDWATCH, "tocsin.yaml").unwrap();
        let alarms = &catalog.integrations[0].cloudwatch;
        let topics: Vec<&str> = alarms.topics.iter().map(TopicArn::as_str).collect();
        assert_eq!(
            topics,
            [
                "arn:aws:sns:eu-west-1:123456789012:alarms",
                "arn:aws-cn:sns:cn-north-1:123456789012:cn-alarms"
            ]
        );
        assert_eq!(alarms.insufficient_data, InsufficientData::Trigger);
        assert_eq!(alarms.severity, Severity::Critical);
        let more = &catalog.integrations[1].cloudwatch;
        assert_eq!(more.insufficient_data, InsufficientData::Ignore);
        assert_eq!(more.severity, Severity::Error);
        assert_eq!(catalog.integrations[2].cloudwatch, CloudWatchSettings::default());
        assert_eq!(
            catalog.settings.sns_certificates.as_deref(),
            Some(std::path::Path::new("/etc/tocsin/sns-certificates"))
        );
        assert_eq!(
            Catalog::from_yaml(GOOD, "tocsin.yaml")
                .unwrap()
                .settings
                .sns_certificates,
            None
        );
    }

    #[test]
    fn cloudwatch_settings_errors_name_the_field() {
        let e = refused(&CLOUDWATCH.replace(
            "cloudwatch: {topics: [arn:aws:sns:us-east-1:123456789012:other]}",
            "cloudwatch: {topics: []}",
        ));
        assert_eq!(e.field, "services[0].integrations[1].cloudwatch.topics");
        assert!(e.reason.contains("at least one SNS topic"), "{e}");

        let e = refused(&CLOUDWATCH.replace(
            ",\n         cloudwatch: {topics: [arn:aws:sns:us-east-1:123456789012:other]}",
            "",
        ));
        assert_eq!(e.field, "services[0].integrations[1].cloudwatch.topics");

        let e = refused(&CLOUDWATCH.replace("arn:aws:sns:us-east-1:123456789012:other", "other"));
        assert_eq!(e.field, "services[0].integrations[1].cloudwatch.topics[0]");
        assert!(e.reason.contains("not an SNS topic ARN"), "{e}");

        let e = refused(&CLOUDWATCH.replace("insufficient_data: trigger", "insufficient_data: page"));
        assert_eq!(e.field, "services[0].integrations[0].cloudwatch.insufficient_data");

        let e = refused(&CLOUDWATCH.replace("severity: critical", "severity: sev1"));
        assert_eq!(e.field, "services[0].integrations[0].cloudwatch.severity");

        let e = refused(&CLOUDWATCH.replace("insufficient_data: trigger", "insuficient_data: trigger"));
        assert!(e.reason.contains("insuficient_data"), "{e}");

        let e = refused(&CLOUDWATCH.replace(
            "key: 22222222222222222222222222222222}",
            "key: 22222222222222222222222222222222, cloudwatch: {topics: [arn:aws:sns:eu-west-1:123456789012:a]}}",
        ));
        assert_eq!(e.field, "services[0].integrations[2].cloudwatch");

        let e = refused(&CLOUDWATCH.replace(
            "key: 0123456789abcdef0123456789abcdef",
            "key: 0123456789abcdef0123456789abcdef\n        secret: a-long-enough-secret",
        ));
        assert_eq!(e.field, "services[0].integrations[0].secret");
        assert!(e.reason.contains("SNS"), "{e}");

        let e = refused(&CLOUDWATCH.replace("sns_certificates: /etc/tocsin/sns-certificates", "sns_certificates: ''"));
        assert_eq!(e.field, "settings.sns_certificates");
    }

    #[test]
    fn the_shipped_sample_config_is_valid() {
        let text = include_str!("../../../cli/tocsin.sample.yaml");
        Catalog::from_yaml(text, "tocsin.sample.yaml").unwrap();
    }
    #[test]
    fn a_dedup_key_template_is_checked_and_named_on_error() {
        let yaml = |template: &str| {
            format!(
                "services:\n  - id: checkout\n    integrations:\n      - {{id: am, type: prometheus, key: a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1, dedup_key: \"{template}\"}}\n"
            )
        };
        let catalog = Catalog::from_yaml(&yaml("{payload.source}/{dedup_key}"), "t.yaml").unwrap();
        assert_eq!(
            catalog.integrations[0].dedup_key.as_ref().map(|t| t.as_str()),
            Some("{payload.source}/{dedup_key}")
        );
        let error = Catalog::from_yaml(&yaml("{payload.source"), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("services[0].integrations[0].dedup_key"), "{error}");
        assert!(error.contains("never closed"), "{error}");
    }

    #[test]
    fn a_secret_may_be_named_instead_of_given() {
        let yaml = |secret: &str| {
            format!(
                "services:\n  - id: s\n    integrations:\n      - {{id: hook, type: webhook, key: 0123456789abcdef0123456789abcdef, secret: {secret}}}\n"
            )
        };
        let catalog = Catalog::from_yaml(&yaml("{secrets_manager: tocsin/payments-hook}"), "t.yaml").unwrap();
        assert_eq!(
            catalog.integrations[0].secret_ref,
            Some(SecretRef::SecretsManager("tocsin/payments-hook".into()))
        );
        assert_eq!(catalog.integrations[0].secret, None);
        let catalog = Catalog::from_yaml(&yaml("{env: HOOK_SECRET}"), "t.yaml").unwrap();
        assert_eq!(
            catalog.integrations[0].secret_ref,
            Some(SecretRef::Env("HOOK_SECRET".into()))
        );

        let e = Catalog::from_yaml(&yaml("{secrets_manager: prod/db-password}"), "t.yaml").unwrap_err();
        assert_eq!(e.field, "services[0].integrations[0].secret");
        assert!(e.reason.contains("tocsin/"), "{}", e.reason);
        assert!(Catalog::from_yaml(&yaml("{vault: x}"), "t.yaml").is_err());
    }

    #[test]
    fn the_link_signing_secret_is_a_value_or_a_reference_and_long_enough() {
        let yaml = |settings: &str| format!("settings:\n{settings}");
        let catalog = Catalog::from_yaml(
            &yaml("  link_signing_secret: 0123456789abcdef0123456789abcdef\n  link_ttl_hours: 4\n"),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(
            catalog.settings.link_signing_secret,
            Some(ConfiguredSecret::Value(Secret::new("0123456789abcdef0123456789abcdef")))
        );
        assert_eq!(catalog.settings.link_ttl_hours, Some(4));
        let catalog =
            Catalog::from_yaml(&yaml("  link_signing_secret: {env: TOCSIN_LINK_SECRET}\n"), "t.yaml").unwrap();
        assert_eq!(
            catalog.settings.link_signing_secret,
            Some(ConfiguredSecret::Reference(SecretRef::Env("TOCSIN_LINK_SECRET".into())))
        );
        assert_eq!(catalog.settings.link_ttl_hours, None);
        assert_eq!(
            Catalog::from_yaml(GOOD, "t.yaml").unwrap().settings.link_signing_secret,
            None
        );

        let e = refused(&yaml("  link_signing_secret: short\n"));
        assert_eq!(e.field, "settings.link_signing_secret");
        assert!(e.reason.contains("32"), "{e}");
        assert!(!e.reason.contains("short"), "the value is never echoed: {e}");
        let e = refused(&yaml("  link_signing_secret: {secrets_manager: prod/links}\n"));
        assert_eq!(e.field, "settings.link_signing_secret");
        for hours in ["0", "721"] {
            let e = refused(&yaml(&format!(
                "  link_signing_secret: 0123456789abcdef0123456789abcdef\n  link_ttl_hours: {hours}\n"
            )));
            assert_eq!(e.field, "settings.link_ttl_hours");
        }
    }
}
