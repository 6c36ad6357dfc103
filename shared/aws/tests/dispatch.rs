//! The dispatcher's stream handler on records built from what DynamoStore
//! actually wrote to a real table (moto), dispatching to real SQS queues.

mod moto;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::Utc;
use serde_json::json;
use tocsin_aws::dispatch::dispatch_records;
use tocsin_aws::dynamodb::{create_table, incident_key, DynamoStore};
use tocsin_aws::sqs::SqsNotificationQueues;
use tocsin_aws::stream::stream_record;
use tocsin_core::config::Catalog;
use tocsin_core::contract::sample_event;
use tocsin_core::dispatch::DispatchService;
use tocsin_core::event::{Action, DedupKey, Event, Link, ServiceId};
use tocsin_core::notify::{Channel, NotificationJob};
use tocsin_core::ports::IncidentStore;
use tocsin_core::process::ProcessService;

fn event(key: &str, action: Action) -> Event {
    sample_event("checkout", key, action)
}

async fn fifo_queue(client: &aws_sdk_sqs::Client, prefix: &str) -> String {
    client
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique(prefix)))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url()
        .expect("a queue url")
        .to_owned()
}

async fn jobs_on(client: &aws_sdk_sqs::Client, url: &str) -> Vec<NotificationJob> {
    let output = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive");
    output
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().expect("a body")).expect("a notification job"))
        .collect()
}

#[tokio::test]
async fn a_record_of_the_item_dynamo_store_wrote_becomes_jobs_on_the_channel_queues() {
    let sdk = moto::sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = moto::unique("dispatch");
    create_table(&dynamodb, &table).await.unwrap();
    let store = Arc::new(DynamoStore::new(dynamodb.clone(), &table));
    let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
    let checkout = ServiceId::parse("checkout").unwrap();
    store.put_service(catalog.service(&checkout).unwrap()).await.unwrap();

    // The processor writes the incident (and its transition) to the table.
    let mut trigger = event("disk-full", Action::Trigger);
    if let Some(payload) = trigger.alert.payload.as_mut() {
        payload.custom_details = Some(json!({"mount": "/var", "used_percent": 97}));
    }
    trigger.alert.links = vec![Link {
        href: "https://example.com/runbook".to_owned(),
        text: Some("Runbook".to_owned()),
    }];
    ProcessService::new(store.clone())
        .apply(&trigger, Utc::now())
        .await
        .unwrap();
    let incident = store
        .latest(&checkout, &DedupKey::parse("disk-full").unwrap())
        .await
        .unwrap()
        .expect("the incident");
    let item = dynamodb
        .get_item()
        .table_name(&table)
        .set_key(Some(incident_key(&incident)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the raw item");

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let email = fifo_queue(&sqs, "email").await;
    let sms = fifo_queue(&sqs, "sms").await;
    let slack = fifo_queue(&sqs, "slack").await;
    let queues = SqsNotificationQueues::new(
        sqs.clone(),
        HashMap::from([
            (Channel::Email, email.clone()),
            (Channel::Sms, sms.clone()),
            (Channel::Slack, slack.clone()),
        ]),
    );
    let dispatch = DispatchService::new(store.clone(), Arc::new(queues));
    let batch: StreamEvent = serde_json::from_value(json!({
        "Records": [stream_record("INSERT", "100", &item, None)]
    }))
    .expect("a stream event");

    let response = dispatch_records(&dispatch, Some(store.as_ref()), batch, Utc::now()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    let emails = jobs_on(&sqs, &email).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].to, "oncall@example.com");
    // The item keeps the details apart: the dispatcher read its details item.
    assert_eq!(item.get("details_apart"), Some(&AttributeValue::Bool(true)));
    assert!(incident.custom_details.is_some() && !incident.links.is_empty());
    assert_eq!(emails[0].incident, incident, "with its custom details and links");
    assert_eq!(
        emails[0].id,
        format!("{}:{}:email:oncall@example.com", incident.id, incident.version)
    );
    let texts = jobs_on(&sqs, &sms).await;
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].to, "+15555550123");
    assert_eq!(jobs_on(&sqs, &slack).await.len(), 1);
}

