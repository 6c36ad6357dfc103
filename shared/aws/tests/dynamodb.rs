//! The DynamoDB adapter against a real DynamoDB API (moto): the contract
//! suite every incident store passes, then what only this adapter has: the
//! shape of its transactions, the attributes its stream consumer reads, its
//! config records and its table. Each test creates a table of its own.

mod moto;

use aws_sdk_dynamodb::types::{AttributeValue, KeyType, ProjectionType, StreamViewType, TimeToLiveStatus};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, TimeDelta, Utc};

use tocsin_aws::dynamodb::{self, attr, DynamoStore, Item};
use tocsin_core::auth::{ApiKey, KeyHash, Scope};
use tocsin_core::config::{EmailAddress, FieldMapping, Integration, NotificationPolicy, PhoneNumber, Secret, Service};
use tocsin_core::dedup::DedupTemplate;
use tocsin_core::event::{
    Action, Alert, DedupKey, Event, EventId, IntegrationId, Origin, Payload, ServiceId, Severity,
};
use tocsin_core::incident::{decide, Decision, Incident, IncidentId, IncidentStatus, TransitionKind};
use tocsin_core::ports::{Commit, CommitOutcome, ConfigStore, IgnoredEvent, IncidentFilter, IncidentStore};
use tocsin_core::providers::ProviderKind;

/// A fresh table and the raw client, to look at items as stored.
async fn table() -> (Client, DynamoStore) {
    let client = Client::new(&moto::sdk_config().await);
    let name = moto::unique("tocsin-dynamodb");
    dynamodb::create_table(&client, &name).await.expect("create the table");
    (client.clone(), DynamoStore::new(client, name))
}

async fn raw(client: &Client, store: &DynamoStore, key: Item) -> Option<Item> {
    client
        .get_item()
        .table_name(store.table())
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

async fn raw_put(client: &Client, store: &DynamoStore, item: Item) {
    client
        .put_item()
        .table_name(store.table())
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

/// Whole microseconds, as the stores keep.
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

fn service(name: &str) -> ServiceId {
    ServiceId::parse(name).unwrap()
}

fn event(service: &ServiceId, dedup_key: &str, action: Action, at: DateTime<Utc>) -> Event {
    Event {
        id: EventId::generate(),
        service: service.clone(),
        origin: Origin::Api {
            actor: "dynamodb-test".to_owned(),
        },
        received_at: at,
        alert: Alert {
            event_action: action,
            dedup_key: DedupKey::parse(dedup_key).unwrap(),
            payload: (action == Action::Trigger).then(|| Payload {
                summary: format!("{dedup_key} is failing"),
                source: "test-host".to_owned(),
                severity: Severity::Critical,
                timestamp: Some(at),
                component: None,
                group: None,
                class: None,
                custom_details: Some(serde_json::json!({"used_percent": 97})),
            }),
            links: Vec::new(),
            images: Vec::new(),
            client: None,
            client_url: None,
        },
    }
}

/// Reads, decides and commits, as the processor does.
async fn apply(store: &DynamoStore, event: &Event) -> (Decision, CommitOutcome) {
    let latest = store.latest(&event.service, event.dedup_key()).await.expect("latest");
    let decision = decide(latest.as_ref(), event, event.received_at);
    let outcome = store
        .commit(&Commit::of(&decision, event, event.received_at))
        .await
        .expect("commit");
    (decision, outcome)
}

fn incident_of(decision: Decision) -> Incident {
    match decision {
        Decision::Open { incident } | Decision::Repeat { incident } | Decision::Transition { incident, .. } => incident,
        Decision::Ignore { .. } => panic!("expected an incident, got {decision:?}"),
    }
}

#[tokio::test]
async fn the_contract_suite_passes() {
    let (_, store) = table().await;
    tocsin_core::contract::incident_store(&store).await;
    tocsin_core::contract::timeline(&store, &store).await;
    let heartbeat = tocsin_core::contract::sample_heartbeat(&uuid::Uuid::new_v4().simple().to_string()[..12]);
    store.put_heartbeat(&heartbeat).await.unwrap();
    tocsin_core::contract::heartbeats(&store, &heartbeat).await;
    tocsin_core::contract::ingest_stats(&store).await;
    tocsin_core::contract::maintenance_store(&store).await;
    tocsin_core::contract::escalations(&store).await;
    tocsin_core::contract::throttle_store(&store).await;
    tocsin_core::contract::slack_threads(&store).await;
}

#[tokio::test]
async fn opening_takes_the_keys_slot_and_resolving_frees_it() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let slot = dynamodb::open_slot_key(&svc, &DedupKey::parse("disk#1").unwrap());

    let trigger = event(&svc, "disk#1", Action::Trigger, t0);
    let (decision, outcome) = apply(&store, &trigger).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let opened = incident_of(decision);
    let held = raw(&client, &store, slot.clone()).await.expect("the open slot");
    assert_eq!(text(&held, attr::OPEN_INCIDENT), Some(opened.id.as_str()));

    let ack = event(&svc, "disk#1", Action::Acknowledge, t0 + TimeDelta::seconds(1));
    let (decision, _) = apply(&store, &ack).await;
    let acked = incident_of(decision);
    assert_eq!(acked.status, IncidentStatus::Acknowledged);
    assert!(
        raw(&client, &store, slot.clone()).await.is_some(),
        "an acknowledged incident is still open"
    );

    let resolve = event(&svc, "disk#1", Action::Resolve, t0 + TimeDelta::seconds(2));
    let (decision, outcome) = apply(&store, &resolve).await;
    assert_eq!(outcome, CommitOutcome::Written);
    assert_eq!(incident_of(decision).status, IncidentStatus::Resolved);
    assert_eq!(
        raw(&client, &store, slot.clone()).await,
        None,
        "resolving deletes the open slot in the same transaction"
    );

    let again = event(&svc, "disk#1", Action::Trigger, t0 + TimeDelta::seconds(3));
    let (decision, outcome) = apply(&store, &again).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let reopened = incident_of(decision);
    assert_ne!(reopened.id, opened.id);
    let held = raw(&client, &store, slot).await.expect("a new open slot");
    assert_eq!(text(&held, attr::OPEN_INCIDENT), Some(reopened.id.as_str()));
    // A key that only shares a prefix, or the service's other keys, are apart.
    assert_eq!(
        store
            .latest(&svc, &DedupKey::parse("disk").unwrap())
            .await
            .expect("latest"),
        None
    );
}

#[tokio::test]
async fn a_stale_version_is_a_conflict_and_writes_nothing() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, t0)).await;
    let v1 = incident_of(decision);
    let (decision, _) = apply(
        &store,
        &event(&svc, "disk", Action::Acknowledge, t0 + TimeDelta::seconds(1)),
    )
    .await;
    let v2 = incident_of(decision);

    // A resolve decided on version 1 would also delete the open slot.
    let resolve = event(&svc, "disk", Action::Resolve, t0 + TimeDelta::seconds(2));
    let stale = decide(Some(&v1), &resolve, resolve.received_at);
    let commit = Commit::of(&stale, &resolve, resolve.received_at);
    assert_eq!(store.commit(&commit).await.expect("commit"), CommitOutcome::Conflict);

    assert_eq!(
        raw(&client, &store, dynamodb::applied_key(&resolve.id)).await,
        None,
        "not even the applied record is written"
    );
    assert!(!store.is_applied(&resolve.id).await.expect("is_applied"));
    let item = raw(&client, &store, dynamodb::incident_key(&v1))
        .await
        .expect("the incident");
    assert_eq!(number(&item, attr::VERSION), Some(2));
    assert!(
        raw(&client, &store, dynamodb::open_slot_key(&svc, &v1.dedup_key))
            .await
            .is_some(),
        "the slot stays"
    );
    assert_eq!(store.get(&v1.id).await.expect("get"), Some(v2));

    // A create racing an open incident conflicts on the slot.
    let racer = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(3));
    let racing = decide(None, &racer, racer.received_at);
    let outcome = store
        .commit(&Commit::of(&racing, &racer, racer.received_at))
        .await
        .expect("commit");
    assert_eq!(outcome, CommitOutcome::Conflict);
    assert_eq!(raw(&client, &store, dynamodb::applied_key(&racer.id)).await, None);
}

