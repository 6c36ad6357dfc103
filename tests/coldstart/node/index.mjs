// What a Node.js ingest function does, for the cold-start comparison
// (tests/coldstart/main.rs): SQS and DynamoDB clients built at init, then per
// request the integration looked up by key hash, the request counted against
// its rate limit and the alerts sent to the FIFO events queue: the AWS calls
// ingest-prometheus makes.

import { createHash } from "node:crypto";
import { DynamoDBClient, GetItemCommand, UpdateItemCommand } from "@aws-sdk/client-dynamodb";
import { SQSClient, SendMessageBatchCommand } from "@aws-sdk/client-sqs";

const TABLE = process.env.TOCSIN_TABLE;
const QUEUE_URL = process.env.TOCSIN_EVENTS_QUEUE_URL;

const dynamodb = new DynamoDBClient({});
const sqs = new SQSClient({});

const sha256 = (text) => createHash("sha256").update(text).digest("hex");

const answer = (statusCode, body) => ({
  statusCode,
  headers: { "content-type": "application/json" },
  body: JSON.stringify(body),
});

export const handler = async (event) => {
  const headers = event.headers ?? {};
  const key = (headers.authorization ?? "").replace(/^Bearer /, "").trim();
  const { Item } = await dynamodb.send(
    new GetItemCommand({
      TableName: TABLE,
      Key: { pk: { S: `INTKEY#${sha256(key)}` }, sk: { S: "INTEGRATION" } },
    }),
  );
  if (!Item) return answer(404, { status: "not found" });
  const window = Math.floor(Date.now() / 60000);
  await dynamodb.send(
    new UpdateItemCommand({
      TableName: TABLE,
      Key: { pk: { S: `RATE#${sha256(key)}#${window}` }, sk: { S: "WINDOW" } },
      UpdateExpression: "ADD #count :one",
      ExpressionAttributeNames: { "#count": "count" },
      ExpressionAttributeValues: { ":one": { N: "1" } },
      ReturnValues: "UPDATED_NEW",
    }),
  );
  let webhook;
  try {
    webhook = JSON.parse(event.body ?? "");
  } catch {
    return answer(400, { status: "invalid", errors: ["the body is not JSON"] });
  }
  const entries = (webhook.alerts ?? []).slice(0, 10).map((alert, n) => {
    const fingerprint = alert.fingerprint ?? String(n);
    return {
      Id: String(n),
      MessageBody: JSON.stringify(alert),
      MessageGroupId: fingerprint,
      MessageDeduplicationId: sha256(fingerprint + (alert.status ?? "")),
    };
  });
  if (entries.length > 0) {
    await sqs.send(new SendMessageBatchCommand({ QueueUrl: QUEUE_URL, Entries: entries }));
  }
  return answer(202, { status: "accepted", events: entries.length });
};
