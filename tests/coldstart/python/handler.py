"""What a Python ingest function does, for the cold-start comparison
(tests/coldstart/main.rs): SQS and DynamoDB clients built at init, then per
request the integration looked up by key hash, the request counted against
its rate limit and the alerts sent to the FIFO events queue: the AWS calls
ingest-prometheus makes.

Run by awslambdaric (`python -m awslambdaric handler.handler`), as the
Lambda Python runtime runs a handler.
"""

import hashlib
import json
import os
import time

import boto3

TABLE = os.environ["TOCSIN_TABLE"]
QUEUE_URL = os.environ["TOCSIN_EVENTS_QUEUE_URL"]

dynamodb = boto3.client("dynamodb")
sqs = boto3.client("sqs")


def answer(status, body):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


def handler(event, context):
    headers = event.get("headers") or {}
    key = headers.get("authorization", "").removeprefix("Bearer ").strip()
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    item = dynamodb.get_item(
        TableName=TABLE,
        Key={"pk": {"S": "INTKEY#" + key_hash}, "sk": {"S": "INTEGRATION"}},
    ).get("Item")
    if item is None:
        return answer(404, {"status": "not found"})
    window = int(time.time()) // 60
    dynamodb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"RATE#{key_hash}#{window}"}, "sk": {"S": "WINDOW"}},
        UpdateExpression="ADD #count :one",
        ExpressionAttributeNames={"#count": "count"},
        ExpressionAttributeValues={":one": {"N": "1"}},
        ReturnValues="UPDATED_NEW",
    )
    try:
        webhook = json.loads(event.get("body") or "")
    except ValueError:
        return answer(400, {"status": "invalid", "errors": ["the body is not JSON"]})
    entries = []
    for n, alert in enumerate(webhook.get("alerts", [])[:10]):
        fingerprint = alert.get("fingerprint", str(n))
        entries.append(
            {
                "Id": str(n),
                "MessageBody": json.dumps(alert),
                "MessageGroupId": fingerprint,
                "MessageDeduplicationId": hashlib.sha256(
                    (fingerprint + alert.get("status", "")).encode()
                ).hexdigest(),
            }
        )
    if entries:
        sqs.send_message_batch(QueueUrl=QUEUE_URL, Entries=entries)
    return answer(202, {"status": "accepted", "events": len(entries)})