#[tokio::test]
async fn the_incident_item_says_which_transition_it_carries() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let trigger = event(&svc, "disk", Action::Trigger, t0);
    let (decision, _) = apply(&store, &trigger).await;
    let incident = incident_of(decision);
    let key = dynamodb::incident_key(&incident);

    let item = raw(&client, &store, key.clone()).await.expect("the incident");
    assert_eq!(text(&item, attr::TYPE), Some(dynamodb::kind::INCIDENT));
    assert_eq!(text(&item, attr::TRANSITION), Some("triggered"));
    assert_eq!(text(&item, attr::TRANSITION_EVENT), Some(trigger.id.as_str()));
    assert_eq!(text(&item, attr::STATUS), Some("open"));
    assert_eq!(number(&item, attr::VERSION), Some(1));
    // `data` is the incident as JSON but for the fields the item holds as
    // attributes, and its details (what it opened with and keeps), which
    // are in the details item, written once with the opening.
    let mut whole = serde_json::to_value(&incident).unwrap();
    let whole = whole.as_object_mut().unwrap();
    let mut details = serde_json::Map::new();
    for field in ["summary", "source", "origin", "custom_details", "links"] {
        if let Some(value) = whole.remove(field) {
            details.insert(field.to_owned(), value);
        }
    }
    for field in ["id", "service", "dedup_key", "status", "version"] {
        whole.remove(field);
    }
    let data: serde_json::Value = serde_json::from_str(text(&item, attr::DATA).unwrap()).unwrap();
    assert_eq!(&data, &serde_json::Value::Object(whole.clone()));
    assert_eq!(item.get(attr::DETAILS_APART), Some(&AttributeValue::Bool(true)));
    let details_item = raw(&client, &store, dynamodb::details_key(&incident))
        .await
        .expect("the details item");
    assert_eq!(text(&details_item, attr::TYPE), Some(dynamodb::kind::DETAILS));
    let stored: serde_json::Value = serde_json::from_str(text(&details_item, attr::DATA).unwrap()).unwrap();
    assert_eq!(stored, serde_json::Value::Object(details));
    assert_eq!(stored["custom_details"], serde_json::json!({"used_percent": 97}));
    let read = store.get(&incident.id).await.unwrap().expect("the incident");
    assert_eq!(read, incident, "get reads both items");

    // A repeat notifies no one: the new image has no transition.
    let repeat = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1));
    let (decision, _) = apply(&store, &repeat).await;
    assert!(matches!(decision, Decision::Repeat { .. }));
    let item = raw(&client, &store, key.clone()).await.expect("the incident");
    assert_eq!(number(&item, attr::VERSION), Some(2));
    assert_eq!(item.get(attr::TRANSITION), None);
    assert_eq!(item.get(attr::TRANSITION_EVENT), None);

    let ack = event(&svc, "disk", Action::Acknowledge, t0 + TimeDelta::seconds(2));
    apply(&store, &ack).await;
    let item = raw(&client, &store, key.clone()).await.expect("the incident");
    assert_eq!(
        text(&item, attr::TRANSITION),
        Some(TransitionKind::Acknowledged.as_str())
    );
    assert_eq!(text(&item, attr::TRANSITION_EVENT), Some(ack.id.as_str()));
    assert_eq!(text(&item, attr::SERVICE_STATUS), Some("checkout#acknowledged"));

    let resolve = event(&svc, "disk", Action::Resolve, t0 + TimeDelta::seconds(3));
    apply(&store, &resolve).await;
    let item = raw(&client, &store, key).await.expect("the incident");
    assert_eq!(text(&item, attr::TRANSITION), Some("resolved"));
    assert_eq!(text(&item, attr::TRANSITION_EVENT), Some(resolve.id.as_str()));
    assert_eq!(item.get(attr::EXPIRES_AT), None, "incidents never expire");
}

