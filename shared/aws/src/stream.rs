//! DynamoDB stream records built from items: what Lambda hands the
//! dispatcher after a write, made from the item the table actually holds.
//! The tests feed the real dispatch function with them, and a local run on
//! a stream-less AWS API server can use them the same way.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Map, Value};

use crate::dynamodb::Item;

/// An attribute value in DynamoDB JSON, as stream images carry it. Tocsin
/// writes no binary attributes; any there come out as NULL.
pub fn attribute_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Ss(values) => json!({ "SS": values }),
        AttributeValue::Ns(values) => json!({ "NS": values }),
        AttributeValue::L(values) => json!({ "L": values.iter().map(attribute_json).collect::<Vec<_>>() }),
        AttributeValue::M(map) => json!({ "M": image(map) }),
        _ => json!({ "NULL": true }),
    }
}

/// An item as a stream image.
pub fn image(item: &Item) -> Map<String, Value> {
    item.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect()
}

/// One stream record (NEW_AND_OLD_IMAGES) of a write of `item`: `name` is
/// INSERT, MODIFY or REMOVE; `sequence` orders records within a shard.
pub fn stream_record(name: &str, sequence: &str, item: &Item, old: Option<&Item>) -> Value {
    let keys: Item = item
        .iter()
        .filter(|(k, _)| *k == "pk" || *k == "sk")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut change = json!({
        "ApproximateCreationDateTime": chrono::Utc::now().timestamp() as f64,
        "Keys": image(&keys),
        "NewImage": image(item),
        "SequenceNumber": sequence,
        "SizeBytes": 1024,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if let Some(old) = old {
        change["OldImage"] = Value::Object(image(old));
    }
    json!({
        "eventID": format!("ev-{sequence}"),
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": change,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/tocsin/stream/2026-11-23T00:00:00.000",
    })
}
