//! The DynamoDB adapter of ContactHealth against moto: the contract every
//! contact store passes, then the item as stored.

mod moto;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use tocsin_aws::contacts::{contact_key, DynamoContactHealth};
use tocsin_aws::dynamodb;
use tocsin_core::contacts::{contract, parse_ses_notification, ContactHealth, MemoryContactHealth};

async fn table() -> (Client, String) {
    let client = Client::new(&moto::sdk_config().await);
    let name = moto::unique("tocsin-contacts");
    dynamodb::create_table(&client, &name).await.expect("create the table");
    (client, name)
}

#[tokio::test]
async fn memory_passes_the_contract() {
    contract(&MemoryContactHealth::default()).await;
}

#[tokio::test]
async fn dynamodb_passes_the_contract() {
    let (client, name) = table().await;
    contract(&DynamoContactHealth::new(client, name)).await;
}

#[tokio::test]
async fn the_item_is_keyed_by_address_and_keeps_no_body() {
    let (client, name) = table().await;
    let store = DynamoContactHealth::new(client.clone(), name.clone());
    let feedback = parse_ses_notification(include_str!("../../../events/aws/ses-feedback/bounce-permanent.json"))
        .expect("the sample parses");
    store.record(&feedback[0]).await.expect("record");
    let item = client
        .get_item()
        .table_name(&name)
        .set_key(Some(contact_key(&feedback[0].address)))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
        .expect("the contact's item");
    assert_eq!(
        item.get("pk"),
        Some(&AttributeValue::S("CONTACT#email#jane@example.com".into()))
    );
    assert_eq!(item.get("type"), Some(&AttributeValue::S("contact_health".into())));
    assert_eq!(item.get("suppressed"), Some(&AttributeValue::Bool(true)));
    let mut names: Vec<_> = item.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "last_bounce_at",
            "last_bounce_kind",
            "last_bounce_message_id",
            "last_feedback_id",
            "permanent_bounces",
            "pk",
            "sk",
            "suppressed",
            "type"
        ]
    );
}