async fn delete_details(client: &Client, store: &DynamoStore, incident: &Incident) {
    client
        .delete_item()
        .table_name(store.table())
        .set_key(Some(dynamodb::details_key(incident)))
        .send()
        .await
        .expect("DeleteItem");
}

/// Incidents opened before details were kept apart hold them in their
/// item's `data`: they read as before, and every later write keeps them there.
#[tokio::test]
async fn an_incident_with_its_details_in_its_item_keeps_them_there() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, t0)).await;
    let incident = incident_of(decision);
    // Rewrite it as the code before this change wrote it.
    let mut item = raw(&client, &store, dynamodb::incident_key(&incident))
        .await
        .expect("the incident");
    item.remove(attr::DETAILS_APART);
    item.insert(
        attr::DATA.to_owned(),
        AttributeValue::S(serde_json::to_string(&incident).unwrap()),
    );
    raw_put(&client, &store, item).await;
    delete_details(&client, &store, &incident).await;

    let latest = store.latest(&svc, &incident.dedup_key).await.unwrap().expect("latest");
    assert_eq!(latest, incident);
    assert!(!latest.store_notes.details_apart);
    let (decision, outcome) = apply(
        &store,
        &event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1)),
    )
    .await;
    assert!(matches!(decision, Decision::Repeat { .. }), "{decision:?}");
    assert_eq!(outcome, CommitOutcome::Written);
    apply(
        &store,
        &event(&svc, "disk", Action::Acknowledge, t0 + TimeDelta::seconds(2)),
    )
    .await;

    let item = raw(&client, &store, dynamodb::incident_key(&incident))
        .await
        .expect("the incident");
    assert_eq!(item.get(attr::DETAILS_APART), None);
    let data: serde_json::Value = serde_json::from_str(text(&item, attr::DATA).unwrap()).unwrap();
    assert_eq!(data["summary"], "disk is failing", "still in the item");
    assert_eq!(data["custom_details"], serde_json::json!({"used_percent": 97}));
    assert_eq!(raw(&client, &store, dynamodb::details_key(&incident)).await, None);
    let read = store.get(&incident.id).await.unwrap().expect("the incident");
    assert_eq!(read.status, IncidentStatus::Acknowledged);
    assert_eq!(read.custom_details, incident.custom_details);
    let listed = store.list(&IncidentFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].custom_details, incident.custom_details);
}

/// A details item that went missing is an error, not an incident read
/// without its details (which a later write would then lose).
#[tokio::test]
async fn an_incident_whose_details_item_is_missing_is_not_read_without_them() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, now())).await;
    let incident = incident_of(decision);
    delete_details(&client, &store, &incident).await;
    for error in [
        store.latest(&svc, &incident.dedup_key).await.unwrap_err(),
        store.get(&incident.id).await.unwrap_err(),
        store.list(&IncidentFilter::default()).await.unwrap_err(),
    ] {
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            source
                .as_deref()
                .is_some_and(|s| s.contains("details item does not exist")),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn applied_and_ignored_records_expire_by_their_own_clock() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let ghost = event(&svc, "ghost", Action::Resolve, t0);
    let (decision, outcome) = apply(&store, &ghost).await;
    assert!(matches!(decision, Decision::Ignore { .. }));
    assert_eq!(outcome, CommitOutcome::Written);

    let applied = raw(&client, &store, dynamodb::applied_key(&ghost.id))
        .await
        .expect("the applied record");
    let expires = number(&applied, attr::EXPIRES_AT).expect("expires_at");
    let week = Utc::now() + TimeDelta::days(7);
    assert!((expires - week.timestamp()).abs() < 60, "7 days: {expires}");

    let ignored = raw(&client, &store, dynamodb::ignored_key(&ghost.id))
        .await
        .expect("the ignored record");
    assert_eq!(
        number(&ignored, attr::EXPIRES_AT),
        Some((t0 + TimeDelta::days(30)).timestamp())
    );
    assert_eq!(text(&ignored, attr::REASON), Some("unknown_key"));
    let data: IgnoredEvent = serde_json::from_str(text(&ignored, attr::DATA).unwrap()).unwrap();
    assert_eq!(data.event, ghost);

    // TTL deletion may lag by days (moto never does it): an expired record
    // no longer counts, deleted or not.
    let mut expired = applied;
    expired.insert(
        attr::EXPIRES_AT.to_owned(),
        AttributeValue::N((Utc::now() - TimeDelta::seconds(10)).timestamp().to_string()),
    );
    raw_put(&client, &store, expired).await;
    assert!(!store.is_applied(&ghost.id).await.expect("is_applied"));
    let (_, outcome) = apply(&store, &ghost).await;
    assert_eq!(outcome, CommitOutcome::Written, "an expired record is claimed again");
    assert!(store.is_applied(&ghost.id).await.expect("is_applied"));
    let (_, outcome) = apply(&store, &ghost).await;
    assert_eq!(outcome, CommitOutcome::AlreadyApplied);
}