#[tokio::test]
async fn a_repeat_without_transition_is_skipped_and_a_broken_record_is_reported() {
    let sdk = moto::sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = moto::unique("dispatch");
    create_table(&dynamodb, &table).await.unwrap();
    let store = Arc::new(DynamoStore::new(dynamodb.clone(), &table));
    let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
    let checkout = ServiceId::parse("checkout").unwrap();
    store.put_service(catalog.service(&checkout).unwrap()).await.unwrap();
    let process = ProcessService::new(store.clone());
    process.apply(&event("cpu", Action::Trigger), Utc::now()).await.unwrap();
    // A repeat trigger rewrites the item without a transition.
    process.apply(&event("cpu", Action::Trigger), Utc::now()).await.unwrap();
    let incident = store
        .latest(&checkout, &DedupKey::parse("cpu").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(incident.occurrences, 2);
    let item = dynamodb
        .get_item()
        .table_name(&table)
        .set_key(Some(incident_key(&incident)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(!item.contains_key("transition"), "a repeat carries no transition");

    let mut broken = item.clone();
    broken.insert("transition".into(), AttributeValue::S("triggered".into()));
    broken.insert("transition_event".into(), AttributeValue::S("e1".into()));
    broken.insert("data".into(), AttributeValue::S("{not json".into()));

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let email = fifo_queue(&sqs, "email").await;
    let sms = fifo_queue(&sqs, "sms").await;
    let slack = fifo_queue(&sqs, "slack").await;
    let queues = SqsNotificationQueues::new(
        sqs.clone(),
        HashMap::from([
            (Channel::Email, email.clone()),
            (Channel::Sms, sms),
            (Channel::Slack, slack),
        ]),
    );
    let dispatch = DispatchService::new(store.clone(), Arc::new(queues));
    let batch: StreamEvent = serde_json::from_value(json!({
        "Records": [
            stream_record("MODIFY", "200", &item, Some(&item)),
            stream_record("MODIFY", "201", &broken, Some(&item)),
        ]
    }))
    .unwrap();
    let response = dispatch_records(&dispatch, Some(store.as_ref()), batch, Utc::now()).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_deref())
        .collect();
    assert_eq!(failed, [Some("201")]);
    assert!(jobs_on(&sqs, &email).await.is_empty());
}

/// A window of checkout holds the batch's transition (a timeline entry says
/// so, no job is queued); its release, as the scheduler function runs it,
/// queues one triggered job per recipient and marks the window released.
#[tokio::test]
async fn a_maintenance_window_holds_the_batch_and_its_release_queues_the_jobs() {
    use tocsin_core::maintenance::{MaintenanceService, MaintenanceWindow};
    use tocsin_core::ports::{MaintenanceStore, Timeline};

    let sdk = moto::sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = moto::unique("dispatch");
    create_table(&dynamodb, &table).await.unwrap();
    let store = Arc::new(DynamoStore::new(dynamodb.clone(), &table));
    let catalog = Catalog::from_yaml(include_str!("../../../cli/tocsin.sample.yaml"), "sample").unwrap();
    let checkout = ServiceId::parse("checkout").unwrap();
    store.put_service(catalog.service(&checkout).unwrap()).await.unwrap();
    let now = Utc::now();
    let window = MaintenanceWindow::new(
        checkout.clone(),
        now - chrono::TimeDelta::minutes(1),
        now + chrono::TimeDelta::minutes(1),
        Some("upgrade".into()),
        "test",
    )
    .unwrap();
    store.put_window(&window).await.unwrap();

    ProcessService::new(store.clone())
        .apply(&event("disk-full", Action::Trigger), now)
        .await
        .unwrap();
    let incident = store
        .latest(&checkout, &DedupKey::parse("disk-full").unwrap())
        .await
        .unwrap()
        .expect("the incident");
    let item = dynamodb
        .get_item()
        .table_name(&table)
        .set_key(Some(incident_key(&incident)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let email = fifo_queue(&sqs, "email").await;
    let sms = fifo_queue(&sqs, "sms").await;
    let slack = fifo_queue(&sqs, "slack").await;
    let queues = Arc::new(SqsNotificationQueues::new(
        sqs.clone(),
        HashMap::from([
            (Channel::Email, email.clone()),
            (Channel::Sms, sms.clone()),
            (Channel::Slack, slack.clone()),
        ]),
    ));
    let batch: StreamEvent = serde_json::from_value(json!({
        "Records": [stream_record("INSERT", "300", &item, None)]
    }))
    .unwrap();
    let hold = tocsin_aws::dispatch::Hold {
        maintenance: store.clone(),
        timeline: store.clone(),
        escalations: None,
    };
    let response = tocsin_aws::dispatch::dispatch_batch_holding(
        store.clone(),
        Some(store.clone()),
        queues.clone(),
        Some(hold),
        batch,
        now,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert!(jobs_on(&sqs, &email).await.is_empty(), "held");
    let entries = store.timeline(&incident.id).await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.describe().starts_with("notifications held: maintenance window")),
        "{entries:?}"
    );

    let release = MaintenanceService::new(
        store.clone(),
        store.clone(),
        DispatchService::new(store.clone(), queues).with_timeline(store.clone()),
    );
    let early = release.release_ended(now).await.unwrap();
    assert_eq!(early.windows, 0, "the window has not ended");
    let released = release.release_ended(window.end).await.unwrap();
    assert_eq!((released.windows, released.incidents, released.jobs), (1, 1, 3));
    let emails = jobs_on(&sqs, &email).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].incident.id, incident.id);
    assert_eq!(
        emails[0].id,
        format!("maintenance:{}:{}:email:oncall@example.com", window.id, incident.id)
    );
    assert_eq!(jobs_on(&sqs, &sms).await.len(), 1);
    assert_eq!(jobs_on(&sqs, &slack).await.len(), 1);
    let stored = store.windows(Some(&checkout)).await.unwrap();
    assert_eq!(stored[0].released_at, Some(window.end));
    let again = release.release_ended(window.end).await.unwrap();
    assert_eq!(again.windows, 0, "released once");
}