#[tokio::test]
async fn latest_prefers_the_open_incident_even_if_the_clock_went_back() {
    let (_, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    apply(&store, &event(&svc, "disk", Action::Trigger, t0)).await;
    apply(
        &store,
        &event(&svc, "disk", Action::Resolve, t0 + TimeDelta::seconds(1)),
    )
    .await;

    // A new incident whose clock reads earlier than the resolved one's.
    let again = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(2));
    let latest = store.latest(&svc, again.dedup_key()).await.unwrap();
    let Decision::Open { mut incident } = decide(latest.as_ref(), &again, again.received_at) else {
        panic!("a trigger after resolve opens");
    };
    incident.created_at -= TimeDelta::hours(1);
    let commit = Commit::Incident {
        event_id: again.id.clone(),
        incident: incident.clone(),
        expected_version: None,
        transition: None,
        timeline: None,
    };
    assert_eq!(store.commit(&commit).await.unwrap(), CommitOutcome::Written);
    let latest = store.latest(&svc, again.dedup_key()).await.unwrap();
    assert_eq!(latest, Some(incident));
}

#[tokio::test]
async fn list_filters_by_status_and_service_with_a_limit() {
    let (_, store) = table().await;
    let (checkout, search) = (service("checkout"), service("search"));
    let t0 = now();
    let mut ids: Vec<IncidentId> = Vec::new();
    for (n, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let (decision, _) = apply(
            &store,
            &event(&checkout, key, Action::Trigger, t0 + TimeDelta::seconds(n as i64)),
        )
        .await;
        ids.push(incident_of(decision).id);
    }
    apply(
        &store,
        &event(&checkout, "b", Action::Acknowledge, t0 + TimeDelta::seconds(10)),
    )
    .await;
    apply(
        &store,
        &event(&checkout, "c", Action::Resolve, t0 + TimeDelta::seconds(11)),
    )
    .await;
    let (decision, _) = apply(
        &store,
        &event(&search, "a", Action::Trigger, t0 + TimeDelta::seconds(12)),
    )
    .await;
    let other = incident_of(decision).id;

    // Ids as text, so that expectations read as plain lists.
    let list = |status: Option<IncidentStatus>, service: Option<&ServiceId>, limit: Option<usize>| {
        let filter = IncidentFilter {
            status,
            service: service.cloned(),
            limit,
        };
        let store = &store;
        async move {
            store
                .list(&filter)
                .await
                .expect("list")
                .into_iter()
                .map(|i| i.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    use IncidentStatus::{Acknowledged, Open, Resolved};
    let [a, b, c, d] = [&ids[0], &ids[1], &ids[2], &ids[3]].map(IncidentId::as_str);
    let other = other.as_str();

    assert_eq!(list(None, None, None).await, [other, d, c, b, a]);
    assert_eq!(list(None, Some(&checkout), None).await, [d, c, b, a]);
    assert_eq!(list(None, Some(&checkout), Some(2)).await, [d, c]);
    assert_eq!(list(Some(Open), Some(&checkout), None).await, [d, a]);
    assert_eq!(list(Some(Open), Some(&checkout), Some(1)).await, [d]);
    assert_eq!(list(Some(Acknowledged), Some(&checkout), None).await, [b]);
    assert_eq!(list(Some(Resolved), None, None).await, [c]);
    assert_eq!(list(Some(Open), None, None).await, [other, d, a]);
    assert_eq!(list(Some(Open), None, Some(2)).await, [other, d]);
    assert_eq!(list(None, None, Some(3)).await, [other, d, c]);
    assert!(list(None, Some(&service("unknown")), None).await.is_empty());
    assert!(list(None, None, Some(0)).await.is_empty());

    // get goes through the id index to the item.
    let got = store.get(&ids[1]).await.expect("get").expect("the incident");
    assert_eq!(got.status, Acknowledged);
    let unknown = IncidentId::for_opening(&checkout, &DedupKey::parse("x").unwrap(), &EventId::generate());
    assert_eq!(store.get(&unknown).await.expect("get"), None);
}

#[tokio::test]
async fn config_records_round_trip() {
    let (_, store) = table().await;
    let key_hash = KeyHash::of("0123456789abcdef0123456789abcdef");
    let integration = Integration {
        id: IntegrationId::parse("hook").unwrap(),
        service: service("checkout"),
        provider: ProviderKind::Webhook,
        key_hash: key_hash.clone(),
        secret: Some(Secret::new("a-long-enough-secret")),
        enabled: false,
        fields: FieldMapping {
            summary_field: Some("alert.title".into()),
            severity_field: Some("alert.labels.severity".into()),
            dedup_key_field: Some("alert.id".into()),
            action_field: Some("state".into()),
            source_field: None,
            trigger_values: vec!["boom".into(), "firing".into()],
            resolve_values: vec!["ok".into()],
            acknowledge_values: Vec::new(),
        },
        cloudwatch: Default::default(),
        dedup_key: Some(DedupTemplate::parse("{payload.source}/{dedup_key}").unwrap()),
        rate_limit_per_minute: Some(30),
        secret_ref: None,
    };
    assert_eq!(store.integration_by_key(&key_hash).await.unwrap(), None);
    store.put_integration(&integration).await.unwrap();
    assert_eq!(
        store.integration_by_key(&key_hash).await.unwrap(),
        Some(integration.clone())
    );

    // Written again (tocsin apply runs again): replaced, not duplicated.
    let enabled = Integration {
        enabled: true,
        secret: None,
        fields: FieldMapping::default(),
        // No limit is stored as 0 and read back as none.
        rate_limit_per_minute: None,
        secret_ref: None,
        ..integration
    };
    store.put_integration(&enabled).await.unwrap();
    assert_eq!(store.integration_by_key(&key_hash).await.unwrap(), Some(enabled));
    store.delete_integration(&key_hash).await.unwrap();
    assert_eq!(store.integration_by_key(&key_hash).await.unwrap(), None);
    store
        .delete_integration(&key_hash)
        .await
        .expect("deleting what is gone is fine");

    let checkout = Service {
        id: service("checkout"),
        name: "Checkout".into(),
        policy: NotificationPolicy {
            email: vec![EmailAddress::parse("oncall@example.com").unwrap()],
            sms: vec![PhoneNumber::parse("+15555550123").unwrap()],
            slack: Some("#checkout".into()),
            webhooks: vec![
                tocsin_core::config::Webhook {
                    url: tocsin_core::config::WebhookUrl::parse("https://hooks.example.com/tocsin").unwrap(),
                    format: tocsin_core::config::WebhookFormat::Generic,
                    secret: Some(tocsin_core::config::ConfiguredSecret::Value(
                        tocsin_core::config::Secret::new("whsec-checkout"),
                    )),
                },
                tocsin_core::config::Webhook {
                    url: tocsin_core::config::WebhookUrl::parse("https://discord.com/api/webhooks/1/t").unwrap(),
                    format: tocsin_core::config::WebhookFormat::Discord,
                    secret: None,
                },
            ],
            on: vec![TransitionKind::Triggered, TransitionKind::Resolved],
            min_severity: Severity::Warning,
            min_severity_by_channel: [(tocsin_core::notify::Channel::Sms, Severity::Critical)].into(),
            escalation: vec![
                tocsin_core::config::EscalationLevel {
                    after_seconds: 300,
                    email: Vec::new(),
                    sms: vec![PhoneNumber::parse("+15555550100").unwrap()],
                    slack: None,
                },
                tocsin_core::config::EscalationLevel {
                    after_seconds: 600,
                    email: vec![EmailAddress::parse("lead@example.com").unwrap()],
                    sms: Vec::new(),
                    slack: Some("#incidents".into()),
                },
            ],
        },
    };
    assert_eq!(store.service(&checkout.id).await.unwrap(), None);
    store.put_service(&checkout).await.unwrap();
    assert_eq!(store.service(&checkout.id).await.unwrap(), Some(checkout));

    let api_key = ApiKey {
        name: "ops".into(),
        key_hash: KeyHash::of("sk_test_0123456789abcdef"),
        scopes: vec![Scope::EventsWrite, Scope::IncidentsRead],
    };
    assert_eq!(store.api_key(&api_key.key_hash).await.unwrap(), None);
    store.put_api_key(&api_key).await.unwrap();
    assert_eq!(store.api_key(&api_key.key_hash).await.unwrap(), Some(api_key.clone()));
    assert_eq!(
        store.integration_by_key(&api_key.key_hash).await.unwrap(),
        None,
        "an API key is not an integration key"
    );
}

#[tokio::test]
async fn a_malformed_item_is_an_error_not_a_panic() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, now())).await;
    let incident = incident_of(decision);

    let mut item = raw(&client, &store, dynamodb::incident_key(&incident))
        .await
        .expect("the incident");
    item.insert(attr::DATA.to_owned(), AttributeValue::S("{not json".into()));
    raw_put(&client, &store, item).await;
    let err = store.latest(&svc, &incident.dedup_key).await.unwrap_err();
    assert_eq!(err.operation, "dynamodb read an incident");
    assert!(store.get(&incident.id).await.is_err());

    let mut bad = dynamodb::service_key(&svc);
    bad.insert(attr::TYPE.to_owned(), AttributeValue::S("service".into()));
    bad.insert(attr::DATA.to_owned(), AttributeValue::N("1".into()));
    raw_put(&client, &store, bad).await;
    assert!(store.service(&svc).await.is_err());

    let key_hash = KeyHash::of("0123456789abcdef0123456789abcdef");
    let mut other_kind = dynamodb::integration_key(&key_hash);
    other_kind.insert(attr::TYPE.to_owned(), AttributeValue::S("api_key".into()));
    other_kind.insert(attr::DATA.to_owned(), AttributeValue::S("{}".into()));
    raw_put(&client, &store, other_kind).await;
    assert!(store.integration_by_key(&key_hash).await.is_err());
}

#[tokio::test]
async fn create_table_declares_the_documented_schema() {
    let (client, store) = table().await;
    let table = client
        .describe_table()
        .table_name(store.table())
        .send()
        .await
        .expect("DescribeTable")
        .table
        .expect("a table");
    let keys: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().clone()))
        .collect();
    assert_eq!(keys, [("pk", KeyType::Hash), ("sk", KeyType::Range)]);
    assert_eq!(
        table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
    let stream = table.stream_specification().expect("a stream");
    assert!(stream.stream_enabled());
    assert_eq!(stream.stream_view_type(), Some(&StreamViewType::NewAndOldImages));

    let mut indexes: Vec<_> = table
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            let keys: Vec<_> = i.key_schema().iter().map(|k| k.attribute_name().to_owned()).collect();
            let projection = i.projection().and_then(|p| p.projection_type()).cloned();
            (i.index_name().unwrap_or_default().to_owned(), keys, projection)
        })
        .collect();
    indexes.sort();
    let keys_only = Some(ProjectionType::KeysOnly);
    assert_eq!(
        indexes,
        [
            ("by_id".to_owned(), vec!["incident_id".to_owned()], keys_only.clone()),
            (
                "by_service_status".to_owned(),
                vec!["service_status".to_owned(), "created".to_owned()],
                keys_only.clone()
            ),
            (
                "by_status".to_owned(),
                vec!["status".to_owned(), "created".to_owned()],
                keys_only
            ),
        ]
    );

    let ttl = client
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .expect("DescribeTimeToLive")
        .time_to_live_description
        .expect("a TTL description");
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
}

#[tokio::test]
async fn a_cloudwatch_integration_is_found_by_its_topics_until_deleted() {
    let (_, store) = table().await;
    let topic = tocsin_core::sns::TopicArn::parse("arn:aws:sns:us-east-1:123456789012:alarms").unwrap();
    let other = tocsin_core::sns::TopicArn::parse("arn:aws:sns:us-east-1:123456789012:other").unwrap();
    let key_hash = KeyHash::of("5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
    let settings = tocsin_core::config::CloudWatchSettings {
        topics: vec![topic.clone()],
        ..Default::default()
    };
    let integration = Integration {
        id: IntegrationId::parse("alarms").unwrap(),
        service: service("checkout"),
        provider: ProviderKind::CloudWatch,
        key_hash: key_hash.clone(),
        secret: None,
        enabled: true,
        fields: FieldMapping::default(),
        cloudwatch: settings,
        dedup_key: None,
        rate_limit_per_minute: Some(120),
        secret_ref: None,
    };
    store.put_integration(&integration).await.unwrap();
    assert_eq!(store.integration_by_topic(&topic).await.unwrap(), Some(integration));
    assert_eq!(store.integration_by_topic(&other).await.unwrap(), None);

    store.delete_integration(&key_hash).await.unwrap();
    assert_eq!(store.integration_by_topic(&topic).await.unwrap(), None);
    assert_eq!(store.integration_by_key(&key_hash).await.unwrap(), None);
}

#[tokio::test]
async fn rate_windows_are_atomic_counters_per_integration_and_minute() {
    use tocsin_core::ports::RateCounter;
    let (_, store) = table().await;
    let a = IntegrationId::parse("a").unwrap();
    let b = IntegrationId::parse("b").unwrap();
    // Each hit gets the count including it. (That concurrent hits never
    // share a count is DynamoDB's ADD guarantee, which moto does not keep:
    // two racing updates of a new item may both read nothing.)
    let mut hits = Vec::new();
    for _ in 0..10 {
        hits.push(store.hit(&a, 29_000_000).await.unwrap());
    }
    assert_eq!(hits, (1..=10).collect::<Vec<u64>>());
    assert_eq!(store.hit(&b, 29_000_000).await.unwrap(), 1);
    assert_eq!(store.hit(&a, 29_000_001).await.unwrap(), 1);
}

#[tokio::test]
async fn health_items_share_one_partition_and_say_what_they_are() {
    use tocsin_core::health::{IngestFailure, IngestOutcome, OutcomeKind};
    use tocsin_core::ports::IngestStats;
    let (client, store) = table().await;
    let integration = IntegrationId::parse("checkout-prometheus").unwrap();
    let outcome = IngestOutcome {
        at: now(),
        latency_ms: 4,
        kind: OutcomeKind::Error(IngestFailure::new(400, "invalid payload")),
    };
    store
        .record(&integration, &service("checkout"), ProviderKind::Prometheus, &outcome)
        .await
        .unwrap();
    let item = raw(&client, &store, dynamodb::health_key(&integration))
        .await
        .expect("the health item");
    assert_eq!(text(&item, "pk"), Some("HEALTH"));
    assert_eq!(text(&item, "sk"), Some("checkout-prometheus"));
    assert_eq!(text(&item, attr::TYPE), Some("ingest_stats"));
    assert_eq!(number(&item, "received"), Some(1));
    assert_eq!(number(&item, "errors"), Some(1));
    assert_eq!(number(&item, "latency_ms"), Some(4));
    assert!(!item.contains_key("success"), "only what changed is written: {item:?}");
}

/// Escalation on DynamoDB: the dispatcher records the first level in the
/// ESCALATION partition; the scheduler fires it once due for the incident
/// nobody acknowledged, and drops it (with a timeline entry) for the one
/// acknowledged in time.
#[tokio::test]
async fn an_escalation_recorded_by_the_dispatcher_fires_when_due_unless_acknowledged() {
    use std::sync::Arc;
    use tocsin_core::escalation::{EscalationService, Escalations, PendingEscalation};
    use tocsin_core::incident::Transition;
    use tocsin_core::ports::Timeline;

    let (client, store) = table().await;
    let store = Arc::new(store);
    let checkout = Service {
        id: service("checkout"),
        name: "Checkout".into(),
        policy: NotificationPolicy {
            email: vec![EmailAddress::parse("oncall@example.com").unwrap()],
            sms: Vec::new(),
            slack: None,
            webhooks: Vec::new(),
            on: vec![TransitionKind::Triggered, TransitionKind::Acknowledged],
            min_severity: Severity::Info,
            min_severity_by_channel: Default::default(),
            escalation: vec![tocsin_core::config::EscalationLevel {
                after_seconds: 300,
                email: Vec::new(),
                sms: vec![PhoneNumber::parse("+15555550100").unwrap()],
                slack: None,
            }],
        },
    };
    store.put_service(&checkout).await.unwrap();
    let queue = Arc::new(tocsin_core::memory::MemoryStore::new());
    let dispatch =
        tocsin_core::dispatch::DispatchService::new(store.clone(), queue.clone()).with_escalations(store.clone());
    let t0 = now();
    let mut opened = Vec::new();
    for key in ["ignored", "handled"] {
        let (decision, _) = apply(&store, &event(&checkout.id, key, Action::Trigger, t0)).await;
        let incident = incident_of(decision);
        let transition = Transition {
            kind: TransitionKind::Triggered,
            incident: incident.clone(),
            event_id: EventId::new(key),
        };
        dispatch.dispatch(&transition, t0).await.unwrap();
        let pending = PendingEscalation {
            incident: incident.id.clone(),
            service: checkout.id.clone(),
            level: 1,
            due: incident.updated_at + TimeDelta::seconds(300),
        };
        let item = raw(&client, &store, dynamodb::escalation_key(&pending))
            .await
            .expect("the pending escalation item");
        assert_eq!(text(&item, attr::TYPE), Some("escalation"));
        opened.push(incident);
    }
    let handled_at = t0 + TimeDelta::seconds(60);
    apply(&store, &event(&checkout.id, "handled", Action::Acknowledge, handled_at)).await;

    let escalation =
        EscalationService::new(store.clone(), store.clone(), store.clone(), queue.clone()).with_timeline(store.clone());
    let before = escalation.run_due(t0 + TimeDelta::seconds(299)).await.unwrap();
    assert_eq!(before, Default::default(), "nothing before the delay");
    let done = escalation.run_due(t0 + TimeDelta::seconds(300)).await.unwrap();
    assert_eq!((done.escalated, done.jobs, done.cancelled), (1, 1, 1));
    let escalated: Vec<_> = queue
        .queued_jobs()
        .into_iter()
        .filter(|j| j.transition == TransitionKind::Escalated)
        .collect();
    assert_eq!(escalated.len(), 1);
    assert_eq!(
        (escalated[0].incident.id.clone(), escalated[0].to.as_str()),
        (opened[0].id.clone(), "+15555550100")
    );
    assert!(
        store.due(t0 + TimeDelta::days(1), 10).await.unwrap().is_empty(),
        "nothing left pending"
    );
    let described = |entries: Vec<tocsin_core::timeline::TimelineEntry>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e.describe())
            .filter(|d| d.contains("escalat"))
            .collect()
    };
    assert_eq!(
        described(store.timeline(&opened[0].id).await.unwrap()),
        ["escalated to level 1 (1 notification)"]
    );
    assert_eq!(
        described(store.timeline(&opened[1].id).await.unwrap()),
        ["escalation to level 1 cancelled (acknowledged)"]
    );
}

/// The tags an incident item keeps, oldest first.
fn recent(item: &Item) -> Vec<String> {
    match item.get(attr::RECENT) {
        Some(AttributeValue::L(values)) => values.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        _ => Vec::new(),
    }
}

/// The ids of the events in an incident's timeline.
async fn timeline_events(store: &DynamoStore, incident: &IncidentId) -> Vec<EventId> {
    use tocsin_core::ports::Timeline;
    use tocsin_core::timeline::Happened;
    store
        .timeline(incident)
        .await
        .expect("timeline")
        .into_iter()
        .filter_map(|entry| match entry.what {
            Happened::Event { event_id, .. } | Happened::Ignored { event_id, .. } => Some(event_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_repeat_is_one_put_of_the_incident_and_is_applied_once() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let trigger = event(&svc, "disk", Action::Trigger, t0);
    let (decision, _) = apply(&store, &trigger).await;
    let opened = incident_of(decision);
    let key = dynamodb::incident_key(&opened);
    assert_eq!(
        raw(&client, &store, dynamodb::applied_key(&trigger.id)).await,
        None,
        "an opening writes no applied record either: its tag is in the new incident"
    );
    assert_eq!(
        recent(&raw(&client, &store, key.clone()).await.expect("the incident")),
        [dynamodb::event_tag(&trigger.id)]
    );

    let repeat = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1));
    let latest = store.latest(&svc, repeat.dedup_key()).await.expect("latest");
    let decision = decide(latest.as_ref(), &repeat, repeat.received_at);
    let commit = Commit::of(&decision, &repeat, repeat.received_at);
    assert_eq!(store.commit(&commit).await.expect("commit"), CommitOutcome::Written);

    let item = raw(&client, &store, key.clone()).await.expect("the incident");
    assert_eq!(number(&item, attr::VERSION), Some(2));
    assert_eq!(
        recent(&item),
        [dynamodb::event_tag(&trigger.id), dynamodb::event_tag(&repeat.id)],
        "the item keeps the tags of the events applied to it"
    );
    assert_eq!(
        raw(&client, &store, dynamodb::applied_key(&repeat.id)).await,
        None,
        "a repeat writes no applied record"
    );
    assert_eq!(
        timeline_events(&store, &opened.id).await,
        [trigger.id.clone(), repeat.id.clone()]
    );

    // The same commit again (a retry after a lost answer) …
    assert_eq!(
        store.commit(&commit).await.expect("commit"),
        CommitOutcome::AlreadyApplied
    );
    // … the same event decided again on the new state (a redelivery) …
    let (_, outcome) = apply(&store, &repeat).await;
    assert_eq!(outcome, CommitOutcome::AlreadyApplied);
    // … and the opening event redelivered, now decided as a repeat.
    let (decision, outcome) = apply(&store, &trigger).await;
    assert!(matches!(decision, Decision::Repeat { .. }));
    assert_eq!(outcome, CommitOutcome::AlreadyApplied);

    let stored = store.get(&opened.id).await.expect("get").expect("the incident");
    assert_eq!((stored.occurrences, stored.version), (2, 2), "each event counted once");
    assert_eq!(timeline_events(&store, &opened.id).await, [trigger.id, repeat.id]);
}

#[tokio::test]
async fn a_repeat_redelivered_after_the_incident_changed_is_still_recognised() {
    let (client, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, t0)).await;
    let opened = incident_of(decision);
    let repeat = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1));
    let (_, outcome) = apply(&store, &repeat).await;
    assert_eq!(outcome, CommitOutcome::Written);

    // Acknowledged since (a transaction, version 3): the repeat's tag is
    // carried forward, so its redelivery is recognised.
    let ack = event(&svc, "disk", Action::Acknowledge, t0 + TimeDelta::seconds(2));
    let (_, outcome) = apply(&store, &ack).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let item = raw(&client, &store, dynamodb::incident_key(&opened))
        .await
        .expect("the incident");
    assert!(recent(&item).contains(&dynamodb::event_tag(&repeat.id)), "{item:?}");
    let (decision, outcome) = apply(&store, &repeat).await;
    assert!(matches!(decision, Decision::Repeat { .. }), "{decision:?}");
    assert_eq!(outcome, CommitOutcome::AlreadyApplied);
    let stored = store.get(&opened.id).await.expect("get").expect("the incident");
    assert_eq!((stored.occurrences, stored.version), (2, 3));

    // Resolved since: a redelivery that decides to open a new incident is
    // recognised by the previous incident's tags.
    let resolve = event(&svc, "disk", Action::Resolve, t0 + TimeDelta::seconds(3));
    let (_, outcome) = apply(&store, &resolve).await;
    assert_eq!(outcome, CommitOutcome::Written);
    let reopening = decide(None, &repeat, t0 + TimeDelta::seconds(4));
    assert!(matches!(reopening, Decision::Open { .. }));
    let outcome = store
        .commit(&Commit::of(&reopening, &repeat, t0 + TimeDelta::seconds(4)))
        .await
        .expect("commit");
    assert_eq!(outcome, CommitOutcome::AlreadyApplied);
    let latest = store.latest(&svc, repeat.dedup_key()).await.expect("latest");
    assert_eq!(
        latest.map(|i| (i.id, i.status)),
        Some((opened.id, IncidentStatus::Resolved))
    );
}

#[tokio::test]
async fn concurrent_repeats_on_one_version_write_once_and_the_other_retries() {
    let (_, store) = table().await;
    let svc = service("checkout");
    let t0 = now();
    let (decision, _) = apply(&store, &event(&svc, "disk", Action::Trigger, t0)).await;
    let opened = incident_of(decision);

    let first = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1));
    let second = event(&svc, "disk", Action::Trigger, t0 + TimeDelta::seconds(1));
    let commit_of = |e: &Event| Commit::of(&decide(Some(&opened), e, e.received_at), e, e.received_at);
    let (a, b) = (commit_of(&first), commit_of(&second));
    let (a, b) = tokio::join!(store.commit(&a), store.commit(&b));
    let mut outcomes = [a.expect("commit"), b.expect("commit")];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [CommitOutcome::Conflict, CommitOutcome::Written]);

    // The processor re-reads and decides again: both are counted, once.
    for e in [&first, &second] {
        let (_, outcome) = apply(&store, e).await;
        assert!(
            matches!(outcome, CommitOutcome::Written | CommitOutcome::AlreadyApplied),
            "{outcome:?}"
        );
    }
    let stored = store.get(&opened.id).await.expect("get").expect("the incident");
    assert_eq!((stored.occurrences, stored.version), (3, 3));
}
